"""coco-caption's language scores (pycocoevalcap: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L,
CIDEr) of each generated explanation against all human explanations of its image.

Nothing here re-implements a metric: we only prepare the inputs, keep coco-caption's per-image
scores (for significance tests) and check its outputs line up with our inputs, so the figures
are coco-caption's own. Java (the PTB tokenizer, METEOR) is looked for when a score is asked for.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as coco_meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from sevlm.errors import ConfigError, DataError

LANGUAGE_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# SPICE needs Stanford CoreNLP models fetched from the network on first use.
UNAVAILABLE_METRICS = {"SPICE": "needs Stanford CoreNLP models downloaded at first use; not available offline"}


def _check_java() -> None:
    if shutil.which("java") is None:
        raise ConfigError("`java` not found on PATH: coco-caption's PTB tokenizer and METEOR need Java 8+")


# An explanation longer than this is cut to it before scoring (counted in the report's warnings as
# explanation_truncated): ArtEmis explanations run to ~20 words, and METEOR's Java process dies
# on a line of a few hundred thousand characters.
MAX_EXPLANATION_CHARS = 2000
METEOR_REPLY_TIMEOUT = 120.0  # seconds METEOR may take to answer one line before it counts as hung


class MeteorScorer:
    """coco-caption's METEOR 1.5 (pycocoevalcap's jar, its exact protocol and options), with the
    failures bounded: pycocoevalcap's `Meteor` holds a lock without try/finally, so after the jar
    dies (Broken pipe) its `__del__` waits on that lock at exit and the process never ends.

    Here every reply is awaited at most METEOR_REPLY_TIMEOUT seconds; a dead or hung jar becomes a
    DataError naming the prediction being scored, the process is killed, and the next call starts
    a fresh one. `close()` runs at exit."""

    def __init__(self):
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["java", "-jar", "-Xmx2G", coco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=Path(coco_meteor.__file__).parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        self._buf = b""

    def _failed(self, what: str, cause: str) -> DataError:
        self._err.seek(0)
        lines = self._err.read().decode("utf-8", "replace").strip().splitlines()
        self.close()
        said = next((ln for ln in lines if "Exception" in ln or "Error" in ln), lines[-1] if lines else "")
        java = f"; Java said: {' '.join(said.split())[:200]}" if said else ""
        return DataError(f"METEOR (Java) {cause} while scoring {what}{java}")

    def _send(self, line: str, what: str) -> None:
        try:
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._failed(what, "stopped") from None

    def _reply(self, what: str) -> str:
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self.proc.stdout], [], [], METEOR_REPLY_TIMEOUT)
            if not ready:
                raise self._failed(what, f"gave no answer in {METEOR_REPLY_TIMEOUT:g} s")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise self._failed(what, "stopped")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace").strip()

    def _number(self, what: str) -> float:
        reply = self._reply(what)
        try:
            return float(reply)
        except ValueError:
            raise self._failed(what, f"answered {reply[:80]!r} instead of a score") from None

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        """(corpus METEOR, per-image scores), as pycocoevalcap's Meteor.compute_score."""
        if gts.keys() != res.keys():
            raise DataError("METEOR: hypotheses and references cover different images")
        stats = []
        for i in gts:
            hyp = res[i][0].replace("|||", "").replace("  ", " ")
            what = f"the prediction for image {i!r} ({len(hyp)} characters)"
            self._send(" ||| ".join(("SCORE", " ||| ".join(gts[i]), hyp)), what)
            stats.append(self._reply(what))
        self._send("EVAL ||| " + " ||| ".join(stats), f"the {len(stats)} predictions together")
        scores = [self._number(f"the prediction for image {i!r}") for i in gts]
        return self._number("the corpus score"), scores

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._err.close()


_meteor: MeteorScorer | None = None
_meteor_lock = threading.Lock()


def get_meteor() -> MeteorScorer:
    """One METEOR Java process per Python process: starting it costs seconds, so reuse it
    (a new one after a failure closed the last)."""
    global _meteor
    with _meteor_lock:
        if _meteor is None or _meteor.proc.poll() is not None:
            _check_java()
            _meteor = MeteorScorer()
            atexit.register(_meteor.close)
    return _meteor


_WS = re.compile(r"\s+")


def ptb_tokenize(texts: dict) -> dict:
    """coco-caption's PTB tokenizer (lower case, punctuation removed), checked for alignment.

    All whitespace (including line separators Java would split on) becomes a single space, and
    empty texts skip the tokenizer, so every input line maps to exactly one output line.
    """
    _check_java()
    clean = {k: [_WS.sub(" ", t).strip() for t in v] for k, v in texts.items()}
    to_tok = {k: [{"caption": t} for t in v if t] for k, v in clean.items()}
    to_tok = {k: v for k, v in to_tok.items() if v}
    n_in = sum(len(v) for v in to_tok.values())
    out = PTBTokenizer().tokenize(to_tok) if n_in else {}
    if sum(len(v) for v in out.values()) != n_in:
        raise DataError("PTB tokenizer output does not line up with its input (unusual characters in a text?)")
    result = {}
    for k, v in clean.items():
        toks = iter(out.get(k, []))
        result[k] = [next(toks) if t else "" for t in v]
    return result


@dataclass
class CaptionScores:
    corpus: dict[str, float]  # the LANGUAGE_METRICS keys, as coco-caption reports them
    image_ids: list[str]
    per_image: dict[str, np.ndarray]  # per-image scores [N] for every metric
    # BLEU sufficient statistics [N, 10]: testlen, reflen (closest), guess 1..4, correct 1..4;
    # corpus BLEU is a function of their sums, so bootstrap resamples can recompute it exactly.
    bleu_stats: np.ndarray = field(repr=False, default=None)


def bleu_from_stats(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 from summed sufficient statistics [..., 10], as coco's BleuScorer."""
    small, tiny = 1e-9, 1e-15
    testlen, reflen = sums[..., 0], sums[..., 1]
    guess, correct = sums[..., 2:6], sums[..., 6:10]
    prec = (correct + tiny) / (guess + small)  # [..., 4]
    bleus = np.cumprod(prec, axis=-1) ** (1.0 / np.arange(1, 5))
    ratio = (testlen + tiny) / (reflen + small)
    bp = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleus * bp[..., None]


def caption_metrics(
    hypotheses: dict[str, str], references: dict[str, list[str]], tokenize: bool = True
) -> CaptionScores:
    """coco-caption scores of one hypothesis per image against that image's references."""
    if set(hypotheses) != set(references):
        raise DataError("caption_metrics: hypotheses and references cover different images")
    ids = list(references)
    if tokenize:
        toks = ptb_tokenize({**{f"h\0{i}": [hypotheses[i]] for i in ids}, **{f"r\0{i}": references[i] for i in ids}})
        res = {i: toks[f"h\0{i}"] for i in ids}
        gts = {i: toks[f"r\0{i}"] for i in ids}
    else:
        res = {i: [hypotheses[i]] for i in ids}
        gts = {i: list(references[i]) for i in ids}

    # BLEU through coco's BleuScorer itself (what Bleu(4) wraps), so its per-image statistics
    # are kept for resampling; option "closest" is what Bleu(4).compute_score uses.
    scorer = BleuScorer(n=4)
    for i in ids:
        scorer += (res[i][0], gts[i])
    bleu, bleu_per = scorer.compute_score(option="closest", verbose=0)
    stats = np.array(
        [
            [c["testlen"], scorer._single_reflen(c["reflen"], "closest", c["testlen"]), *c["guess"], *c["correct"]]
            for c in scorer.ctest
        ],
        dtype=np.float64,
    ).reshape(len(ids), 10)

    meteor, meteor_per = get_meteor().compute_score(gts, res)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)
    corpus = {f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)}
    corpus.update({"METEOR": float(meteor), "ROUGE-L": float(rouge), "CIDEr": float(cider)})
    per_image = {f"BLEU-{n + 1}": np.asarray(bleu_per[n], dtype=np.float64) for n in range(4)}
    per_image.update(
        {
            "METEOR": np.asarray(meteor_per, dtype=np.float64),
            "ROUGE-L": np.asarray(rouge_per, dtype=np.float64),
            "CIDEr": np.asarray(cider_per, dtype=np.float64),
        }
    )
    return CaptionScores(corpus, ids, per_image, stats)

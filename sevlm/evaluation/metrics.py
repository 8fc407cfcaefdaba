"""Caption and emotion metrics for SEVLM predictions.

Language scores are coco-caption's own (pycocoevalcap: PTB tokenizer, BLEU-1..4, METEOR,
ROUGE-L, CIDEr), of each generated explanation against all human explanations of its image.
Nothing here re-implements a metric: we only prepare the inputs, keep coco-caption's
per-image scores (for significance tests) and check its outputs line up with our inputs.

Bad input never yields a silent wrong score: broken JSON, missing keys, duplicate
predictions and (in strict mode) missing or unknown image ids raise a DataError naming the
file and line; problems that are the model's own doing (empty explanation, an emotion that
is not one of the 9) are scored as they are and counted under "warnings".
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sevlm.data.table import clean_utterance, tokenize
from sevlm.emotions import (
    EMOTION_TO_INDEX,
    EMOTIONS,
    check_dominance_rule,
    dominant_emotion,
    dominant_from_distribution,
)
from sevlm.errors import ConfigError, DataError

LANGUAGE_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# SPICE needs Stanford CoreNLP models fetched from the network on first use.
UNAVAILABLE_METRICS = {"SPICE": "needs Stanford CoreNLP models downloaded at first use; not available offline"}
INVALID_EMOTION = "<not one of the 9>"


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Reference:
    image_id: str
    emotions: tuple[str, ...]
    explanations: tuple[str, ...]
    dominant: str | None  # the dominant human emotion, or None when there is none
    image_name: str | None = None  # "<Style>/<painting>.jpg" under the dataset's images folder


@dataclass(frozen=True)
class Prediction:
    image_id: str
    emotion: str  # normalised (lower case, single spaces); may be outside EMOTIONS
    explanation: str
    line: int  # 1-based line in the predictions file, for error messages


def normalise_emotion(label: str) -> str:
    return " ".join(str(label).lower().split())


def entry_dominant(entry: dict, where: str = "", rule: str = "artemis") -> str | None:
    """An image's dominant emotion under `rule` (sevlm.emotions.DOMINANCE_RULES), recomputed
    from its votes: the `emotion_distribution` when present (`sevlm prepare` takes it over every
    vote, including annotations dropped for a too-short utterance). Without one, a stored
    `dominant_emotion` stands for the "artemis" rule, else the kept `emotions` are counted."""
    if entry.get("emotion_distribution") is not None:
        try:
            return dominant_from_distribution(entry["emotion_distribution"], rule)
        except (TypeError, ValueError, DataError) as e:
            raise DataError(f"{where}: bad emotion_distribution ({e})") from None
    if "dominant_emotion" in entry and rule == "artemis":
        dominant = entry["dominant_emotion"]
        if dominant is not None and dominant not in EMOTION_TO_INDEX:
            raise DataError(f"{where}: dominant_emotion {dominant!r} is not one of the 9 emotions")
        return dominant
    return dominant_emotion(entry.get("emotions") or [], rule)


def load_references(path: str | Path, dominance: str = "artemis") -> dict[str, Reference]:
    """Read the grouped `<split>.json` that `sevlm prepare` writes, checking every entry; each
    image's dominant emotion follows the `dominance` rule."""
    from sevlm.io import read_json

    check_dominance_rule(dominance)
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and {"images", "annotations"} <= data.keys():
        grouped = path.with_name(path.name.replace("_coco.json", ".json")) if path.name.endswith("_coco.json") else None
        raise DataError(
            f"{path}: this is a COCO caption file (images + annotations, as `sevlm prepare` writes for "
            f"coco-caption), not the grouped references --references needs"
            + (f"; pass {grouped} instead" if grouped else "; pass the split's grouped JSON (e.g. DATASET/test.json)")
        )
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty JSON object {{image_id: entry}}")
    refs = {}
    for image_id, entry in data.items():
        where = f"{path}: image {image_id!r}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: entry is not an object")
        emotions, explanations = entry.get("emotions"), entry.get("explanations")
        if not isinstance(explanations, list) or not explanations:
            raise DataError(f"{where}: 'explanations' must be a non-empty list")
        if not isinstance(emotions, list) or len(emotions) != len(explanations):
            raise DataError(f"{where}: 'emotions' must be a list as long as 'explanations'")
        for i, (emo, text) in enumerate(zip(emotions, explanations)):
            if emo not in EMOTION_TO_INDEX:
                raise DataError(f"{where}: annotation {i} has unknown emotion {emo!r}")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: annotation {i} has an empty explanation")
        dominant = entry_dominant(entry, where, dominance)
        name = entry.get("image_name")
        refs[image_id] = Reference(
            image_id, tuple(emotions), tuple(explanations), dominant, name if isinstance(name, str) else None
        )
    return refs


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object_pairs_hook: a key given twice is an error, not a silent last-wins."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def load_predictions(path: str | Path) -> list[Prediction]:
    """Read JSON lines {"image_id", "emotion", "explanation"} (extra keys are ignored)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    preds: list[Prediction] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
            except _DuplicateKey as e:
                raise DataError(f"{path}:{lineno}: key {e.args[0]!r} appears twice; which one is meant?") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in ("image_id", "emotion", "explanation"):
                if key not in row:
                    raise DataError(f"{path}:{lineno}: missing key {key!r}")
                # emotion null: the generator found no valid label; scored as "not one of the 9"
                if not isinstance(row[key], str) and not (key == "emotion" and row[key] is None):
                    raise DataError(f"{path}:{lineno}: {key!r} must be a string, got {type(row[key]).__name__}")
            image_id = row["image_id"]
            if image_id in seen:
                raise DataError(
                    f"{path}:{lineno}: duplicate prediction for image {image_id!r} (first at line {seen[image_id]})"
                )
            seen[image_id] = lineno
            preds.append(Prediction(image_id, normalise_emotion(row["emotion"] or ""), row["explanation"], lineno))
    if not preds:
        raise DataError(f"{path}: no predictions")
    return preds


def align(
    predictions: list[Prediction],
    references: dict[str, Reference],
    predictions_path: str | Path = "<predictions>",
    strict: bool = True,
) -> tuple[list[Prediction], Counter]:
    """Keep predictions whose image is in the references; missing/unknown ids are errors when
    strict, otherwise dropped and counted (the report then also says the coverage)."""
    warnings: Counter = Counter()
    unknown = [p for p in predictions if p.image_id not in references]
    if unknown:
        if strict:
            p = unknown[0]
            raise DataError(
                f"{predictions_path}:{p.line}: image {p.image_id!r} is not in the references "
                f"({len(unknown)} such predictions; wrong split? rerun with --lenient to skip them)"
            )
        warnings["unknown_image_id"] = len(unknown)
    kept = [p for p in predictions if p.image_id in references]
    if not kept:
        raise DataError(f"{predictions_path}: no prediction matches an image of the references")
    predicted = {p.image_id for p in kept}
    missing = [i for i in references if i not in predicted]
    if missing:
        if strict:
            raise DataError(
                f"{predictions_path}: {len(missing)} of {len(references)} reference images have no "
                f"prediction, e.g. {missing[0]!r} (rerun with --lenient to score the rest)"
            )
        warnings["missing_prediction"] = len(missing)
    n_empty = sum(1 for p in kept if not p.explanation.strip())
    if n_empty:
        warnings["empty_explanation"] = n_empty
    n_bad = sum(1 for p in kept if p.emotion not in EMOTION_TO_INDEX)
    if n_bad:
        warnings["emotion_not_one_of_9"] = n_bad
    return kept, warnings


# ----------------------------------------------------------------------------- coco-caption
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
        import subprocess
        import tempfile

        import pycocoevalcap.meteor.meteor as m

        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["java", "-jar", "-Xmx2G", m.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=Path(m.__file__).parent,
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
        import os
        import select

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
            import os
            import signal

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
            import atexit

            atexit.register(_meteor.close)
    return _meteor


_WS = re.compile(r"\s+")


def ptb_tokenize(texts: dict) -> dict:
    """coco-caption's PTB tokenizer (lower case, punctuation removed), checked for alignment.

    All whitespace (including line separators Java would split on) becomes a single space, and
    empty texts skip the tokenizer, so every input line maps to exactly one output line.
    """
    _check_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

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
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

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


# ----------------------------------------------------------------------------- emotions
def emotion_metrics(predicted: list[str], dominant: list[str | None]) -> dict:
    """Accuracy, confusion matrix and per-class P/R/F1 over images with a dominant emotion."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pairs = [(p, d) for p, d in zip(predicted, dominant) if d is not None]
    n = len(pairs)
    out: dict = {"emotion_accuracy": None, "emotion_accuracy_n": n}
    if n == 0:
        return out
    y_pred = [p if p in EMOTION_TO_INDEX else INVALID_EMOTION for p, _ in pairs]
    y_true = [d for _, d in pairs]
    correct = np.array([p == d for p, d in zip(y_pred, y_true)])
    out["emotion_accuracy"] = float(correct.mean())
    labels = list(EMOTIONS) + [INVALID_EMOTION]
    # rows: dominant human emotion (9); columns: predicted (9 + "not one of the 9")
    cm = confusion_matrix(y_true, y_pred, labels=labels)[: len(EMOTIONS)]
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=list(EMOTIONS), zero_division=0)
    out["confusion_matrix"] = {"rows_true": list(EMOTIONS), "columns_predicted": labels, "counts": cm.tolist()}
    out["per_class"] = {
        e: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]), "support": int(support[k])}
        for k, e in enumerate(EMOTIONS)
    }
    present = support > 0
    out["macro_f1"] = float(f1[present].mean()) if present.any() else None
    return out


def text_stats(explanations: list[str]) -> dict:
    """Diversity and length of explanations (lower-cased, whitespace-collapsed for distinctness)."""
    norm = [" ".join(t.lower().split()) for t in explanations]
    lengths = [len(t.split()) for t in norm]
    return {
        "distinct_explanations_share": len(set(norm)) / len(norm) if norm else None,
        "mean_length_words": float(np.mean(lengths)) if lengths else None,
    }


# ArtEmis's "metaphor-like expressions": utterances holding one of these phrases (the
# simile/metaphor markers of ArtEmis's evaluation code). ArtEmis matches plain substrings;
# we match whole words, so "this likely" does not count as "is like".
METAPHOR_PHRASES = (
    "looks like",
    "look like",
    "seems like",
    "is like",
    "are like",
    "reminds me",
    "remind me",
    "could be",
    "appears to be",
    "appear to be",
    "think of",
    "resembles",
    "resembling",
)
_METAPHOR = re.compile(r"\b(?:" + "|".join(re.escape(m) for m in METAPHOR_PHRASES) + r")\b")


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct-n: distinct n-grams / all n-grams, pooled over every text (words as `tokenize`)."""
    grams = [g for t in texts for g in _ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else None


def has_repeated_bigram(text: str) -> bool:
    """Whether some bigram occurs more than once ("the dark and the dark and")."""
    bigrams = _ngrams(tokenize(text), 2)
    return len(bigrams) != len(set(bigrams))


def repeated_bigram_share(texts: list[str]) -> float | None:
    """Share of texts with a repeated bigram."""
    return sum(map(has_repeated_bigram, texts)) / len(texts) if texts else None


def copied_share(texts: list[str], corpus: set[str]) -> float | None:
    """Share of texts equal, once cleaned (`clean_utterance`), to a text of `corpus` (cleaned)."""
    if not texts:
        return None
    return sum(clean_utterance(t) in corpus for t in texts) / len(texts)


def metaphor_rate(texts: list[str]) -> float | None:
    """Share of texts with a metaphor-like expression (METAPHOR_PHRASES), as ArtEmis counts them."""
    if not texts:
        return None
    return sum(bool(_METAPHOR.search(clean_utterance(t))) for t in texts) / len(texts)


def language_stats(generated: list[str], human: list[str], training: list[str] | None = None) -> dict:
    """How the generated explanations read, beside the human ones: distinct-1/2, repeated
    bigrams, metaphor-like expressions and, given the training utterances, verbatim copies."""
    out = {
        "distinct_1": distinct_n(generated, 1),
        "distinct_2": distinct_n(generated, 2),
        "repeated_bigram_share": repeated_bigram_share(generated),
        "metaphor_rate_generated": metaphor_rate(generated),
        "metaphor_rate_human": metaphor_rate(human),
        "copied_training_share": None,
    }
    if training is not None:
        out["copied_training_share"] = copied_share(generated, {clean_utterance(t) for t in training})
    return out


# ----------------------------------------------------------------------------- everything
@dataclass
class Evaluation:
    """Everything `evaluate` computes; `report` is the JSON-ready summary."""

    report: dict
    predictions: list[Prediction]
    references: dict[str, Reference]
    captions: CaptionScores
    emo_labels: list[str] | None = None  # classifier label per kept prediction


# Where the scored explanation starts (`sevlm evaluate --because`): after the first "because" (ours,
# as sevlm.generate.parse_output) or after the last one (the SEVLM authors' scoring: `split("because")[-1]`).
BECAUSE_RULES = ("first", "last")


def explanation_after(explanation: str, rule: str) -> str:
    """The explanation sevlm.generate.parse_output gave (text after the first "because"), cut after its last
    "because" with rule "last": "it is dark because she lost him" -> "she lost him"."""
    if rule not in BECAUSE_RULES:
        raise ValueError(f"because rule must be one of {', '.join(BECAUSE_RULES)}, got {rule!r}")
    if rule == "last":
        explanation = re.split(r"\bbecause\b", explanation, flags=re.IGNORECASE)[-1]
    return explanation.strip()


def evaluate(
    predictions_path: str | Path,
    references_path: str | Path,
    classifier=None,
    strict: bool = True,
    dominance: str = "artemis",
    training_texts: list[str] | None = None,
    because: str = "first",
) -> Evaluation:
    """Score a predictions file against the references; `classifier` (an EmotionClassifier) adds
    emo_align; `dominance` is the rule for each image's dominant emotion (see DOMINANCE_RULES
    in sevlm.data.artemis); `training_texts` (the training split's utterances) adds the share of
    generated explanations that copy one verbatim. With `because="last"` each explanation is
    scored from after its last "because" (the SEVLM authors' scoring; see BECAUSE_RULES)."""
    from dataclasses import replace

    references = load_references(references_path, dominance)
    preds, warnings = align(load_predictions(predictions_path), references, predictions_path, strict)
    cut = [replace(p, explanation=explanation_after(p.explanation, because)) for p in preds]
    n_cut = sum(a.explanation != b.explanation.strip() for a, b in zip(cut, preds))
    preds = cut
    refs = {p.image_id: references[p.image_id] for p in preds}
    long = sum(len(p.explanation) > MAX_EXPLANATION_CHARS for p in preds)
    if long:
        warnings["explanation_truncated"] = long  # cut to MAX_EXPLANATION_CHARS for the language scores
    caps = caption_metrics(
        {p.image_id: p.explanation[:MAX_EXPLANATION_CHARS] for p in preds},
        {i: list(r.explanations) for i, r in refs.items()},
    )
    dominant = [refs[p.image_id].dominant for p in preds]
    human = [t for r in refs.values() for t in r.explanations]
    emo = emotion_metrics([p.emotion for p in preds], dominant)

    report: dict = {
        "predictions": str(predictions_path),
        "references": str(references_path),
        "n_predictions": len(preds),
        "n_reference_images": len(references),
        "coverage": len(preds) / len(references),
        "warnings": dict(warnings),
        **caps.corpus,
        "unavailable": dict(UNAVAILABLE_METRICS),
        "dominance": dominance,
        "because": because,
        "explanations_cut_at_a_later_because": n_cut,
        "emotion_accuracy": emo["emotion_accuracy"],
        "emotion_accuracy_n": emo["emotion_accuracy_n"],
        "emotion_not_one_of_9_share": sum(p.emotion not in EMOTION_TO_INDEX for p in preds) / len(preds),
        **text_stats([p.explanation for p in preds]),
        "human_mean_length_words": float(np.mean([len(t.split()) for t in human])),
        **language_stats([p.explanation for p in preds], human, training_texts),
        "emotions": {k: v for k, v in emo.items() if k not in ("emotion_accuracy", "emotion_accuracy_n")},
    }
    labels = None
    if classifier is not None:
        labels = classifier.predict([p.explanation for p in preds])
        report.update(emo_align(labels, dominant))
        report["emo_classifier"] = classifier.describe()
    return Evaluation(report, preds, references, caps, labels)


def emo_align(labels: list[str], dominant: list[str | None]) -> dict:
    """Share of generated explanations whose classifier label is the dominant human emotion."""
    hits = [lab == d for lab, d in zip(labels, dominant) if d is not None]
    return {"emo_align": float(np.mean(hits)) if hits else None, "emo_align_n": len(hits)}

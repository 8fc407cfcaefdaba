"""The token id spaces: the GPT-2 tokenizer with our special tokens, the ids the model and the
generator need (`TokenIds`, the prompt), and the optional corpus vocabulary (`VocabMap`). Training,
generation and export all take their ids from here, so a run reads its ids one way everywhere.

The prompt "the emotion is" (`PROMPT`, with a leading BOS only with `bos_prompt`, the authors'
layout) is what every training sequence starts with and what generation is primed with
(`prompt_ids`). `<pad>`, `<emotion>` and `<explanation>` are new tokens, so no id collides with a
real word.

Corpus vocabulary (optional, for decoders trained from scratch): a `VocabMap` keeps only the
GPT-2 ids that occur in the training texts (plus the special tokens and an `<unk>` id), and
the model works in that compact id space, so its embedding and LM head have |corpus vocab|
rows instead of 50,260. Text is still tokenised by GPT-2 BPE, then mapped; VAD alignment
uses character offsets, so it does not depend on the id space.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from transformers import GPT2TokenizerFast

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.io import read_json, write_json
from sevlm.words import explanation_words

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "gpt2-tokenizer"
PROMPT = "the emotion is"
PAD_TOKEN, EMOTION_TOKEN, EXPLANATION_TOKEN = "<pad>", "<emotion>", "<explanation>"
VOCAB_FORMAT = "sevlm-vocab-1"
VOCAB_FILE = "vocab.json"


def load_tokenizer(path: str | Path | None = None):
    """GPT-2 BPE tokenizer (default: the copy shipped in sevlm/assets) plus our special tokens.

    `<pad>` is a new token, so a pad id never collides with a real word (GPT-2 has no pad).
    """
    path = Path(path) if path is not None else TOKENIZER_DIR
    if not path.is_dir():
        raise DataError(f"{path}: tokenizer directory not found")
    # from_pretrained(dir): in transformers 5 building from file paths gives an empty vocab.
    tok = GPT2TokenizerFast.from_pretrained(str(path))
    if len(tok) < 1000:
        raise DataError(f"{path}: tokenizer has only {len(tok)} tokens; expected GPT-2 BPE files")
    missing = [t for t in (PAD_TOKEN, EMOTION_TOKEN, EXPLANATION_TOKEN) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens(
            {"pad_token": PAD_TOKEN, "additional_special_tokens": [EMOTION_TOKEN, EXPLANATION_TOKEN]}
        )
    tok.pad_token = PAD_TOKEN
    return tok


@dataclass(frozen=True)
class TokenIds:
    """The ids the model and the generator need; derived from the tokenizer once."""

    vocab_size: int
    pad: int
    eos: int
    emotion: int
    explanation: int
    because: int
    prompt: tuple[int, ...]
    unk: int | None = None  # the corpus vocabulary's <unk> id; None in the full GPT-2 id space

    @classmethod
    def from_tokenizer(cls, tok, vocab: "VocabMap | None" = None, bos_prompt: bool = False) -> "TokenIds":
        """The ids in GPT-2's space, or in `vocab`'s compact space when one is given; with
        `bos_prompt` the prompt starts with the BOS token (GPT-2's <|endoftext|>)."""
        because = tok.encode(" because")
        if len(because) != 1:
            raise DataError(f"tokenizer splits ' because' into {len(because)} tokens; expected 1")
        ids = cls(
            vocab_size=len(tok),
            pad=tok.convert_tokens_to_ids(PAD_TOKEN),
            eos=tok.eos_token_id,
            emotion=tok.convert_tokens_to_ids(EMOTION_TOKEN),
            explanation=tok.convert_tokens_to_ids(EXPLANATION_TOKEN),
            because=because[0],
            prompt=tuple(([tok.bos_token_id] if bos_prompt else []) + tok.encode(PROMPT)),
        )
        if ids.pad < tok.vocab_size or ids.pad in (ids.eos, ids.emotion, ids.explanation):
            raise DataError(f"tokenizer pad id {ids.pad} collides with a real token")
        if vocab is None:
            return ids
        vocab.check_tokenizer(tok)
        named = {
            "pad": ids.pad,
            "eos": ids.eos,
            "emotion": ids.emotion,
            "explanation": ids.explanation,
            "because": ids.because,
        }
        named.update({f"prompt[{i}]": t for i, t in enumerate(ids.prompt)})
        lost = [name for name, t in named.items() if t not in vocab]
        if lost:
            raise DataError(
                f"corpus vocabulary lacks the token(s) {', '.join(lost)}; build it with VocabMap.from_texts"
            )
        c = vocab.compact
        return replace(
            ids,
            vocab_size=len(vocab),
            pad=c(ids.pad),
            eos=c(ids.eos),
            emotion=c(ids.emotion),
            explanation=c(ids.explanation),
            because=c(ids.because),
            prompt=tuple(c(t) for t in ids.prompt),
            unk=vocab.unk_id,
        )


def prompt_ids(tok, vocab: "VocabMap | None" = None, bos_prompt: bool = False) -> list[int]:
    """The ids every sequence starts with, in the model's id space: what training sequences
    begin with and what generation is primed with."""
    return list(TokenIds.from_tokenizer(tok, vocab, bos_prompt).prompt)


def sequence_text(emotion: str, explanation: str) -> str:
    """The text of one training sequence (before EOS)."""
    return f"{PROMPT} {emotion.strip()} because {explanation.strip()}"


class VocabMap:
    """GPT-2 ids <-> compact ids of a corpus vocabulary.

    Compact id 0 is `<unk>` (every GPT-2 id outside the corpus); compact ids 1..n are the kept
    GPT-2 ids in increasing order, so a map is a pure function of its id set. Stored as JSON
    `{"format", "unk_id": 0, "tokenizer_size", "gpt2_ids": [sorted ids], "words": [[GPT-2 ids]]}`.

    `words` (optional) are the training explanations' words, each as the BPE pieces training
    saw (" tur" "qu" "oise"): what `decoding.corpus_words` lets generation spell, so that a
    small model cannot glue pieces into a word no one wrote ("turqu", "flatige").
    """

    unk_id = 0

    def __init__(
        self, gpt2_ids: Iterable[int], tokenizer_size: int | None = None, words: Iterable[Sequence[int]] | None = None
    ):
        self.words = None if words is None else sorted({tuple(int(t) for t in w) for w in words if len(w)})
        ids = sorted({int(i) for i in gpt2_ids})
        if ids and ids[0] < 0:
            raise DataError(f"corpus vocabulary: negative GPT-2 id {ids[0]}")
        if tokenizer_size is not None and ids and ids[-1] >= tokenizer_size:
            raise DataError(f"corpus vocabulary: GPT-2 id {ids[-1]} is outside the tokenizer ({tokenizer_size} tokens)")
        self.gpt2_ids = np.asarray(ids, dtype=np.int64)  # (n,) compact id k+1 -> GPT-2 id
        self.tokenizer_size = tokenizer_size
        # GPT-2 id -> compact id; 0 (unk) for ids not kept
        self._to_compact = np.zeros((ids[-1] + 1) if ids else 1, dtype=np.int64)
        self._to_compact[self.gpt2_ids] = np.arange(1, len(ids) + 1)

    def __len__(self) -> int:
        return len(self.gpt2_ids) + 1  # + <unk>

    def __contains__(self, gpt2_id: int) -> bool:
        return 0 <= gpt2_id < len(self._to_compact) and bool(self._to_compact[gpt2_id])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VocabMap) and np.array_equal(self.gpt2_ids, other.gpt2_ids)

    def __repr__(self) -> str:
        return f"VocabMap({len(self)} ids incl. <unk>)"

    # ---- mapping ------------------------------------------------------------------------
    def compact(self, gpt2_id: int) -> int:
        """One GPT-2 id -> its compact id (unk_id when not in the corpus)."""
        return int(self._to_compact[gpt2_id]) if 0 <= gpt2_id < len(self._to_compact) else self.unk_id

    def to_compact(self, gpt2_ids) -> np.ndarray:
        """GPT-2 ids (any shape) -> compact ids (int64, same shape); unknown ids -> unk_id."""
        a = np.asarray(gpt2_ids, dtype=np.int64)
        out = np.full(a.shape, self.unk_id, dtype=np.int64)
        inside = (a >= 0) & (a < len(self._to_compact))
        out[inside] = self._to_compact[a[inside]]
        return out

    def to_gpt2(self, compact_ids: Iterable[int]) -> list[int]:
        """Compact ids -> GPT-2 ids, for tokenizer.decode. `<unk>` has no GPT-2 token: it is
        dropped (it decodes to nothing); ids outside the map raise."""
        out = []
        for c in compact_ids:
            c = int(c)
            if c == self.unk_id:
                continue
            if not 0 < c < len(self):
                raise DataError(f"compact id {c} is outside the corpus vocabulary ({len(self)} ids)")
            out.append(int(self.gpt2_ids[c - 1]))
        return out

    def decode(self, tokenizer, compact_ids: Iterable[int], **kwargs) -> str:
        return tokenizer.decode(self.to_gpt2(compact_ids), **kwargs)

    def check_tokenizer(self, tok) -> None:
        if self.tokenizer_size is not None and self.tokenizer_size != len(tok):
            raise DataError(
                f"corpus vocabulary was built for a tokenizer of {self.tokenizer_size} tokens, this one has {len(tok)}"
            )
        if len(self.gpt2_ids) and self.gpt2_ids[-1] >= len(tok):
            raise DataError(f"corpus vocabulary holds GPT-2 id {int(self.gpt2_ids[-1])}, outside the tokenizer")

    # ---- building --------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, tokenizer, texts: Iterable[str], min_count: int = 1) -> "VocabMap":
        """The ids of `texts` tokenised as the builder does (no special tokens added) that occur
        at least `min_count` times, plus every special token, the prompt and " because"."""
        if min_count < 1:
            raise DataError(f"min_count must be >= 1, got {min_count}")
        n = len(tokenizer)
        counts = np.zeros(n, dtype=np.int64)
        texts = list(texts)
        for start in range(0, len(texts), 4096):  # batched fast-tokenizer calls, bounded memory
            enc = tokenizer(texts[start : start + 4096], add_special_tokens=False)["input_ids"]
            flat = np.fromiter((t for row in enc for t in row), dtype=np.int64)
            counts += np.bincount(flat, minlength=n)[:n]
        keep = set(np.flatnonzero(counts >= min_count).tolist())
        keep.update(tokenizer.all_special_ids)
        keep.update(tokenizer.encode(PROMPT))
        keep.update(tokenizer.encode(" because"))
        return cls(keep, tokenizer_size=n)

    @classmethod
    def from_annotations(cls, tokenizer, pairs: Iterable[tuple[str, str]], min_count: int = 1) -> "VocabMap":
        """The corpus vocabulary of (emotion, explanation) annotations: their full sequence
        texts (so each word is tokenised in the context training sees it), plus "the emotion
        is <label> because" for each of the 9 labels, so every label can be generated."""
        texts = [sequence_text(e, x) for e, x in pairs]
        labels = [f"{PROMPT} {label} because" for label in EMOTIONS]
        vocab = cls.from_texts(tokenizer, texts, min_count)
        label_ids = {t for row in tokenizer(labels, add_special_tokens=False)["input_ids"] for t in row}
        ids = set(vocab.gpt2_ids.tolist()) | label_ids
        return cls(ids, tokenizer_size=vocab.tokenizer_size, words=explanation_words(tokenizer, texts, PROMPT, ids))

    # ---- files -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {
            "format": VOCAB_FORMAT,
            "unk_id": self.unk_id,
            "tokenizer_size": self.tokenizer_size,
            "size": len(self),
            "gpt2_ids": self.gpt2_ids.tolist(),
        }
        if self.words is not None:
            out["words"] = [list(w) for w in self.words]
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "vocab") -> "VocabMap":
        """From `to_json`'s dict, or a bare list of GPT-2 ids."""
        words = None
        if isinstance(obj, list):
            ids, size = obj, None
        elif isinstance(obj, dict) and obj.get("format") == VOCAB_FORMAT and isinstance(obj.get("gpt2_ids"), list):
            if obj.get("unk_id", 0) != cls.unk_id:
                raise DataError(f"{where}: unk_id {obj.get('unk_id')!r} is not supported (expected {cls.unk_id})")
            ids, size, words = obj["gpt2_ids"], obj.get("tokenizer_size"), obj.get("words")
            if words is not None and not (
                isinstance(words, list)
                and all(isinstance(w, list) and all(isinstance(t, int) and t in set(ids) for t in w) for w in words)
            ):
                raise DataError(f"{where}: words must be lists of the vocabulary's GPT-2 ids")
        else:
            raise DataError(f"{where}: not a corpus vocabulary (expected format {VOCAB_FORMAT!r} with a gpt2_ids list)")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DataError(f"{where}: gpt2_ids must be integers")
        if list(ids) != sorted(set(ids)):
            raise DataError(f"{where}: gpt2_ids must be sorted and unique")
        try:
            return cls(ids, tokenizer_size=size, words=words)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> "VocabMap":
        return cls.from_json(read_json(path), where=str(path))


def check_id_space(vocab: VocabMap | None, vocab_size: int, tokenizer, where: str) -> None:
    """Refuse a corpus vocabulary that does not fit a model's `vocab_size`, and a corpus-size
    model without its VocabMap (its compact ids would be read as GPT-2 ids)."""
    if vocab is not None and len(vocab) != vocab_size:
        raise DataError(f"{where}: corpus vocabulary has {len(vocab)} ids but the model's vocabulary has {vocab_size}")
    if vocab is None and vocab_size < len(tokenizer):
        raise DataError(
            f"{where}: the model has a {vocab_size}-token (corpus) vocabulary but no VocabMap was given "
            "(load_run gives it as LoadedRun.vocab)"
        )

"""Tokenizer and the sequences the model is trained on.

Every annotation becomes one sequence

    the emotion is <label> because <explanation><|endoftext|>

with NLX-GPT segment ids (prompt + label: `<emotion>`; " because" + explanation + EOS:
`<explanation>`), labels -100 on padding, and per-token VAD from the lexicon: a causal
"word so far" vector as model input and the whole-word vector as the VAD head's target
(see sevlm/data/vad.py). Segment boundaries come from the tokens (the first " because"
after the prompt), never from fixed positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sevlm.data.vad import VADLexicon, vad_for_tokens
from sevlm.errors import DataError

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "gpt2-tokenizer"
PROMPT = "the emotion is"
PAD_TOKEN, EMOTION_TOKEN, EXPLANATION_TOKEN = "<pad>", "<emotion>", "<explanation>"
IGNORE_INDEX = -100


def load_tokenizer(path: str | Path | None = None):
    """GPT-2 BPE tokenizer (default: the copy shipped in sevlm/assets) plus our special tokens.

    `<pad>` is a new token, so a pad id never collides with a real word (GPT-2 has no pad).
    """
    from transformers import GPT2TokenizerFast

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

    @classmethod
    def from_tokenizer(cls, tok) -> "TokenIds":
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
            prompt=tuple(tok.encode(PROMPT)),
        )
        if ids.pad < tok.vocab_size or ids.pad in (ids.eos, ids.emotion, ids.explanation):
            raise DataError(f"tokenizer pad id {ids.pad} collides with a real token")
        return ids


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Move the tensors of a batch; other values (image ids) pass through."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class SequenceBuilder:
    """Turns (emotion, explanation) annotations and feature samples into model batches."""

    def __init__(self, tokenizer, lexicon: VADLexicon, max_len: int = 30):
        self.tok = tokenizer
        self.lexicon = lexicon
        self.max_len = max_len
        self.ids = TokenIds.from_tokenizer(tokenizer)
        if max_len < len(self.ids.prompt) + 6:
            raise DataError(f"max_len={max_len} leaves no room for an explanation")

    # ---- one sequence -------------------------------------------------------------
    @staticmethod
    def _text(emotion: str, explanation: str) -> str:
        return f"{PROMPT} {emotion.strip()} because {explanation.strip()}"

    def encode(self, emotion: str, explanation: str) -> dict[str, np.ndarray]:
        """One padded training sequence, as numpy arrays of length max_len."""
        return self.encode_many([(emotion, explanation)])[0]

    def encode_many(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, np.ndarray]]:
        """`encode` for many (emotion, explanation) pairs, with one batched tokenizer call."""
        texts = [self._text(e, x) for e, x in pairs]
        enc = self.tok(texts, return_offsets_mapping=True, add_special_tokens=False)
        return [
            self._sequence(text, emotion, ids, offsets)
            for text, (emotion, _), ids, offsets in zip(texts, pairs, enc["input_ids"], enc["offset_mapping"])
        ]

    def _sequence(self, text: str, emotion: str, token_ids: Sequence[int], offsets: Sequence) -> dict[str, np.ndarray]:
        ids = list(token_ids)[: self.max_len - 1]
        offsets = list(offsets)[: len(ids)]
        n_prompt = len(self.ids.prompt)
        if ids[:n_prompt] != list(self.ids.prompt):
            raise DataError(f"emotion label {emotion!r} merges with the prompt when tokenised")
        try:
            b = ids.index(self.ids.because, n_prompt)
        except ValueError:
            raise DataError(f"no ' because' token found in {text[:80]!r}") from None
        vad_in, m_in = vad_for_tokens(text, offsets, self.lexicon, causal=True)
        vad_tg, m_tg = vad_for_tokens(text, offsets, self.lexicon, causal=False)
        n = len(ids) + 1  # + EOS
        T = self.max_len
        out = {
            "input_ids": np.full(T, self.ids.pad, dtype=np.int64),
            "attention_mask": np.zeros(T, dtype=np.int64),
            "labels": np.full(T, IGNORE_INDEX, dtype=np.int64),
            "segment_ids": np.full(T, self.ids.explanation, dtype=np.int64),
            "vad": np.zeros((T, 3), dtype=np.float32),
            "vad_mask": np.zeros(T, dtype=bool),
            "vad_target": np.zeros((T, 3), dtype=np.float32),
            "vad_target_mask": np.zeros(T, dtype=bool),
        }
        out["input_ids"][:n] = ids + [self.ids.eos]
        out["attention_mask"][:n] = 1
        out["labels"][:n] = out["input_ids"][:n]  # the fixed prompt is trained too (as the paper's code)
        out["segment_ids"][:b] = self.ids.emotion
        out["vad"][: n - 1], out["vad_mask"][: n - 1] = vad_in, m_in
        out["vad_target"][: n - 1], out["vad_target_mask"][: n - 1] = vad_tg, m_tg
        return out

    def prompt_ids(self) -> list[int]:
        return list(self.ids.prompt)

    # ---- batches --------------------------------------------------------------------
    def _stack(self, seqs: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.stack([s[k] for s in seqs])) for k in seqs[0]}

    @staticmethod
    def _visual(samples: Sequence[dict]) -> torch.Tensor:
        shapes = {tuple(s["tokens"].shape) for s in samples}
        if len(shapes) != 1:
            raise DataError(f"samples have visual tokens of different shapes: {sorted(shapes)}")
        # np.stack, not torch.stack: on a loaded 2-core machine torch's threaded copy of a few
        # MB spins for ~0.1-0.2 s; numpy's single-threaded copy takes a few ms.
        return torch.from_numpy(np.stack([np.asarray(s["tokens"], dtype=np.float32) for s in samples]))  # (I, N, D)

    def collate(self, samples: Sequence[dict], rng: np.random.Generator) -> dict[str, Any]:
        """Training batch: two sequences per image (pair sampling), images shared via `seq_image`.

        Per image, the pair is two annotations with different emotions when the image has
        them (`pair_valid` True: the contrastive loss uses it); otherwise two annotations
        (or the same one twice), and `pair_valid` is False.
        """
        pairs, valid = [], []
        for s in samples:
            emos, exps = list(s["emotions"]), list(s["explanations"])
            if not emos or len(emos) != len(exps):
                raise DataError(f"sample {s.get('__key__', s.get('image_id'))!r}: emotions/explanations missing or of unequal length")
            i = int(rng.integers(len(emos)))
            others = [j for j in range(len(emos)) if emos[j] != emos[i]]
            if others:
                j = others[int(rng.integers(len(others)))]
            else:
                rest = [j for j in range(len(emos)) if j != i]
                j = rest[int(rng.integers(len(rest)))] if rest else i
            valid.append(bool(others))
            pairs += [(emos[i], exps[i]), (emos[j], exps[j])]
        batch: dict[str, Any] = self._stack(self.encode_many(pairs))
        n_img = len(samples)
        batch["visual"] = self._visual(samples)
        batch["seq_image"] = torch.arange(n_img).repeat_interleave(2)  # (2I,)
        batch["pair_valid"] = torch.tensor(valid, dtype=torch.bool)  # (I,)
        batch["visual_negative"] = torch.from_numpy(derangement(n_img, rng))  # (I,)
        batch["image_ids"] = [s["image_id"] for s in samples]
        return batch

    def collate_eval(self, samples: Sequence[dict], annotation: int | None = 0) -> dict[str, Any]:
        """One sequence per image (annotation index `annotation`), or visual only when None."""
        batch: dict[str, Any] = {}
        if annotation is not None:
            pairs = []
            for s in samples:
                k = min(annotation, len(s["emotions"]) - 1)
                pairs.append((s["emotions"][k], s["explanations"][k]))
            batch.update(self._stack(self.encode_many(pairs)))
            batch["seq_image"] = torch.arange(len(samples))
        batch["visual"] = self._visual(samples)
        batch["image_ids"] = [s["image_id"] for s in samples]
        return batch


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (the visual negatives); -1s when n < 2."""
    if n < 2:
        return np.full(n, -1, dtype=np.int64)
    # A random cyclic shift of a random order: never a fixed point, uniform enough here.
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    shift = int(rng.integers(1, n))
    perm[order] = order[(np.arange(n) + shift) % n]
    return perm

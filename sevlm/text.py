"""The sequences the model is trained on, and their batches.

Every annotation becomes one sequence

    [<|endoftext|>] the emotion is <label> because <explanation><|endoftext|>

(the prompt and the ids come from sevlm/vocab.py), with NLX-GPT segment ids (prompt + label:
`<emotion>`; " because" + explanation + EOS: `<explanation>`), labels -100 on padding, and
per-token VAD from the lexicon: a causal "word so far" vector as model input and the
whole-word vector as the VAD head's target (see sevlm/data/vad.py). The VAD head is trained
on explanation tokens only: the prompt, the label and " because" are never VAD targets (the
lexicon lists "emotion" and most labels, which would teach the label through the lexicon).
A sequence longer than `max_len` is cut there with no end-of-text token, so the model is
never taught to stop mid-sentence. Segment boundaries come from the tokens (the first
" because" after the prompt), never from fixed positions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from sevlm.data.vad import VADLexicon, vad_for_pieces, vad_for_tokens
from sevlm.emotions import EMOTIONS, emotion_distribution
from sevlm.errors import DataError
from sevlm.vocab import TokenIds, VocabMap, sequence_text

IGNORE_INDEX = -100


def model_inputs(batch: dict) -> dict:
    """The tensors of a collated batch: what SEVLM.forward takes (image ids stay out)."""
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Move the tensors of a batch; other values (image ids) pass through."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# Which annotation of an image anchors its training pair (data.anchor): "uniform" (ours) or "last"
# (the authors' code as it ran: its per-image index_tracker was decremented inside DataLoader
# workers, on copies that were thrown away after each epoch, so it always read its start value,
# the last annotation).
ANCHORS = ("uniform", "last")


class SequenceBuilder:
    """Turns (emotion, explanation) annotations and feature samples into model batches."""

    def __init__(
        self,
        tokenizer,
        lexicon: VADLexicon,
        max_len: int = 30,
        vocab: VocabMap | None = None,
        bos_prompt: bool = False,
        anchor: str = "uniform",
        vad_input: str = "word",
    ):
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
        if vad_input not in ("word", "piece"):
            raise ValueError(f"vad_input must be 'word' or 'piece', got {vad_input!r}")
        self.anchor, self.vad_input = anchor, vad_input
        self.tok = tokenizer
        self.lexicon = lexicon
        self.max_len = max_len
        self.vocab = vocab  # when set, every id the builder emits is a compact corpus id
        self.bos_prompt = bos_prompt
        self.ids = TokenIds.from_tokenizer(tokenizer, vocab, bos_prompt)
        if max_len < len(self.ids.prompt) + 6:
            raise DataError(f"max_len={max_len} leaves no room for an explanation")

    # ---- one sequence -------------------------------------------------------------
    def encode(self, emotion: str, explanation: str) -> dict[str, np.ndarray]:
        """One padded training sequence, as numpy arrays of length max_len."""
        return self.encode_many([(emotion, explanation)])[0]

    def encode_many(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, np.ndarray]]:
        """`encode` for many (emotion, explanation) pairs, with one batched tokenizer call."""
        texts = [sequence_text(e, x) for e, x in pairs]
        enc = self.tok(texts, return_offsets_mapping=True, add_special_tokens=False)
        return [
            self._sequence(text, emotion, ids, offsets)
            for text, (emotion, _), ids, offsets in zip(texts, pairs, enc["input_ids"], enc["offset_mapping"])
        ]

    def _sequence(self, text: str, emotion: str, token_ids: Sequence[int], offsets: Sequence) -> dict[str, np.ndarray]:
        ids, offsets = list(token_ids), list(offsets)
        if self.bos_prompt:  # BOS covers no text: (0, 0) gives it no VAD
            ids, offsets = [self.tok.bos_token_id] + ids, [(0, 0)] + offsets
        if self.vocab is not None:
            ids = self.vocab.to_compact(ids).tolist()
        # The EOS target only when the whole text fits: a cut sentence must not teach stopping.
        ids = (ids + [self.ids.eos])[: self.max_len]
        offsets = offsets[: len(ids)]
        n_prompt = len(self.ids.prompt)
        if ids[:n_prompt] != list(self.ids.prompt):
            raise DataError(f"emotion label {emotion!r} merges with the prompt when tokenised")
        try:
            b = ids.index(self.ids.because, n_prompt)
        except ValueError:
            raise DataError(f"no ' because' token found in {text[:80]!r}") from None
        if self.vad_input == "piece":  # the authors': each piece on its own, input = target
            vad_in, m_in = vad_for_pieces(text, offsets, self.lexicon)
            vad_tg, m_tg = vad_in.copy(), m_in.copy()
        else:
            vad_in, m_in = vad_for_tokens(text, offsets, self.lexicon, causal=True)
            vad_tg, m_tg = vad_for_tokens(text, offsets, self.lexicon, causal=False)
        m_tg[: b + 1] = False  # VAD targets: the explanation's own tokens, not prompt, label or " because"
        n = len(ids)
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
        out["input_ids"][:n] = ids
        out["attention_mask"][:n] = 1
        out["labels"][:n] = out["input_ids"][:n]  # the fixed prompt is trained too (as the paper's code)
        out["segment_ids"][:b] = self.ids.emotion
        k = len(offsets)  # EOS (when kept) has no span: zeros
        out["vad"][:k], out["vad_mask"][:k] = vad_in, m_in
        out["vad_target"][:k], out["vad_target_mask"][:k] = vad_tg, m_tg
        return out

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
        # float16 features stay float16 (half the bytes between processes; the trainer casts on the device)
        visual = np.stack([np.asarray(s["tokens"]) for s in samples])
        return torch.from_numpy(
            visual if visual.dtype == np.float16 else visual.astype(np.float32, copy=False)
        )  # (I, N, D)

    def collate(self, samples: Sequence[dict], rng: np.random.Generator) -> dict[str, Any]:
        """Training batch: two sequences per image (pair sampling), images shared via `seq_image`.

        Per image, the pair is two annotations with different emotions when the image has
        them (`pair_valid` True: the contrastive loss uses it); otherwise two annotations
        (or the same one twice), and `pair_valid` is False. The first (the anchor) is drawn
        uniformly, or with `anchor="last"` is always the image's last annotation (what the
        authors' code ran); the second is drawn uniformly either way.
        """
        pairs, valid = [], []
        for s in samples:
            emos, exps = list(s["emotions"]), list(s["explanations"])
            if not emos or len(emos) != len(exps):
                raise DataError(
                    f"sample {s.get('__key__', s.get('image_id'))!r}: emotions/explanations missing or of unequal "
                    "length"
                )
            i = len(emos) - 1 if self.anchor == "last" else int(rng.integers(len(emos)))
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
        # every annotation of the image, not only the sampled pair
        batch["image_votes"] = torch.tensor([self._votes(s) for s in samples], dtype=torch.float32)  # (I, 9)
        batch["image_ids"] = [s["image_id"] for s in samples]
        return batch

    @staticmethod
    def _votes(sample: dict) -> list[float]:
        try:
            return emotion_distribution(sample["emotions"])
        except KeyError as e:
            raise DataError(
                f"sample {sample.get('__key__', sample.get('image_id'))!r}: emotion {e.args[0]!r} is not "
                f"one of the 9 ({', '.join(EMOTIONS)})"
            ) from None

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

"""Decoding: batched greedy and beam search with the KV cache, and output parsing.

Every sequence starts from the prompt "the emotion is"; the model continues with
"<label> because <explanation>" and stops at EOS or at the model's max_len tokens.

Incremental and causal VAD. At step t the new token's VAD is the lexicon vector of its
word *as completed so far* (the text of that word up to the end of the token), the rule the
training input uses too (`vad_for_tokens(causal=True)`); the emotion encoder keeps a
key/value cache, so each step encodes only the new position. Its segment is `<explanation>`
from the first " because" after the prompt on, as in training. With `use_cache=False` the
whole sequence is re-embedded and re-encoded from scratch at every step (VAD recomputed
from the full text): the reference the cached path must equal token for token.

Corpus vocabulary. A model trained on a `VocabMap` (sevlm/text.py) works in compact ids: the
prompt is mapped into that space, and generated ids are mapped back to GPT-2 ids before
`tokenizer.decode` (`<unk>` decodes to nothing). The map comes from the `vocab` argument or,
by default, the model's `vocab_map` attribute, which the trainer and `load_run` set.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sevlm.constants import EMOTIONS
from sevlm.data.vad import VADLexicon, vad_for_tokens
from sevlm.errors import DataError
from sevlm.export import LoadedRun, load_run  # noqa: F401  (the one load function; DESIGN.md lists it here too)
from sevlm.text import PROMPT, prompt_ids

_LABEL_RE = re.compile(r"\s+")


def parse_output(text: str) -> tuple[str | None, str, str]:
    """Decoded text -> (emotion or None, explanation, raw label).

    The prompt is stripped if present; the label is the text before the first "because",
    the explanation the text after it. A label that is not one of the 9 emotions gives
    emotion None (raw label kept, so it can be reported).
    """
    t = text.strip()
    low = t.lower()
    if low.startswith(PROMPT):
        t = t[len(PROMPT):]
    m = re.search(r"\bbecause\b", t, flags=re.IGNORECASE)
    if m:
        raw, explanation = t[: m.start()], t[m.end():]
    else:
        raw, explanation = t, ""
    raw = _LABEL_RE.sub(" ", raw).strip()
    label = raw.lower().strip(" .,;:!")
    return (label if label in EMOTIONS else None), explanation.strip(), raw


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens (no prompt, no EOS)
    text: str
    emotion: str | None
    explanation: str
    raw: str
    emotion_prob: float | None  # product of the label tokens' probabilities
    score: float  # sum of log-probabilities of the generated tokens (EOS included)


def model_vocab(model, tokenizer, vocab=None):
    """The VocabMap `model` works in (the `vocab` argument, else `model.vocab_map`), or None for
    the full GPT-2 id space; a DataError when the model's vocabulary size says otherwise."""
    vocab = vocab if vocab is not None else getattr(model, "vocab_map", None)
    size = model.config.vocab_size
    if vocab is not None and len(vocab) != size:
        raise DataError(f"corpus vocabulary has {len(vocab)} ids but the model's vocabulary has {size}")
    if vocab is None and size < len(tokenizer):
        raise DataError(f"the model has a {size}-token (corpus) vocabulary but no VocabMap was given; "
                        "load it with load_run or pass vocab=")
    return vocab


class _Pieces:
    """Decoded text of single model ids (cached), through the corpus map when there is one."""

    def __init__(self, tokenizer, vocab=None):
        self.tok, self.vocab = tokenizer, vocab
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self._cache:
            ids = self.vocab.to_gpt2([token]) if self.vocab is not None else [token]
            self._cache[token] = self.tok.decode(ids)
        return self._cache[token]


class _TextState:
    """Per-sequence text so far, for the causal VAD and segment of each new token."""

    def __init__(self, tokenizer, lexicon: VADLexicon, prompt: Sequence[int], because: int, vocab=None):
        self.lexicon, self.because = lexicon, because
        self.n_prompt = len(prompt)
        self.piece = _Pieces(tokenizer, vocab)  # shared by copies: a cache of pure values
        self.text = ""
        self.ids: list[int] = []
        self.in_explanation = False
        self.prompt_vad = [self.push(i)[0] for i in prompt]

    def push(self, token: int) -> tuple[np.ndarray, bool]:
        """Append a token; return its (VAD (3,), is-explanation-segment)."""
        if token == self.because and len(self.ids) >= self.n_prompt:
            self.in_explanation = True
        s = len(self.text)
        self.text += self.piece(token)
        self.ids.append(token)
        vad, _ = vad_for_tokens(self.text, [(s, len(self.text))], self.lexicon, causal=True)
        return vad[0], self.in_explanation

    def copy(self) -> "_TextState":
        new = object.__new__(_TextState)
        new.__dict__.update(self.__dict__)
        new.ids = list(self.ids)
        return new


def _full_features(tokenizer, lexicon, ids: list[int], n_prompt: int, because: int, explanation_id: int, emotion_id: int,
                   vocab=None):
    """Segments and causal VAD of a whole sequence from scratch (the uncached path)."""
    gpt2 = (lambda i: vocab.to_gpt2([i])) if vocab is not None else (lambda i: [i])
    pieces = [tokenizer.decode(gpt2(i)) for i in ids]
    offsets, pos = [], 0
    for p in pieces:
        offsets.append((pos, pos + len(p)))
        pos += len(p)
    vad, _ = vad_for_tokens("".join(pieces), offsets, lexicon, causal=True)
    try:
        b = ids.index(because, n_prompt)
    except ValueError:
        b = len(ids)
    seg = [emotion_id if t < b else explanation_id for t in range(len(ids))]
    return vad, seg


@torch.no_grad()
def generate(
    model,
    tokenizer,
    lexicon: VADLexicon,
    visual: torch.Tensor | None,
    num_beams: int = 1,
    max_new_tokens: int = 25,
    use_cache: bool = True,
    length_penalty: float = 1.0,
    n_images: int | None = None,
    vocab=None,
) -> list[Hypothesis]:
    """Decode one output per image. visual (I, N, D) or None (text-only model; give n_images).

    `vocab`: the model's corpus VocabMap (default: `model.vocab_map`, None = GPT-2 ids).
    Hypothesis.tokens are model ids (compact ids under a corpus vocabulary).
    """
    cfg = model.config
    device = model.device
    vocab = model_vocab(model, tokenizer, vocab)
    prompt = prompt_ids(tokenizer, vocab, cfg.bos_prompt)
    n_prompt = len(prompt)
    max_new = max(1, min(max_new_tokens, cfg.max_len - n_prompt))
    I = visual.shape[0] if visual is not None else int(n_images or 1)
    K = max(1, num_beams)
    B = I * K
    eos = cfg.eos_id

    if visual is not None:
        visual = visual.to(device)
    rows = torch.arange(I, device=device).repeat_interleave(K)  # (B,) image of each beam
    context = model.visual_context(visual, rows) if visual is not None else {}

    states = [_TextState(tokenizer, lexicon, prompt, cfg.because_id, vocab) for _ in range(B)]
    ids = torch.tensor([prompt] * B, device=device)  # (B, P)
    seg = torch.full_like(ids, cfg.emotion_id)
    vad = torch.from_numpy(np.stack([np.stack(states[0].prompt_vad)] * B)).to(device)  # (B, P, 3)

    def full_logits(all_ids: torch.Tensor) -> torch.Tensor:
        """Uncached, the authors' style: VAD and segments recomputed from the full text, then the
        whole training forward (image projection, all positions' logits) re-run."""
        feats = [_full_features(tokenizer, lexicon, row, n_prompt, cfg.because_id, cfg.explanation_id, cfg.emotion_id,
                                vocab) for row in all_ids.tolist()]
        v = torch.from_numpy(np.stack([f[0] for f in feats])).to(device)  # (B, T, 3)
        s = torch.tensor([f[1] for f in feats], device=device)  # (B, T)
        out = model(input_ids=all_ids, segment_ids=s, vad=v, visual=visual, seq_image=rows if visual is not None else None)
        return out.logits[:, -1]  # (B, V)

    state = None
    if use_cache:
        logits, state = model.decode_step(ids, seg, vad, context)
    else:
        logits = full_logits(ids)
    all_ids = ids
    scores = torch.zeros(B, device=device)
    if K > 1:
        scores.view(I, K)[:, 1:] = -math.inf  # all beams start equal: expand only the first
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    step_logp: list[list[float]] = [[] for _ in range(B)]

    for step in range(max_new):
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        if finished.any():
            # a finished beam only extends with EOS at no cost, keeping its score
            logp[finished] = -math.inf
            logp[finished, eos] = 0.0
        if K == 1:
            nxt = logp.argmax(-1)  # (B,)
            chosen = logp.gather(1, nxt[:, None])[:, 0]
            src = torch.arange(B, device=device)
        else:
            cand = (scores[:, None] + logp).view(I, -1)  # (I, K*V)
            top, idx = cand.topk(K, dim=-1)  # (I, K)
            V = logp.shape[-1]
            src = (idx // V + torch.arange(I, device=device)[:, None] * K).view(-1)  # (B,) source beam
            nxt = (idx % V).view(-1)
            chosen = top.view(-1) - scores[src]
        src_l, nxt_l, ch_l = src.tolist(), nxt.tolist(), chosen.tolist()
        was_finished = finished[src]
        scores = scores[src] + chosen
        step_logp = [step_logp[s] + ([] if was_finished[j] else [ch_l[j]]) for j, s in enumerate(src_l)]
        states = [states[s].copy() if K > 1 else states[s] for s in src_l]
        finished = was_finished | (nxt == eos)
        all_ids = torch.cat([all_ids[src], nxt[:, None]], dim=1)  # (B, t+1)
        if bool(finished.all()) or step == max_new - 1:
            break
        new_vad, new_seg = [], []
        for j, tok_id in enumerate(nxt_l):
            v, in_exp = states[j].push(tok_id)
            new_vad.append(v)
            new_seg.append(cfg.explanation_id if in_exp else cfg.emotion_id)
        if use_cache:
            if K > 1:
                state.reorder(src)
            v = torch.from_numpy(np.stack(new_vad)).to(device)[:, None]  # (B, 1, 3)
            s = torch.tensor(new_seg, device=device)[:, None]  # (B, 1)
            logits, state = model.decode_step(nxt[:, None], s, v, context, state)
        else:
            logits = full_logits(all_ids)

    gen = all_ids[:, n_prompt:].tolist()
    results = []
    for i in range(I):
        best, best_key = None, -math.inf
        for j in range(i * K, (i + 1) * K):
            toks = gen[j]
            if eos in toks:
                toks = toks[: toks.index(eos)]
            n = len(step_logp[j])
            key = scores[j].item() / (max(n, 1) ** length_penalty) if K > 1 else 0.0
            if best is None or key > best_key:
                best, best_key = (j, toks), key
        j, toks = best
        text = tokenizer.decode(vocab.to_gpt2(toks) if vocab is not None else toks, skip_special_tokens=True)
        emotion, explanation, raw = parse_output(text)
        prob = None
        if emotion is not None:
            n_label = toks.index(cfg.because_id) if cfg.because_id in toks else len(toks)
            prob = float(math.exp(sum(step_logp[j][:n_label])))
        results.append(Hypothesis(toks, text, emotion, explanation, raw, prob, float(scores[j].item())))
    return results


@torch.no_grad()
def generate_for_features(
    run,
    visual_tokens: torch.Tensor | np.ndarray,
    image_ids: Sequence[str] | None = None,
    batch_size: int = 32,
    num_beams: int = 1,
    max_new_tokens: int = 25,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Decode every image of visual_tokens (N, T, D) with a LoadedRun; one JSON-able dict each."""
    from tqdm import tqdm

    model = run.model
    model.eval()
    n = len(visual_tokens)
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(n)]
    out = []
    for start in tqdm(range(0, n, batch_size), desc="generate", unit="batch", disable=not progress):
        chunk = torch.as_tensor(np.asarray(visual_tokens[start : start + batch_size]), dtype=torch.float32)
        hyps = generate(model, run.tokenizer, run.lexicon, chunk, num_beams=num_beams, max_new_tokens=max_new_tokens)
        for image_id, h in zip(ids[start : start + batch_size], hyps):
            out.append(prediction_record(image_id, h))
    return out


def prediction_record(image_id: str, h: Hypothesis) -> dict[str, Any]:
    return {"image_id": image_id, "emotion": h.emotion, "explanation": h.explanation, "emotion_prob": h.emotion_prob, "raw": h.raw}


def split_visual_tokens(features_path: str | Path, dataset_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """(image_ids, tokens (N, T, D)) of a split's images from the HDF5 feature cache.

    Images without features (failed extraction) are left out with a warning by the reader.
    """
    from sevlm.features.hdf5 import H5FeatureDataset

    ds = H5FeatureDataset(features_path, dataset_dir, split)
    if len(ds) == 0:
        raise DataError(f"{dataset_dir}: split {split!r} has no images with features in {features_path}")
    image_ids = [image_id for image_id, _, _ in ds.items]
    tokens = np.stack([np.asarray(ds.store.tokens(row), dtype=np.float32) for _, _, row in ds.items])  # (N, T, D)
    return image_ids, tokens


def generate_split(
    run_dir: str | Path,
    split: str,
    out: str | Path,
    dataset_dir: str | Path | None = None,
    features: str | Path | None = None,
    batch_size: int = 32,
    num_beams: int = 1,
    max_new_tokens: int = 25,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Predictions for a split as JSON lines {"image_id","emotion","explanation","emotion_prob","raw"}.

    Dataset folder and feature cache default to those recorded in the run's config.
    """
    from sevlm.io import write_text

    run = load_run(run_dir, device=device)
    data = run.config.get("train", {}).get("data", {})
    dataset_dir = dataset_dir or data.get("dataset_dir")
    features = features or data.get("features")
    if not dataset_dir:
        raise DataError(f"{run_dir}: no dataset_dir recorded in the run config; pass it explicitly")
    if not features:
        raise DataError(f"{run_dir}: no feature cache recorded in the run config; pass --features")
    image_ids, tokens = split_visual_tokens(features, dataset_dir, split)
    preds = generate_for_features(run, tokens, image_ids, batch_size=batch_size, num_beams=num_beams, max_new_tokens=max_new_tokens)
    write_text(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    return preds


def predict_images(
    run_dir: str | Path,
    image_paths: Sequence[str | Path],
    num_beams: int = 1,
    device: str = "cpu",
    lexicon: str | None = None,
    max_new_tokens: int = 25,
) -> list[dict[str, Any]]:
    """Encode image files with the run's recorded encoder and decode each; one dict per image."""
    from PIL import Image, UnidentifiedImageError

    from sevlm.encoders import build_encoder, to_rgb

    run = load_run(run_dir, device=device, lexicon=lexicon)
    enc_spec = run.config.get("encoder")
    if not enc_spec or not enc_spec.get("name"):
        raise DataError(f"{run.path / 'config.json'}: no image encoder recorded; cannot encode raw images")
    encoder = build_encoder(enc_spec["name"], **enc_spec.get("settings", {})).to(device).eval()
    pixels = []
    for path in image_paths:
        try:
            with Image.open(path) as img:
                pixels.append(encoder.preprocess(to_rgb(img)))
        except FileNotFoundError:
            raise DataError(f"{path}: image not found") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from None
    with torch.no_grad():
        tokens, _ = encoder(torch.stack(pixels).to(device))  # (N, T, D)
    if tokens.shape[-1] != run.model.config.visual_dim:
        raise DataError(
            f"encoder {enc_spec['name']!r} gives {tokens.shape[-1]}-d tokens but the model expects {run.model.config.visual_dim}"
        )
    hyps = generate(run.model, run.tokenizer, run.lexicon, tokens.float(), num_beams=num_beams, max_new_tokens=max_new_tokens)
    return [{"image": str(p), **prediction_record(Path(p).stem, h)} for p, h in zip(image_paths, hyps)]

"""Decoding: batched greedy, beam and sampling with the KV cache, and output parsing.

Every sequence starts from the prompt (`sevlm.vocab.prompt_ids`); the model continues with
"<label> because <explanation>" and stops at EOS or at the model's max_len tokens. How tokens
are picked is a `DecodingConfig` (sevlm/decoding.py): strategy, beams and length
normalisation, sampling filters with a seed, and the explanation's repetition controls
(n-gram blocking, repetition penalty) applied through transformers' logits processors.

Incremental and causal VAD. At step t the new token's VAD is the lexicon vector of its
word *as completed so far* (the text of that word up to the end of the token), the rule the
training input uses too (`vad_for_tokens(causal=True)`); the emotion encoder keeps a
key/value cache, so each step encodes only the new position. Its segment is `<explanation>`
from the first " because" after the prompt on, as in training. Text is rebuilt from the
tokens' bytes, so characters split over tokens ("’", emoji, CJK) come out whole.
With `use_cache=False` the whole sequence is re-embedded and re-encoded from scratch at every
step (VAD recomputed from the full text): the reference the cached path must equal token for
token, with every decoding option.

Corpus vocabulary. A model trained on a `VocabMap` (sevlm/vocab.py) works in compact ids: the
prompt is mapped into that space, and generated ids are mapped back to GPT-2 ids before
`tokenizer.decode` (`<unk>` decodes to nothing). The map belongs to the run: the trainer's
builder and `LoadedRun.vocab` hold it, and callers pass it as `vocab`.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sevlm.data.vad import VADLexicon, vad_for_pieces, vad_for_tokens
from sevlm.decoding import DecodingConfig
from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.export import LoadedRun, load_run  # noqa: F401  (the one load function; DESIGN.md lists it here too)
from sevlm.vocab import PROMPT, check_id_space, prompt_ids
from sevlm.words import WordTrie

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
        t = t[len(PROMPT) :]
    m = re.search(r"\bbecause\b", t, flags=re.IGNORECASE)
    if m:
        raw, explanation = t[: m.start()], t[m.end() :]
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
    score: float  # summed decoding log-probabilities (after the repetition controls), EOS included


class _Pieces:
    """The UTF-8 bytes of single model ids (cached), through the corpus map when there is one.

    GPT-2's BPE works on bytes: one token may hold part of a character ("’" is two tokens),
    so text is rebuilt from bytes, never from single-token decodes (which turn each part into
    U+FFFD). Special tokens give no bytes, as in the decoded output.
    """

    def __init__(self, tokenizer, vocab=None):
        self.tok, self.vocab = tokenizer, vocab
        self.byte_of = {c: b for b, c in bytes_to_unicode().items()}  # BPE symbol -> byte
        self.special = set(tokenizer.all_special_ids)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        if token not in self._cache:
            ids = self.vocab.to_gpt2([token]) if self.vocab is not None else [token]
            self._cache[token] = b"".join(
                b"" if i in self.special else bytes(self.byte_of[c] for c in self.tok.convert_ids_to_tokens(i))
                for i in ids
            )
        return self._cache[token]


def _utf8_decoder():
    """Holds back the bytes of an unfinished character until the token that completes it."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


def _causal_vad(text: str, start: int, end: int, lexicon: VADLexicon, pieces: bool = False) -> np.ndarray:
    """VAD (3,) of the token spanning text[start:end], seeing only the text up to its end
    (with `pieces`, the model's `vad_input="piece"`: the token's own text, lemmatised).

    A token's span covers the characters it completes: one that ends inside a character has
    an empty span (zero VAD) until the next token completes it. Training's offsets see the
    whole sequence, so they differ only there and at an apostrophe that a later letter makes
    part of a word ("woman’" + "s").
    """
    if pieces:
        return vad_for_pieces(text, [(start, end)], lexicon)[0][0]
    vad, _ = vad_for_tokens(text[:end], [(start, end)], lexicon, causal=True)
    return vad[0]


class _TextState:
    """Per-sequence text so far, for the causal VAD and segment of each new token."""

    def __init__(
        self, pieces: _Pieces, lexicon: VADLexicon, prompt: Sequence[int], because: int, vad_pieces: bool = False
    ):
        self.lexicon, self.because, self.vad_pieces = lexicon, because, vad_pieces
        self.n_prompt = len(prompt)
        self.piece = pieces  # shared by copies: a cache of pure values
        self.decoder = _utf8_decoder()
        self.text = ""
        self.ids: list[int] = []
        self.explanation_start: int | None = None  # index of the first token after " because"
        self.prompt_vad = [self.push(i)[0] for i in prompt]

    def push(self, token: int) -> tuple[np.ndarray, bool]:
        """Append a token; return its (VAD (3,), is-explanation-segment)."""
        if token == self.because and len(self.ids) >= self.n_prompt and self.explanation_start is None:
            self.explanation_start = len(self.ids) + 1
        s = len(self.text)
        self.text += self.decoder.decode(self.piece(token))
        self.ids.append(token)
        vad = _causal_vad(self.text, s, len(self.text), self.lexicon, self.vad_pieces)
        return vad, self.explanation_start is not None

    def copy(self) -> "_TextState":
        new = object.__new__(_TextState)
        new.__dict__.update(self.__dict__)
        new.ids = list(self.ids)
        new.decoder = _utf8_decoder()
        new.decoder.setstate(self.decoder.getstate())
        return new


def _full_features(
    pieces: _Pieces,
    lexicon,
    ids: list[int],
    n_prompt: int,
    because: int,
    explanation_id: int,
    emotion_id: int,
    vad_pieces: bool = False,
):
    """Segments and causal VAD of a whole sequence from scratch (the uncached path)."""
    decoder, text, offsets = _utf8_decoder(), "", []
    for i in ids:
        s = len(text)
        text += decoder.decode(pieces(i))
        offsets.append((s, len(text)))
    vad = np.stack([_causal_vad(text, s, e, lexicon, vad_pieces) for s, e in offsets])  # (T, 3)
    try:
        b = ids.index(because, n_prompt)
    except ValueError:
        b = len(ids)
    seg = [emotion_id if t < b else explanation_id for t in range(len(ids))]
    return vad, seg


def _repetition_controls(decoding: DecodingConfig) -> list:
    """transformers' processors for the explanation's repetition controls (see sevlm/decoding.py)."""
    out = []
    if decoding.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(float(decoding.repetition_penalty)))
    if decoding.no_repeat_ngram:
        out.append(NoRepeatNGramLogitsProcessor(int(decoding.no_repeat_ngram)))
    return out


def _sampling_warpers(decoding: DecodingConfig) -> list:
    out = []
    if decoding.temperature != 1.0:
        out.append(TemperatureLogitsWarper(float(decoding.temperature)))
    if decoding.top_k:
        out.append(TopKLogitsWarper(int(decoding.top_k)))
    if decoding.top_p < 1.0:
        out.append(TopPLogitsWarper(float(decoding.top_p)))
    return out


def _corpus_words(
    logits: torch.Tensor, all_ids: torch.Tensor, states: list[_TextState], trie, finished: torch.Tensor
) -> torch.Tensor:
    """logits (B, V) with every piece that would spell a word outside the training explanations
    at -inf, in the rows that are writing their explanation (`decoding.corpus_words`)."""
    mask = torch.zeros_like(logits, dtype=torch.bool)  # (B, V) True: banned
    rows = all_ids.tolist()
    for j, st in enumerate(states):
        if st.explanation_start is None or bool(finished[j]):
            continue
        allowed = trie.allowed(rows[j][st.explanation_start :])
        if allowed is None:
            continue
        mask[j] = True
        mask[j, allowed] = False
    return logits.masked_fill(mask, -math.inf)


def _explanation_history(all_ids: torch.Tensor, states: list[_TextState], vocab_size: int) -> torch.Tensor:
    """all_ids (B, T) with every position before each row's explanation set to `vocab_size`, an
    id no logit has: the processors then neither count nor ban prompt and label tokens."""
    T = all_ids.shape[1]
    start = torch.tensor(
        [s.explanation_start if s.explanation_start is not None else T for s in states], device=all_ids.device
    )  # (B,)
    before = torch.arange(T, device=all_ids.device)[None, :] < start[:, None]  # (B, T)
    return all_ids.masked_fill(before, vocab_size)


def image_seed(seed: int, key: str) -> int:
    """The sampling seed of one image: a hash of (decoding seed, image key), 63 bits."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_samplers(seed: int, keys: Sequence[str]) -> list[torch.Generator]:
    """One CPU generator per image, seeded by (seed, key): a stream of its own."""
    return [torch.Generator().manual_seed(image_seed(seed, str(k))) for k in keys]


def draw(probs: torch.Tensor, samplers: list[torch.Generator]) -> torch.Tensor:
    """One token per row of probs (B, V), row b by inverse-CDF sampling with one uniform from
    samplers[b]. Every row takes exactly one draw per step, whatever the others do, so a row's
    tokens depend on its own stream only."""
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in samplers]).to(probs.device)  # (B,)
    cdf = probs.double().cumsum(-1)  # (B, V)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]  # (B,)
    # never a zero-probability token (u * total can reach the last plateau through rounding)
    last = (probs > 0).long().cumsum(-1).argmax(-1)  # (B,) the last token with probability > 0
    return torch.minimum(idx, last)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    lexicon: VADLexicon,
    visual: torch.Tensor | None,
    decoding: DecodingConfig | None = None,
    use_cache: bool = True,
    n_images: int | None = None,
    vocab=None,
    image_keys: Sequence[str] | None = None,
) -> list[Hypothesis]:
    """Decode one output per image. visual (I, N, D) or None (text-only model; give n_images).

    `decoding`: strategy and options (default `DecodingConfig()`). `vocab`: the model's corpus
    VocabMap (None = GPT-2 ids). Hypothesis.tokens are model ids (compact ids under a corpus
    vocabulary). `image_keys`: one id per image (the image id, or a file's name); under
    "sample" each image draws from its own stream seeded by (decoding.seed, its key), so its
    explanation does not depend on the batch size or its batch-mates (None: the position in
    this batch, which does).
    """
    cfg = model.config
    device = model.device
    decoding = decoding or DecodingConfig()
    if cfg.use_vad_input and cfg.vad_bidirectional:
        use_cache = False  # every position's VAD encoding changes with each new token: recompute all
    vad_pieces = cfg.vad_input == "piece"
    check_id_space(vocab, cfg.vocab_size, tokenizer, "generate")
    pieces = _Pieces(tokenizer, vocab)
    prompt = prompt_ids(tokenizer, vocab, cfg.bos_prompt)
    n_prompt = len(prompt)
    max_new = max(1, min(decoding.max_new_tokens, cfg.max_len - n_prompt))
    I = visual.shape[0] if visual is not None else int(n_images or 1)
    K = decoding.num_beams
    B = I * K
    eos = cfg.eos_id
    controls = _repetition_controls(decoding)
    trie = None
    if decoding.corpus_words:
        if vocab is None:
            raise DataError(
                "decoding.corpus_words needs a model trained on a corpus vocabulary (data.corpus_vocab=true)"
            )
        trie = WordTrie(vocab, tokenizer, eos)
    warpers = _sampling_warpers(decoding) if decoding.strategy == "sample" else []
    if image_keys is not None and len(image_keys) != I:
        raise ValueError(f"generate: {len(image_keys)} image keys for {I} images")
    samplers = (
        image_samplers(decoding.seed, image_keys if image_keys is not None else [str(i) for i in range(I)])
        if decoding.strategy == "sample"
        else None
    )

    if visual is not None:
        visual = visual.to(device)
    rows = torch.arange(I, device=device).repeat_interleave(K)  # (B,) image of each beam
    context = model.visual_context(visual, rows) if visual is not None else {}

    states = [_TextState(pieces, lexicon, prompt, cfg.because_id, vad_pieces) for _ in range(B)]
    ids = torch.tensor([prompt] * B, device=device)  # (B, P)
    seg = torch.full_like(ids, cfg.emotion_id)
    vad = torch.from_numpy(np.stack([np.stack(states[0].prompt_vad)] * B)).to(device)  # (B, P, 3)

    def full_logits(all_ids: torch.Tensor) -> torch.Tensor:
        """Uncached, the authors' style: VAD and segments recomputed from the full text, then the
        whole training forward (image projection, all positions' logits) re-run."""
        feats = [
            _full_features(
                pieces, lexicon, row, n_prompt, cfg.because_id, cfg.explanation_id, cfg.emotion_id, vad_pieces
            )
            for row in all_ids.tolist()
        ]
        v = torch.from_numpy(np.stack([f[0] for f in feats])).to(device)  # (B, T, 3)
        s = torch.tensor([f[1] for f in feats], device=device)  # (B, T)
        out = model(
            input_ids=all_ids, segment_ids=s, vad=v, visual=visual, seq_image=rows if visual is not None else None
        )
        return out.logits[:, -1]  # (B, V)

    state = None
    if use_cache:
        logits, state = model.decode_step(ids, seg, vad, context)
    else:
        logits = full_logits(ids)
    all_ids = ids
    scores = torch.zeros(B, device=device)  # summed decoding log-probs (after the repetition controls)
    lengths = torch.zeros(B, device=device)  # scored tokens per sequence (EOS included)
    if K > 1:
        scores.view(I, K)[:, 1:] = -math.inf  # all beams start equal: expand only the first
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    step_logp: list[list[float]] = [[] for _ in range(B)]  # the model's own log-probs, for emotion_prob

    for step in range(max_new):
        model_logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        controlled = logits.float()
        if trie is not None:
            controlled = _corpus_words(controlled, all_ids, states, trie, finished)
        if controls:
            words_only = controlled
            history = _explanation_history(all_ids, states, controlled.shape[-1])  # (B, T)
            for c in controls:
                controlled = c(history, controlled)
            # a word begun must be finished: where the repetition controls ban every piece that
            # could finish it, the word constraint wins
            stuck = torch.isinf(controlled).all(-1) & ~torch.isinf(words_only).all(-1)  # (B,)
            if stuck.any():
                controlled[stuck] = words_only[stuck]
        logp = torch.log_softmax(controlled, dim=-1)  # (B, V)
        if finished.any():
            # a finished sequence only extends with EOS at no cost, keeping its score
            logp[finished] = -math.inf
            logp[finished, eos] = 0.0
        grow = lengths + (~finished).float()  # (B,) lengths after this step
        if K > 1:
            # rank by length-normalised score, so finished beams compete fairly with longer live ones
            cand = scores[:, None] + logp  # (B, V)
            norm = cand / grow.clamp(min=1)[:, None] ** decoding.length_penalty
            _, idx = norm.view(I, -1).topk(K, dim=-1)  # (I, K)
            V = logp.shape[-1]
            src = (idx // V + torch.arange(I, device=device)[:, None] * K).view(-1)  # (B,) source beam
            nxt = (idx % V).view(-1)
        else:
            src = torch.arange(B, device=device)
            if samplers is not None:
                warped = logp
                for w in warpers:
                    warped = w(all_ids, warped)
                drawn = draw(torch.softmax(warped, dim=-1), samplers)  # (B,)
                # the label is a classification, decided greedily: only the explanation is sampled
                in_label = torch.tensor([st.explanation_start is None for st in states], device=device)  # (B,)
                nxt = torch.where(in_label, logp.argmax(-1), drawn)
            else:
                nxt = logp.argmax(-1)  # (B,)
        chosen = logp[src, nxt]  # (B,)
        model_chosen = model_logp[src, nxt].tolist()
        src_l, nxt_l = src.tolist(), nxt.tolist()
        was_finished = finished[src]
        scores = scores[src] + chosen
        lengths = grow[src]
        step_logp = [step_logp[s] + ([] if was_finished[j] else [model_chosen[j]]) for j, s in enumerate(src_l)]
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
    key = scores / lengths.clamp(min=1) ** decoding.length_penalty  # (B,) beam ranking
    results = []
    for i in range(I):
        j = i * K + int(key[i * K : (i + 1) * K].argmax())
        toks = gen[j]
        if eos in toks:
            toks = toks[: toks.index(eos)]
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
    decoding: DecodingConfig | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Decode every image of visual_tokens (N, T, D) with a LoadedRun; one JSON-able dict each."""
    model = run.model
    model.eval()
    n = len(visual_tokens)
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(n)]
    out = []
    for start in tqdm(range(0, n, batch_size), desc="generate", unit="batch", disable=not progress):
        chunk = torch.as_tensor(np.asarray(visual_tokens[start : start + batch_size]), dtype=torch.float32)
        keys = ids[start : start + batch_size]
        hyps = generate(model, run.tokenizer, run.lexicon, chunk, decoding, vocab=run.vocab, image_keys=keys)
        for image_id, h in zip(keys, hyps):
            out.append(prediction_record(image_id, h))
    return out


def prediction_record(image_id: str, h: Hypothesis) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "emotion": h.emotion,
        "explanation": h.explanation,
        "emotion_prob": h.emotion_prob,
        "raw": h.raw,
    }

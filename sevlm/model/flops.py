"""The matmul FLOPs of one training forward+backward, counted from the model's own shapes.

What MFU is computed from (sevlm.train.telemetry). Matmuls only, as
`torch.utils.flop_counter.FlopCounterMode` counts them (2 FLOPs a multiply-add); a trained
matmul costs 3x its forward (the backward computes the input and the weight gradients), the
no-grad retrieval pass of the alignment head 1x. Element-wise work (norms, softmax, losses) is
left out: it is small next to the matmuls and has no fixed FLOP price anyway.
"""

from __future__ import annotations

import torch

from sevlm.model.config import SEVLMConfig


def _decoder_flops(cfg: SEVLMConfig, n_seq: int, length: int, cross_len: int = 0, prefix: int = 0) -> int:
    """Forward FLOPs of the GPT-2 blocks over `n_seq` sequences of `length` tokens (+ `prefix`
    prefix embeddings), with cross-attention over `cross_len` encoder states when > 0."""
    E, L = cfg.n_embd, cfg.n_layer
    t = length + prefix
    tokens = n_seq * t
    per_layer = 2 * tokens * E * 3 * E + 2 * tokens * E * E  # self-attention: qkv, output projection
    per_layer += 2 * 2 * n_seq * t * t * E  # QK^T and AV over all heads (the causal mask does not skip work)
    per_layer += 2 * tokens * E * 4 * E * 2  # MLP (4x wide, in and out)
    if cross_len:
        per_layer += 2 * tokens * E * E * 2  # query and output projections
        per_layer += 2 * n_seq * cross_len * E * 2 * E  # keys and values of the encoder states, per sequence
        per_layer += 2 * 2 * n_seq * t * cross_len * E  # QK^T and AV
    return L * per_layer


def _embed_flops(cfg: SEVLMConfig, n_seq: int, length: int) -> int:
    """Forward FLOPs of the input side of one pass: the causal VAD encoder and the fusion layer."""
    if not cfg.use_vad_input:
        return 0
    tokens = n_seq * length
    d, f = 3, cfg.vad_ffn
    per_layer = (
        2 * tokens * d * 3 * d + 2 * tokens * d * d + 2 * tokens * d * f * 2 + 2 * 2 * n_seq * length * length * d
    )
    return cfg.vad_layers * per_layer + 2 * tokens * (cfg.n_embd + 3) * cfg.n_embd


def _kept_length(keep: torch.Tensor) -> int:
    return max(int(keep.sum(1).max()), 1) if keep.numel() else 1


def train_flops(
    cfg: SEVLMConfig,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    visual_shape: tuple[int, int, int] | None = None,
    **_batch,
) -> int:
    """Matmul FLOPs of `model(**batch)` then `.backward()` on one micro-batch (the recipe's
    batch dict; host tensors are fine: only shapes and masks are read, so no device sync)."""
    B, T = input_ids.shape  # (B, T)
    E, V = cfg.n_embd, cfg.vocab_size
    fwd_trained = fwd_nograd = 0
    n_img = N = D = 0
    if visual_shape is not None and cfg.mode != "none":
        n_img, N, D = visual_shape
    # the image-conditioned pass
    cross = N if cfg.mode == "cross" else 0
    prefix = cfg.n_prefix if cfg.mode == "prefix" and n_img else 0
    fwd_trained += _decoder_flops(cfg, B, T, cross, prefix) + _embed_flops(cfg, B, T)
    if cfg.mode == "cross" and n_img and cfg.visual_projection:
        fwd_trained += 2 * n_img * N * D * E
    if prefix:
        h = E * cfg.n_prefix // 2
        fwd_trained += 2 * n_img * D * h + 2 * n_img * h * E * cfg.n_prefix
    if labels is not None:  # the LM head on the target positions only
        fwd_trained += 2 * int((labels[:, 1:] != -100).sum()) * E * V
    if cfg.use_vad_head:
        fwd_trained += 2 * B * (T - 1) * E * 3
    if cfg.use_contrastive and segment_ids is not None and visual_shape is not None:
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(segment_ids, dtype=torch.bool)
        exp = valid & (segment_ids == cfg.explanation_id)
        emo_len, exp_len = (
            _kept_length(valid & (segment_ids == cfg.emotion_id)),
            _kept_length(exp & (exp.cumsum(1) > 1)),
        )
        C = cfg.contrastive_dim
        if cfg.contrastive_features == "text":  # two text-only passes, trained
            for length in (emo_len, exp_len):
                fwd_trained += _decoder_flops(cfg, B, length) + _embed_flops(cfg, B, length)
        fwd_trained += (
            2 * C * (visual_shape[0] * visual_shape[2] + 2 * B * E)
        )  # image, emotion, explanation projections
        if cfg.w_align > 0 and cfg.mode != "none":
            fwd_nograd += _decoder_flops(cfg, B, exp_len) + _embed_flops(cfg, B, exp_len)  # retrieval features
            fwd_trained += 2 * C * (visual_shape[0] * visual_shape[2] + B * E)  # the alignment head's projections
    return 3 * fwd_trained + fwd_nograd


def batch_flops(cfg: SEVLMConfig, batch: dict) -> int:
    """`train_flops` of a recipe batch (its `visual` tensor gives the image shapes)."""
    visual = batch.get("visual")
    return train_flops(cfg, visual_shape=tuple(visual.shape) if visual is not None else None, **batch)

"""The causal VAD emotion encoder: a 3-d transformer over the per-token VAD sequence.

As docs/METHOD.md: learned positions, LayerNorm(3), then `n_layers` post-norm layers with one
head of width 3 and an FFN 3 -> 128 -> 3 (with `residual`, each layer's input is added to its
output once more, the authors' outer residual). Unlike the authors' bidirectional encoder it is
causal (position t attends to positions <= t), and it keeps a per-layer key/value cache so
generation encodes only the new position each step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Cache: (next position, [(keys (B,P,3), values (B,P,3)) per layer]).
VADCache = tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]


def causal_mask(t: int, total: int, device: torch.device) -> torch.Tensor:
    """(t, total) bool: the t newest of `total` positions; query i (absolute position
    total-t+i) may see keys j <= total-t+i."""
    return torch.ones(t, total, dtype=torch.bool, device=device).tril(diagonal=total - t)


class CausalVADLayer(nn.Module):
    def __init__(self, d: int = 3, ffn: int = 128, dropout: float = 0.1):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        allowed: torch.Tensor | None = None,  # (t, P+t) bool, from causal_mask; built here if None
    ):
        t = x.shape[1]
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, t, 3)
        if past is not None:
            k = torch.cat([past[0], k], dim=1)  # (B, P+t, 3)
            v = torch.cat([past[1], v], dim=1)
        if allowed is None:
            allowed = causal_mask(t, k.shape[1], x.device)
        a = F.scaled_dot_product_attention(
            q[:, None], k[:, None], v[:, None], attn_mask=allowed, dropout_p=self.p if self.training else 0.0
        )[:, 0]  # (B, t, 3)
        x = self.ln1(x + self.drop(self.out(a)))
        x = self.ln2(x + self.drop(self.ff(x)))
        return x, (k, v)


class EmotionEncoder(nn.Module):
    def __init__(
        self,
        max_len: int,
        n_layers: int = 3,
        ffn: int = 128,
        dropout: float = 0.1,
        residual: bool = False,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.residual = residual  # x + layer(x) around each layer, as the authors' encoder
        # every position sees every other one (the authors'): no cache, the caller recomputes
        self.bidirectional = bidirectional
        self.pos = nn.Embedding(max_len, 3)
        self.ln = nn.LayerNorm(3)
        self.layers = nn.ModuleList(CausalVADLayer(3, ffn, dropout) for _ in range(n_layers))
        self.max_len = max_len

    def forward(self, vad: torch.Tensor, cache: VADCache | None = None) -> tuple[torch.Tensor, VADCache]:
        """vad (B, t, 3) for positions start..start+t-1, where start comes from the cache."""
        if self.bidirectional and cache is not None:
            raise ValueError("a bidirectional VAD encoder keeps no cache: recompute the whole sequence")
        start = cache[0] if cache is not None else 0
        t = vad.shape[1]
        if start + t > self.max_len:
            raise ValueError(f"VAD sequence of {start + t} positions exceeds the encoder's max_len={self.max_len}")
        pos = torch.arange(start, start + t, device=vad.device)
        x = self.ln(vad + self.pos(pos))  # (B, t, 3)
        allowed = causal_mask(t, start + t, vad.device)  # every layer sees the same positions
        if self.bidirectional:
            allowed = torch.ones_like(allowed)  # (t, t): padding included, as the authors' (no mask)
        new = []
        for i, layer in enumerate(self.layers):
            y, kv = layer(x, cache[1][i] if cache is not None else None, allowed)
            x = x + y if self.residual else y
            new.append(kv)
        return x, (start + t, new)


def reorder_vad_cache(cache: VADCache, index: torch.Tensor) -> VADCache:
    """Select batch rows of a VAD cache (beam search)."""
    return cache[0], [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache[1]]

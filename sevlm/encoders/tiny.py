"""A tiny deterministic random encoder for tests: 16 tokens x 32 dims from 32x32 pixels."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from sevlm.encoders.base import ImageEncoder, register_encoder


@register_encoder("tiny-random")
class TinyRandomEncoder(ImageEncoder):
    """Patchify (8x8) + linear + tanh; weights drawn from `seed`, so two builds agree exactly."""

    resample = Image.BILINEAR

    def __init__(self, seed: int = 0, image_size: int = 32, patch_size: int = 8, dim: int = 32):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.seed, self.image_size, self.resize_size, self.patch_size = seed, image_size, image_size, patch_size
        self.num_tokens, self.dim = (image_size // patch_size) ** 2, dim
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.patch = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.patch.weight.copy_(torch.randn(self.patch.weight.shape, generator=g) / (3 * patch_size))
            self.patch.bias.copy_(torch.randn(dim, generator=g) * 0.1)

    def settings(self) -> dict:
        return {"seed": self.seed, "image_size": self.image_size, "patch_size": self.patch_size, "dim": self.dim}

    def describe(self) -> dict:
        return {**super().describe(), "seed": self.seed, "patch_size": self.patch_size, "weights": "random"}

    def forward(self, pixels):
        x = self.patch(pixels)  # (B, D, H/p, W/p)
        tokens = torch.tanh(x.flatten(2).transpose(1, 2))  # (B, T, D)
        return tokens, tokens.mean(dim=1)  # (B, T, D), (B, D)

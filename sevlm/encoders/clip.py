"""CLIP ViT-B/16 visual tower (the paper's encoder), loaded with transformers."""

from __future__ import annotations

import os

from sevlm.encoders.base import ImageEncoder, register_encoder
from sevlm.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@register_encoder("clip-vit-b16")
class CLIPViTEncoder(ImageEncoder):
    """tokens = post_layernorm(last_hidden_state[:, 1:]) (the patch tokens, 768-d before the
    projection, as METHOD.md); pooled = post_layernorm of the CLS token (CLIP's pooler_output)."""

    def __init__(self, weights: str = "openai/clip-vit-base-patch16", local_files_only: bool | None = None):
        # transformers (seconds to import) when a CLIP encoder is built, not when the registry lists it
        import transformers
        from transformers import CLIPVisionModel

        super().__init__()
        self.weights = str(weights)
        if local_files_only is None:
            # a directory never needs the network; a hub name uses the local cache if offline
            local_files_only = os.path.isdir(self.weights) or os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            self.model = CLIPVisionModel.from_pretrained(self.weights, local_files_only=local_files_only)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"clip-vit-b16: cannot load weights from {self.weights!r} "
                f"(a hub name needs the network or a cached copy; or pass a local directory): {e}"
            ) from None
        cfg = self.model.config
        self.transformers_version = transformers.__version__
        self.image_size = self.resize_size = cfg.image_size
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2
        self.dim = cfg.hidden_size
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        # transformers >= 5 flattened CLIPVisionModel; older versions wrap a .vision_model
        self._tower = getattr(self.model, "vision_model", self.model)

    def settings(self) -> dict:
        return {"weights": self.weights}

    def describe(self) -> dict:
        cfg = self.model.config
        return {
            **super().describe(),
            "weights": self.weights,
            "patch_size": cfg.patch_size,
            "layers": cfg.num_hidden_layers,
            "tokens": "post_layernorm(last_hidden_state[:, 1:])",
            "pooled": "post_layernorm(last_hidden_state[:, 0])",
            "transformers": self.transformers_version,
        }

    def forward(self, pixels):
        out = self.model(pixel_values=pixels)
        tokens = self._tower.post_layernorm(out.last_hidden_state[:, 1:])  # (B, 196, 768)
        return tokens, out.pooler_output  # (B, T, D), (B, D)

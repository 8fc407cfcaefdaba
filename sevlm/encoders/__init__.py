"""Frozen image encoders: `build_encoder(name, **kwargs)` -> ImageEncoder (tokens [B,T,D], pooled [B,D])."""

# importing the modules registers their encoders
from sevlm.encoders import clip, efficientnet, tiny  # noqa: E402,F401
from sevlm.encoders.base import (
    ENCODERS,
    ImageEncoder,
    ImageError,
    build_encoder,
    list_encoders,
    load_pixels,
    register_encoder,
    to_rgb,
)

__all__ = [
    "ENCODERS",
    "ImageEncoder",
    "ImageError",
    "build_encoder",
    "list_encoders",
    "load_pixels",
    "register_encoder",
    "to_rgb",
]

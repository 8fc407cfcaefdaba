"""The image-encoder contract, the registry, and the image loading every encoder shares.

An encoder is a frozen nn.Module that turns a batch of preprocessed pixels into visual
tokens [B, T, D] plus a pooled vector [B, D]. Adding one is a single class decorated with
`@register_encoder("name")`; its `describe()` is recorded in every artifact built from it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from sevlm.errors import ConfigError, DataError

ENCODERS: dict[str, type["ImageEncoder"]] = {}

# Policy for very large images: PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS
# (~179 Mpx) with DecompressionBombError, which extraction records as a failed image.
# Anything below that is decoded (JPEG at reduced scale via draft mode, so an
# 8000x8000 painting never materialises at full size) and resized like any other image.
# PIL's warning for 89-179 Mpx images is silenced: those images are handled on purpose.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def register_encoder(name: str) -> Callable[[type["ImageEncoder"]], type["ImageEncoder"]]:
    """Class decorator: make the encoder buildable by `build_encoder(name)`."""

    def wrap(cls):
        if name in ENCODERS:
            raise ValueError(f"image encoder {name!r} registered twice")
        cls.registered_name = name
        ENCODERS[name] = cls
        return cls

    return wrap


def list_encoders() -> list[str]:
    return sorted(ENCODERS)


# How an image becomes pixels (`sevlm extract --image-preprocess`): "encoder" (the encoder's own:
# shorter side resized, centre crop, its mean/std, e.g. CLIP's) or "imagenet-squash" (the SEVLM
# authors': the whole image squashed to image_size x image_size, bilinear, ImageNet mean/std).
IMAGE_PREPROCESSING = ("encoder", "imagenet-squash")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_encoder(name: str, image_preprocess: str = "encoder", **kwargs) -> "ImageEncoder":
    """Build a registered encoder, frozen and in eval mode, preprocessing images as
    `image_preprocess` says (IMAGE_PREPROCESSING)."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown image encoder {name!r}; known: {', '.join(list_encoders())}")
    if image_preprocess not in IMAGE_PREPROCESSING:
        raise ConfigError(
            f"image preprocessing: expected one of {', '.join(IMAGE_PREPROCESSING)}, got {image_preprocess!r}"
        )
    enc = ENCODERS[name](**kwargs)
    enc.image_preprocess = image_preprocess
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL image -> RGB: EXIF rotation applied, alpha composited on white, CMYK/16-bit/palette converted."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "P":
        # palette PNGs may carry transparency in the palette: go through RGBA so it is honoured
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: scale to 8 bits by its own range instead of clipping
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode != "RGB":
        # CMYK (JPEG Adobe inversion handled by PIL), L, 1, YCbCr, LAB, HSV ...
        return img.convert("RGB")
    return img


class ImageError(DataError):
    """An image file that cannot be used; `reason` is the message without the file name."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def load_pixels(path: str | Path, preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Decode one image file and `preprocess` it (e.g. `encoder.preprocess`).

    Anything unusable (missing, empty, not an image, truncated, a decompression bomb) raises
    ImageError naming the file, so every caller reports it on one line.
    """
    try:
        if Path(path).stat().st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            return preprocess(img)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (PIL cannot identify the format)") from None
    except Image.DecompressionBombError as e:  # not an OSError: PIL refuses before decoding
        raise ImageError(path, f"too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # truncated JPEGs ("image file is truncated"), broken PNG chunks, bad headers ...
        raise ImageError(path, f"corrupt or truncated image: {e}") from None


def resize_center_crop(img: Image.Image, resize: int, crop: int, resample) -> Image.Image:
    """Scale the shorter side to `resize` and take the central `crop` x `crop` square, in one
    resampling step from the matching source box (cheap for huge or extremely elongated images)."""
    if img.format == "JPEG" and min(img.size) > 2 * resize:
        # decode huge JPEGs at 1/2, 1/4 or 1/8 scale (never below the requested size)
        img.draft("RGB", (resize, resize))
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h) * crop / resize  # the crop's extent in source pixels
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((crop, crop), resample=resample, box=(left, top, left + side, top + side), reducing_gap=3.0)


def normalize(img: Image.Image, mean, std) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W], (x/255 - mean) / std."""
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # (3, H, W)


class ImageEncoder(nn.Module):
    """Base class: subclasses set name/num_tokens/dim, image geometry, and implement forward."""

    registered_name: str = ""
    num_tokens: int
    dim: int
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample = Image.BICUBIC
    image_preprocess = "encoder"  # IMAGE_PREPROCESSING; set by build_encoder

    @property
    def name(self) -> str:
        return self.registered_name

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """PIL image of any mode/size -> [3, image_size, image_size] normalised pixels."""
        if self.image_preprocess == "imagenet-squash":  # the whole painting, aspect ratio lost
            img = to_rgb(img).resize((self.image_size, self.image_size), resample=Image.BILINEAR)
            return normalize(img, IMAGENET_MEAN, IMAGENET_STD)
        img = resize_center_crop(img, self.resize_size, self.image_size, self.resample)
        return normalize(img, self.mean, self.std)

    def preprocessing(self) -> dict:
        if self.image_preprocess == "imagenet-squash":
            return {
                "mode": "imagenet-squash",
                "resize": [self.image_size, self.image_size],
                "resample": "bilinear",
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
                "color": "RGB; alpha composited on white; CMYK/grayscale converted; EXIF rotation applied",
            }
        return {
            "resize_shorter_side": self.resize_size,
            "center_crop": self.image_size,
            "resample": Image.Resampling(self.resample).name.lower(),
            "mean": list(self.mean),
            "std": list(self.std),
            "color": "RGB; alpha composited on white; CMYK/grayscale converted; EXIF rotation applied",
        }

    def settings(self) -> dict:
        """The build_encoder keyword arguments that rebuild this very encoder."""
        return {}

    def describe(self) -> dict:
        extra = {} if self.image_preprocess == "encoder" else {"image_preprocess": self.image_preprocess}
        return {
            "name": self.name,
            "settings": {**self.settings(), **extra},  # build_encoder(name, **settings) rebuilds it
            "num_tokens": self.num_tokens,
            "dim": self.dim,
            "preprocessing": self.preprocessing(),
        }

    def train(self, mode: bool = True):
        # frozen: stays in eval mode (BatchNorm statistics, dropout) whatever the caller asks
        return super().train(False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

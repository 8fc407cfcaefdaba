"""Image encoders: registry, preprocessing of awkward images, CLIP token definition, real EfficientNet weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sevlm.encoders import ImageEncoder, build_encoder, list_encoders
from sevlm.errors import ConfigError


def test_registry_lists_the_three_encoders_and_refuses_unknown_names():
    assert {"clip-vit-b16", "efficientnet-lite0", "tiny-random"} <= set(list_encoders())
    with pytest.raises(ConfigError, match="unknown image encoder 'resnet-9000'"):
        build_encoder("resnet-9000")


def test_tiny_random_is_deterministic_frozen_and_shaped():
    a, b = build_encoder("tiny-random", seed=3), build_encoder("tiny-random", seed=3)
    c = build_encoder("tiny-random", seed=4)
    assert isinstance(a, ImageEncoder) and a.name == "tiny-random"
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens, pooled = a(pixels)
    assert tokens.shape == (2, a.num_tokens, a.dim) == (2, 16, 32) and pooled.shape == (2, 32)
    assert torch.equal(tokens, b(pixels)[0])
    assert not torch.allclose(tokens, c(pixels)[0])
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training  # frozen encoders stay in eval mode
    d = a.describe()
    assert (
        d["name"] == "tiny-random"
        and d["num_tokens"] == 16
        and d["seed"] == 3
        and d["preprocessing"]["center_crop"] == 32
    )


def _roundtrip(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _roundtrip(Image.new("CMYK", (50, 40), (0, 200, 0, 10)), "JPEG"),
        lambda: Image.new("L", (50, 40), 128),
        lambda: Image.new("1", (50, 40), 1),
        lambda: Image.new("I;16", (50, 40), 40000),
        lambda: _roundtrip(Image.new("RGBA", (50, 40), (255, 0, 0, 128)), "PNG"),
        lambda: _roundtrip(Image.new("RGB", (50, 40), (10, 20, 30)).convert("P"), "PNG", transparency=0),
        lambda: Image.new("LA", (40, 90), (10, 200)),
        lambda: Image.new("RGB", (30000, 7), (9, 9, 9)),
    ],
    ids=["cmyk-jpeg", "grayscale", "bilevel", "16-bit", "rgba-png", "palette-png-transparent", "gray-alpha", "30000x7"],
)
def test_preprocess_converts_every_mode_to_rgb_pixels(make):
    enc = build_encoder("tiny-random")
    px = enc.preprocess(make())
    assert px.shape == (3, 32, 32) and px.dtype == torch.float32 and torch.isfinite(px).all()


def test_transparent_pixels_become_white_and_cmyk_colours_are_kept():
    enc = build_encoder("tiny-random")
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    assert torch.equal(enc.preprocess(clear), enc.preprocess(white))
    green = enc.preprocess(Image.new("CMYK", (40, 40), (255, 0, 255, 0)))  # full cyan + yellow = green
    r, g, b = (green * 0.5 + 0.5).mean(dim=(1, 2)).tolist()
    assert g > 0.9 and r < 0.1 and b < 0.1


def test_huge_jpeg_is_decoded_at_reduced_scale_and_center_cropped():
    enc = build_encoder("tiny-random")
    big = Image.new("RGB", (8000, 6000), (200, 30, 30))
    big.paste((30, 30, 200), (0, 0, 1000, 6000))  # blue left strip, cropped away by the centre crop
    img = _roundtrip(big, "JPEG", quality=60)
    px = enc.preprocess(img) * 0.5 + 0.5
    assert px.shape == (3, 32, 32)
    assert abs(px[0].mean().item() - 200 / 255) < 0.03 and abs(px[2].mean().item() - 30 / 255) < 0.03


def test_clip_tokens_are_post_layernormed_patch_tokens(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2
    )
    torch.manual_seed(0)
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "clip")
    enc = build_encoder("clip-vit-b16", weights=str(tmp_path / "clip"))
    assert (enc.num_tokens, enc.dim, enc.image_size) == (16, 24, 32)
    assert enc.describe()["weights"] == str(tmp_path / "clip") and enc.mean[0] == pytest.approx(0.48145466)

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    pixels = enc.preprocess(img)[None]  # (1, 3, 32, 32)
    tokens, pooled = enc(pixels)
    ref = CLIPVisionModel.from_pretrained(tmp_path / "clip").eval()
    with torch.no_grad():
        out = ref(pixel_values=pixels)
        expected = ref.post_layernorm(out.last_hidden_state[:, 1:])  # (1, 16, 24): CLS dropped, LN applied
    assert tokens.shape == (1, 16, 24) and torch.allclose(tokens, expected, atol=1e-6)
    assert torch.allclose(pooled, out.pooler_output, atol=1e-6)
    # the layer norm really is applied: per-token statistics follow LN's weight/bias, not the raw states
    assert not torch.allclose(tokens, out.last_hidden_state[:, 1:], atol=1e-3)


def test_clip_missing_weights_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load weights"):
        build_encoder("clip-vit-b16", weights=str(tmp_path / "nowhere"))


# ImageNet classes that are garments: what a real classifier should see in Rococo portraits
GARMENTS = {399, 400, 452, 501, 568, 578, 601, 614, 617, 652, 689, 697, 735, 824, 834, 869, 887, 903}
SCENERY = set(range(970, 981)) | {984}  # alp .. volcano, rapeseed


@pytest.fixture(scope="module")
def efficientnet():
    return build_encoder("efficientnet-lite0")


def test_efficientnet_weights_give_sensible_imagenet_predictions_on_real_paintings(efficientnet, wikiart_dir):
    enc = efficientnet
    portraits = [
        wikiart_dir / "Rococo/allan-ramsay_portrait-of-elizabeth-gunning-duchess-of-argyll.jpg",
        wikiart_dir / "Rococo/louise-elisabeth-vigee-le-brun_marie-antoinette-in-a-muslin-dress-1783.jpg",
    ]
    landscape = wikiart_dir / "Pointillism/paul-signac_comblat-and-the-valley-of-the-cere.jpg"
    others = sorted(wikiart_dir.glob("*/*.jpg"))[::1000][:3]
    files = portraits + [landscape] + others
    images = [Image.open(f) for f in files]
    x = torch.stack([enc.preprocess(im) for im in images])  # (B, 3, 224, 224)
    xf = torch.stack([enc.preprocess(ImageOps.mirror(im)) for im in images])
    probs, probs_flipped = enc.classify(x), enc.classify(xf)
    top5 = probs.topk(5).indices.tolist()
    for i in range(2):
        assert GARMENTS & set(top5[i]), f"{files[i].name}: top-5 {top5[i]} has no garment class"
    assert SCENERY & set(top5[2]), f"{landscape.name}: top-5 {top5[2]} has no scenery class"
    # confident (a random network gives ~0.001-0.01) and stable under a mirror flip
    assert probs.max(dim=1).values.mean() > 0.15
    consistent = [int(a) in b for a, b in zip(probs.argmax(1), probs_flipped.topk(5).indices.tolist())]
    assert sum(consistent) >= len(files) - 1

    tokens, pooled = enc(x)
    assert tokens.shape == (len(files), 49, 1280) and pooled.shape == (len(files), 1280)
    assert torch.allclose(pooled, tokens.mean(dim=1)) and (tokens >= 0).all() and (tokens <= 6).all()  # ReLU6 map


def test_efficientnet_refuses_a_mismatched_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="does not match the network"):
        build_encoder("efficientnet-lite0", weights=str(bad))


def test_load_pixels_names_the_file_for_every_unusable_image(tmp_path):
    import struct
    import zlib

    from sevlm.encoders import ImageError, load_pixels
    from sevlm.errors import DataError

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"  # a 200-byte PNG whose header declares 30000 x 30000 pixels
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    enc = build_encoder("tiny-random")
    cases = {
        "bomb.png": "too large to decode safely: Image size (900000000 pixels) exceeds limit",
        "empty.jpg": "empty file (0 bytes)",
        "text.jpg": "not an image",
        "missing.jpg": "file not found",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageError) as e:
            load_pixels(tmp_path / name, enc.preprocess)
        assert isinstance(e.value, DataError) and str(e.value).startswith(f"{tmp_path / name}: {reason}")
        assert "\n" not in str(e.value) and e.value.reason.startswith(reason)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "ok.png")
    assert load_pixels(tmp_path / "ok.png", enc.preprocess).shape == (3, 32, 32)


class Planted:
    """Not a tensor: torch.load(weights_only=True) refuses to build it."""

    def __reduce__(self):
        return (print, ("payload ran",))


def test_a_planted_pickle_in_an_encoder_weights_file_is_refused_without_advice_to_run_it(tmp_path, capsys):
    import torch

    from sevlm.errors import ConfigError

    path = tmp_path / "lite0.pt"
    torch.save({"stem.weight": torch.zeros(1), "extra": Planted()}, path)
    with pytest.raises(
        ConfigError, match=r"lite0\.pt holds pickled objects besides tensors, which sevlm never loads"
    ) as e:
        build_encoder("efficientnet-lite0", weights=str(path))
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)
    assert "payload ran" not in capsys.readouterr().out

"""Drawn pictures: each emotion fixes the palette, background texture and motif; a style adds brushwork."""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sevlm.demo.tables import LOOKS, Look


def _jitter(rng: np.random.Generator, rgb, sd: float = 14.0) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.normal(0, sd, 3), 0, 255))


def _background(size: int, look: Look, other: Look, mix: float, rng: np.random.Generator) -> Image.Image:
    """Gradient between the look's top/bottom colours (blended with `other`) plus texture.

    Both are smooth, so they are computed at 64x64 and scaled up: a few times faster at 224.
    """
    top = (1 - mix) * np.asarray(look.top, float) + mix * np.asarray(other.top, float)
    bottom = (1 - mix) * np.asarray(look.bottom, float) + mix * np.asarray(other.bottom, float)
    top, bottom = top + rng.normal(0, 10, 3), bottom + rng.normal(0, 10, 3)
    lo = min(size, 64)
    angle = rng.normal(0, 0.35)  # mostly vertical gradients, some tilted
    axis = np.linspace(0, 1, lo)
    t = np.clip(np.cos(angle) * axis[:, None] + np.sin(angle) * (axis[None, :] - 0.5), 0, 1)  # (lo, lo)
    img = top + t[..., None] * (bottom - top)  # (lo, lo, 3)
    # Low-frequency texture: coarse noise blown up, amplitude set by the emotion (mottled disgust).
    amp = (1 - mix) * look.noise + mix * other.noise
    cells = max(4, lo * int(rng.integers(16, 38)) // 224)  # 16-37 cells across, whatever the size
    coarse = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
    noise = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c]).resize((lo, lo), Image.BICUBIC)) for c in range(3)], -1
    )  # (lo, lo, 3)
    img = Image.fromarray(np.clip(img + amp * noise, 0, 255).astype(np.uint8))
    return img if lo == size else img.resize((size, size), Image.BICUBIC)


class Canvas:
    """What a motif draws with: the picture, its side, the RNG, how much of the motif to draw
    (`amount` in (0, 1]), and the list collecting the names of the colours drawn."""

    def __init__(self, draw: ImageDraw.ImageDraw, size: int, rng, amount: float, look: Look, used: list[str]):
        self.draw, self.size, self.rng, self.amount, self.look, self.used = draw, size, rng, amount, look, used

    def n(self, k: float) -> int:
        """About `k` times the amount (at least 1)."""
        return max(1, int(round(k * self.amount * self.rng.uniform(0.7, 1.3))))

    def u(self, a: float = 0.0, b: float = 1.0) -> float:
        """A random position between a and b, as a fraction of the side."""
        return self.rng.uniform(a, b) * self.size

    def colour(self, record: bool = True) -> tuple[int, int, int]:
        """A jittered colour of the look; its name joins `used` if `record`."""
        name, rgb = self.look.colours[int(self.rng.integers(len(self.look.colours)))]
        if record:
            self.used.append(name)
        return _jitter(self.rng, rgb)


def _dots(c: Canvas) -> None:  # amusement
    for _ in range(c.n(40)):
        r, x, y = c.u(0.02, 0.08), c.u(), c.u()
        c.draw.ellipse([x - r, y - r, x + r, y + r], fill=c.colour())


def _glowing_orb(c: Canvas) -> None:  # awe
    for _ in range(c.n(40)):
        x, y, r = c.u(), c.u(0, 0.6), max(1, c.size // 150)
        c.draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 240))
    x, y, r = c.u(0.3, 0.7), c.u(0.3, 0.6), c.u(0.08, 0.16) * c.amount
    for k in range(6, 0, -1):  # halo: concentric discs fading out
        rgb = np.asarray(c.colour(record=k == 1), float) * (0.5 + 0.5 / k)
        rr = r * (1 + 0.35 * k)
        c.draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=tuple(int(v) for v in np.clip(rgb, 0, 255)))
    c.draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 240, 190))


def _hills_and_clouds(c: Canvas) -> None:  # contentment
    for _ in range(c.n(4)):
        cx, cy, w, h = c.u(-0.2, 1.2), c.u(0.6, 0.9), c.u(0.4, 0.9), c.u(0.15, 0.3)
        c.draw.ellipse([cx - w, cy - h * 0.5, cx + w, cy + h * 2], fill=c.colour())
    for _ in range(c.n(3)):
        cx, cy, w = c.u(), c.u(0.05, 0.35), c.u(0.08, 0.15)
        c.draw.ellipse([cx - w, cy - w * 0.4, cx + w, cy + w * 0.4], fill=(250, 250, 245))


def _rays_and_zigzags(c: Canvas) -> None:  # excitement
    s = c.size
    cx, cy = c.u(0.3, 0.7), c.u(0.3, 0.7)
    for _ in range(c.n(30)):
        a = c.rng.uniform(0, 2 * np.pi)
        c.draw.line(
            [cx, cy, cx + np.cos(a) * s, cy + np.sin(a) * s], fill=c.colour(), width=max(1, int(c.u(0.005, 0.02)))
        )
    for _ in range(c.n(4)):
        pts, x, y = [], c.u(), c.u()
        for _ in range(8):
            x, y = x + c.u(0.03, 0.08), y + (c.u(-0.08, 0.08))
            pts.append((x - 0.3 * s, y))
        c.draw.line(pts, fill=c.colour(), width=max(2, s // 60))


def _spikes_and_slashes(c: Canvas) -> None:  # anger
    for _ in range(c.n(14)):
        x, y = c.u(), c.u(0.3, 1.1)
        h, w = c.u(0.2, 0.6), c.u(0.03, 0.1)
        c.draw.polygon([(x - w, y), (x + w, y), (x + c.u(-0.05, 0.05), y - h)], fill=c.colour())
    for _ in range(c.n(5)):
        x, y, dx, dy = c.u(), c.u(), c.u(-0.5, 0.5), c.u(-0.5, 0.5)
        c.draw.line([x, y, x + dx, y + dy], fill=c.colour(), width=max(2, c.size // 40))


def _blobs_and_specks(c: Canvas) -> None:  # disgust
    for _ in range(c.n(25)):
        x, y, rx, ry = c.u(), c.u(), c.u(0.03, 0.12), c.u(0.02, 0.08)
        c.draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=c.colour())
    for _ in range(c.n(80)):
        x, y, r = c.u(), c.u(), max(1, c.size // 110)
        c.draw.ellipse([x - r, y - r, x + r, y + r], fill=c.colour())


def _shadow_figure(c: Canvas) -> None:  # fear
    s = c.size
    x, w, top = c.u(0.3, 0.7), c.u(0.08, 0.14) * (0.5 + c.amount / 2), c.u(0.15, 0.35)
    c.draw.ellipse([x - w * 0.6, top - w * 1.2, x + w * 0.6, top], fill=(3, 3, 6))
    c.draw.polygon([(x - w, s), (x + w, s), (x + w * 0.5, top), (x - w * 0.5, top)], fill=(3, 3, 6))
    c.used += ["black", "dark blue"]
    if c.rng.random() < 0.6:  # eyes
        e = max(1, s // 90)
        for dx in (-w * 0.25, w * 0.25):
            c.draw.ellipse([x + dx - e, top - w * 0.6 - e, x + dx + e, top - w * 0.6 + e], fill=(235, 235, 240))
    for _ in range(c.n(25)):
        x0, y0 = c.u(), c.u()
        c.draw.line([x0, y0, x0 + c.u(-0.15, 0.15), y0 + c.u(-0.15, 0.15)], fill=c.colour(), width=1)


def _rain_and_figure(c: Canvas) -> None:  # sadness
    for _ in range(c.n(60)):
        x, y, L = c.u(), c.u(-0.1, 1.0), c.u(0.05, 0.2)
        c.draw.line([x, y, x - L * 0.1, y + L], fill=c.colour(), width=1)
    x, y, h = c.u(0.2, 0.8), c.u(0.65, 0.85), c.u(0.08, 0.14)
    c.draw.ellipse([x - h * 0.15, y - h * 1.3, x + h * 0.15, y - h], fill=(55, 60, 75))
    c.draw.rectangle([x - h * 0.15, y - h, x + h * 0.15, y], fill=(55, 60, 75))


def _flat_grid(c: Canvas) -> None:  # something else
    s = c.size
    k = int(c.rng.integers(3, 7))
    m = 2 if s / k >= 4 else s / k / 4  # a margin inside each cell, smaller when cells are tiny
    for i in range(k + 1):
        p = i / k * s
        c.draw.line([p, 0, p, s], fill=c.colour(), width=max(1, s // 100))
        c.draw.line([0, p, s, p], fill=c.colour(), width=max(1, s // 100))
    for _ in range(c.n(6)):
        i, j = c.rng.integers(0, k, 2)
        c.draw.rectangle([i / k * s + m, j / k * s + m, (i + 1) / k * s - m, (j + 1) / k * s - m], fill=c.colour())


MOTIFS: dict[str, Callable[[Canvas], None]] = {
    "amusement": _dots,
    "awe": _glowing_orb,
    "contentment": _hills_and_clouds,
    "excitement": _rays_and_zigzags,
    "anger": _spikes_and_slashes,
    "disgust": _blobs_and_specks,
    "fear": _shadow_figure,
    "sadness": _rain_and_figure,
    "something else": _flat_grid,
}


def _brushwork(style: str, img: Image.Image, colours: list[tuple[int, int, int]], rng) -> Image.Image:
    """A style overlay that varies the texture within every emotion (it uses the picture's own colours)."""
    s = img.size[0]
    draw = ImageDraw.Draw(img)
    pick = lambda: colours[int(rng.integers(len(colours)))]  # noqa: E731
    if style == "Synthetic_Expressionism":
        for _ in range(12):
            x, y, a = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0, np.pi)
            L = rng.uniform(0.1, 0.3) * s
            draw.line([x, y, x + np.cos(a) * L, y + np.sin(a) * L], fill=pick(), width=max(2, s // 30))
    elif style == "Synthetic_Impressionism":
        for _ in range(150):
            x, y = rng.uniform(0, s), rng.uniform(0, s)
            L = max(2.0, s / 50)
            draw.line([x, y, x + L, y + rng.uniform(-L, L) / 2], fill=pick(), width=max(1, s // 70))
        img = img.filter(ImageFilter.GaussianBlur(radius=max(0.5, s / 300)))
    elif style == "Synthetic_Pointillism":
        arr = np.asarray(img).astype(np.int16)
        # Dots: jitter a random grid of pixels' colours, so the picture breaks into specks.
        mask = rng.random(arr.shape[:2]) < 0.15
        arr[mask] += rng.integers(-45, 46, (int(mask.sum()), 3)).astype(np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img  # Minimalism: flat, no overlay


def draw_painting(
    emotion: str, secondary: str, mix: float, style: str, size: int, rng
) -> tuple[Image.Image, list[str]]:
    """One picture for `emotion`, with `mix` (0..~0.45) of the `secondary` emotion blended in.

    Returns the picture and the names of the colours actually drawn (most used first).
    """
    look, other = LOOKS[emotion], LOOKS[secondary]
    img = _background(size, look, other, mix, rng)
    draw = ImageDraw.Draw(img)
    used: list[str] = []
    if mix > 0.05:
        MOTIFS[secondary](Canvas(draw, size, rng, mix, other, []))
    MOTIFS[emotion](Canvas(draw, size, rng, 1.0, look, used))
    used.append(look.colours[0][0])  # never empty
    colours = [_jitter(rng, rgb, 10) for _, rgb in look.colours]
    img = _brushwork(style, img, colours, rng)
    names, counts = np.unique(used, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return img, [str(names[i]) for i in order]

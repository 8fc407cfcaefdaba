"""A synthetic, ArtEmis-format demo dataset: drawn "paintings" and a simulated crowd.

There is no ArtEmis on our machines, so the demo makes its own data, clearly labelled
synthetic. Each picture is drawn for one emotion: the emotion fixes the palette, the
brightness, the background texture and the motif (dots for amusement, a glowing orb for
awe, jagged spikes for anger, ...). An independent "style" adds a brushwork overlay, and
a second, confusable emotion is mixed in with a random weight, so pictures vary within a
class and some are ambiguous. A crowd of 5-7 simulated annotators then picks emotions:
the drawn one most of the time (less often the more ambiguous the picture), otherwise a
confusable neighbour. Each annotator writes an explanation from one of several templates
of the chosen emotion, naming colours and shapes that are really in the picture.

The output enters the pipeline through `sevlm prepare` like real data:
`out_dir/artemis_dataset_release_v0.csv` (ArtEmis v1 columns), `out_dir/images/<Style>/
<painting>.jpg`, `README.txt`, and `demo_info.json` (the drawn emotion per painting, for
checks). With `images_dir`, pictures come from real paintings instead (e.g. WikiArt) and
their emotion is assigned from measured brightness, saturation, warmth and texture.

`sevlm/assets/demo_vad.tsv` (loaded by `VADLexicon.demo()`) gives the content words of these
templates valence/arousal/dominance values in [0, 1]: our own rough estimates, written for
this demo and not taken from NRC-VAD, so the demo needs no licensed file. Function words
are left out (they get zeros and a false in-lexicon mask).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sevlm.constants import EMOTIONS
from sevlm.errors import DataError
from sevlm.io import atomic_path, write_json, write_text

CSV_NAME = "artemis_dataset_release_v0.csv"
STYLES = (
    "Synthetic_Expressionism",
    "Synthetic_Impressionism",
    "Synthetic_Pointillism",
    "Synthetic_Minimalism",
)
ARTISTS = (
    "mira-okafor",
    "léa-duval",
    "josé-ortiz",
    "zoë-brandt",
    "søren-lund",
    "hana-sato",
    "ivan-petrov",
    "ada-quinn",
)
TITLES = ("composition", "study", "untitled", "nocturne", "landscape", "fragment", "memory", "reverie")

# Emotions an annotator confuses with the drawn one, most likely first.
NEIGHBOURS = {
    "amusement": ("excitement", "contentment", "something else"),
    "awe": ("contentment", "fear", "excitement"),
    "contentment": ("awe", "amusement", "sadness"),
    "excitement": ("amusement", "awe", "anger"),
    "anger": ("disgust", "fear", "excitement"),
    "disgust": ("anger", "fear", "something else"),
    "fear": ("sadness", "awe", "anger"),
    "sadness": ("fear", "contentment", "something else"),
    "something else": ("contentment", "sadness", "awe"),
}


@dataclass(frozen=True)
class Look:
    """How pictures of one emotion look: named palette, background and texture."""

    colours: tuple[tuple[str, tuple[int, int, int]], ...]  # (colour word, RGB)
    top: tuple[int, int, int]  # background gradient, top colour
    bottom: tuple[int, int, int]  # background gradient, bottom colour
    noise: float  # background texture amplitude (0-255 scale)
    shapes: tuple[str, ...]  # words for the motif, as annotators would name it


LOOKS = {
    "amusement": Look(
        (("pink", (255, 105, 180)), ("yellow", (255, 225, 40)), ("turquoise", (60, 220, 210)),
         ("orange", (255, 150, 40)), ("lime", (170, 240, 60))),
        (255, 240, 215), (255, 215, 235), 6,
        ("polka dots", "round bubbles", "balloons", "little circles"),
    ),
    "awe": Look(
        (("gold", (250, 200, 60)), ("white", (250, 250, 255)), ("violet", (140, 90, 200)),
         ("deep blue", (30, 40, 120))),
        (10, 15, 60), (110, 60, 150), 4,
        ("glowing orb", "vast sky", "tiny stars", "shining light"),
    ),
    "contentment": Look(
        (("soft green", (140, 200, 130)), ("pale blue", (170, 210, 240)), ("cream", (250, 240, 210)),
         ("light yellow", (250, 240, 150))),
        (175, 215, 240), (190, 225, 170), 3,
        ("rolling hills", "soft clouds", "gentle curves", "calm meadow"),
    ),
    "excitement": Look(
        (("red", (240, 30, 30)), ("orange", (255, 130, 0)), ("yellow", (255, 235, 0)),
         ("magenta", (240, 0, 160))),
        (250, 90, 20), (230, 20, 60), 10,
        ("bursting rays", "zigzag lines", "sharp diagonals", "explosion of lines"),
    ),
    "anger": Look(
        (("crimson", (180, 10, 30)), ("black", (15, 5, 5)), ("scarlet", (230, 30, 20)),
         ("dark red", (110, 0, 0))),
        (60, 0, 0), (10, 0, 0), 14,
        ("jagged spikes", "sharp triangles", "violent slashes", "broken shards"),
    ),
    "disgust": Look(
        (("olive", (110, 110, 30)), ("mustard", (200, 170, 40)), ("brown", (100, 65, 30)),
         ("sickly green", (150, 170, 60))),
        (120, 110, 50), (80, 60, 30), 26,
        ("oozing blobs", "stains", "lumpy shapes", "rotten specks"),
    ),
    "fear": Look(
        (("black", (5, 5, 10)), ("cold grey", (110, 115, 125)), ("pale white", (225, 225, 235)),
         ("dark blue", (15, 20, 55))),
        (20, 25, 45), (2, 2, 6), 8,
        ("looming shadow", "thin scratches", "dark figure", "staring eyes"),
    ),
    "sadness": Look(
        (("grey", (130, 130, 135)), ("dull blue", (80, 100, 135)), ("slate", (90, 100, 110)),
         ("faded lavender", (140, 130, 160))),
        (120, 125, 140), (70, 80, 100), 5,
        ("falling rain", "lonely figure", "drooping lines", "empty space"),
    ),
    "something else": Look(
        (("beige", (220, 205, 175)), ("grey", (150, 150, 150)), ("tan", (190, 160, 120)),
         ("muted teal", (90, 140, 140))),
        (200, 195, 185), (170, 165, 155), 2,
        ("rectangles", "plain grid", "straight lines", "flat squares"),
    ),
}

FEELINGS = {
    "amusement": ("fun", "playful", "silly", "funny", "whimsical", "cheerful"),
    "awe": ("amazed", "wonder", "majestic", "breathtaking", "grand", "inspired"),
    "contentment": ("calm", "peaceful", "relaxed", "content", "serene", "cozy"),
    "excitement": ("excited", "energetic", "thrilled", "alive", "dynamic", "intense"),
    "anger": ("angry", "furious", "aggressive", "rage", "hostile", "irritated"),
    "disgust": ("disgusted", "gross", "nauseous", "repulsive", "filthy", "sick"),
    "fear": ("scared", "afraid", "terrified", "uneasy", "creepy", "anxious"),
    "sadness": ("sad", "lonely", "gloomy", "melancholy", "hopeless", "depressed"),
    "something else": ("curious", "confused", "indifferent", "puzzled", "neutral", "bored"),
}

# {c1}, {c2}: colours in the picture; {shape}: its motif; {feel}: a feeling of the chosen emotion.
TEMPLATES = {
    "amusement": (
        "the {c1} {shape} look so playful that i could not help smiling",
        "all those {shape} in {c1} and {c2} remind me of a funny birthday party",
        "it makes me laugh because the {shape} seem to bounce around like toys",
        "the cheerful {c1} and {c2} colors feel light and {feel}",
        "this looks like a cartoon with {c1} {shape} and it is {feel}",
        "the {shape} are so silly and the {c1} makes it feel {feel}",
    ),
    "awe": (
        "seeing the {shape} against the {c1} makes me feel small and full of wonder",
        "the way the {c1} light meets the {c2} feels {feel} and endless",
        "i am amazed by the {shape} it looks like a glimpse of heaven",
        "the huge {c1} sky and the {shape} feel {feel} and mysterious",
        "so much {c1} and {c2} it feels like standing under the universe",
        "the {shape} glowing in {c1} leaves me {feel}",
    ),
    "contentment": (
        "the {c1} and {c2} tones are soft and make me feel {feel}",
        "the {shape} look like a quiet afternoon in the countryside",
        "i feel {feel} looking at the {c1} {shape} it is so gentle",
        "the soft {c1} colors and {shape} are very relaxing to look at",
        "this reminds me of a peaceful summer day with {c1} fields",
        "the {shape} and the {c2} sky make me feel {feel} and at home",
    ),
    "excitement": (
        "the {c1} and {c2} {shape} are full of energy and make me feel {feel}",
        "the {shape} look like fireworks going off and it feels {feel}",
        "so much bright {c1} and movement that my heart beats faster",
        "the {shape} in {c1} explode across the canvas it is {feel}",
        "the vivid {c1} and {c2} feel like a wild party and i feel {feel}",
        "the colors are so loud and the {shape} so fast it feels {feel}",
    ),
    "anger": (
        "the {c1} {shape} look violent and make me feel {feel}",
        "the {shape} slicing through the {c2} feel like pure rage",
        "all the {c1} and {c2} is aggressive and it makes me feel {feel}",
        "the harsh {shape} look like someone smashed something in anger",
        "the dark {c1} and the {shape} feel {feel} and hostile",
        "it looks like a fight the {c1} {shape} are so {feel}",
    ),
    "disgust": (
        "the {c1} {shape} look like mold and it makes me feel {feel}",
        "the {shape} in {c1} and {c2} remind me of rotten food",
        "i feel {feel} looking at the murky {c1} colors and {shape}",
        "it looks dirty and slimy the {c2} {shape} make me feel {feel}",
        "those {shape} look like vomit on a {c1} floor so {feel}",
        "the {c1} and {c2} mess looks {feel} and unhealthy",
    ),
    "fear": (
        "seeing the {shape} in the {c1} darkness makes me feel {feel}",
        "the {c1} and {c2} feel cold and i sense the {shape} watching me",
        "i feel {feel} because of the {shape} like something hiding in the dark",
        "it is so dark and the {shape} seem {feel} like a nightmare",
        "the {shape} against the {c1} background feels like a warning",
        "the cold {c2} and the {shape} give me chills it is {feel}",
    ),
    "sadness": (
        "the {c1} and {c2} colors feel {feel} like a rainy day",
        "looking at the {shape} makes me feel {feel} and alone",
        "everything is {c1} and dull and the {shape} look so tired",
        "the {shape} remind me of tears and loss it is {feel}",
        "the faded {c1} tones and the {shape} feel {feel} and empty",
        "it looks like a cold {c2} morning after losing someone so {feel}",
    ),
    "something else": (
        "the {c1} {shape} are plain and i do not feel much just {feel}",
        "i am {feel} about the {shape} in {c1} and {c2} they seem random",
        "the {shape} look like a floor plan and leave me {feel}",
        "this is just {c1} and {c2} {shape} and i feel {feel} about it",
        "the flat {c1} {shape} make me think of an office wall",
        "i do not know what to make of the {c1} {shape} it feels {feel}",
    ),
}
# Under five tokens: real crowds write these too; `prepare` drops them.
SHORT = {
    "amusement": ("so fun", "haha cute"), "awe": ("wow", "so grand"),
    "contentment": ("very calm", "nice"), "excitement": ("so bright", "wow energy"),
    "anger": ("so angry", "rage"), "disgust": ("gross", "yuck"),
    "fear": ("creepy", "so scary"), "sadness": ("so sad", "gloomy"),
    "something else": ("weird", "no idea"),
}
GENERIC_SHAPES = ("shapes", "brushstrokes", "forms", "figures", "patterns")


def _jitter(rng: np.random.Generator, rgb, sd: float = 14.0) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.normal(0, sd, 3), 0, 255))


# --------------------------------------------------------------------------- drawing


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


def _colour(look: Look, rng: np.random.Generator, used: list[str]) -> tuple[int, int, int]:
    name, rgb = look.colours[int(rng.integers(len(look.colours)))]
    used.append(name)
    return _jitter(rng, rgb)


def _motif(emotion: str, draw: ImageDraw.ImageDraw, size: int, rng, amount: float, used: list[str]) -> None:
    """Draw `emotion`'s motif; `amount` in (0, 1] scales how much of it there is."""
    look, s = LOOKS[emotion], size
    n = lambda k: max(1, int(round(k * amount * rng.uniform(0.7, 1.3))))  # noqa: E731
    u = lambda a=0.0, b=1.0: rng.uniform(a, b) * s  # noqa: E731
    if emotion == "amusement":
        for _ in range(n(40)):
            r, x, y = u(0.02, 0.08), u(), u()
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(look, rng, used))
    elif emotion == "awe":
        for _ in range(n(40)):
            x, y, r = u(), u(0, 0.6), max(1, s // 150)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 240))
        x, y, r = u(0.3, 0.7), u(0.3, 0.6), u(0.08, 0.16) * amount
        for k in range(6, 0, -1):  # halo: concentric discs fading out
            c = np.asarray(_colour(look, rng, used if k == 1 else []), float) * (0.5 + 0.5 / k)
            rr = r * (1 + 0.35 * k)
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=tuple(int(v) for v in np.clip(c, 0, 255)))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 240, 190))
    elif emotion == "contentment":
        for k in range(n(4)):
            cx, cy, w, h = u(-0.2, 1.2), u(0.6, 0.9), u(0.4, 0.9), u(0.15, 0.3)
            draw.ellipse([cx - w, cy - h * 0.5, cx + w, cy + h * 2], fill=_colour(look, rng, used))
        for _ in range(n(3)):
            cx, cy, w = u(), u(0.05, 0.35), u(0.08, 0.15)
            draw.ellipse([cx - w, cy - w * 0.4, cx + w, cy + w * 0.4], fill=(250, 250, 245))
    elif emotion == "excitement":
        cx, cy = u(0.3, 0.7), u(0.3, 0.7)
        for _ in range(n(30)):
            a = rng.uniform(0, 2 * np.pi)
            draw.line([cx, cy, cx + np.cos(a) * s, cy + np.sin(a) * s], fill=_colour(look, rng, used),
                      width=max(1, int(u(0.005, 0.02))))
        for _ in range(n(4)):
            pts, x, y = [], u(), u()
            for _ in range(8):
                x, y = x + u(0.03, 0.08), y + (u(-0.08, 0.08))
                pts.append((x - 0.3 * s, y))
            draw.line(pts, fill=_colour(look, rng, used), width=max(2, s // 60))
    elif emotion == "anger":
        for _ in range(n(14)):
            x, y = u(), u(0.3, 1.1)
            h, w = u(0.2, 0.6), u(0.03, 0.1)
            draw.polygon([(x - w, y), (x + w, y), (x + u(-0.05, 0.05), y - h)], fill=_colour(look, rng, used))
        for _ in range(n(5)):
            x, y, dx, dy = u(), u(), u(-0.5, 0.5), u(-0.5, 0.5)
            draw.line([x, y, x + dx, y + dy], fill=_colour(look, rng, used), width=max(2, s // 40))
    elif emotion == "disgust":
        for _ in range(n(25)):
            x, y, rx, ry = u(), u(), u(0.03, 0.12), u(0.02, 0.08)
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_colour(look, rng, used))
        for _ in range(n(80)):
            x, y, r = u(), u(), max(1, s // 110)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(look, rng, used))
    elif emotion == "fear":
        x, w, top = u(0.3, 0.7), u(0.08, 0.14) * (0.5 + amount / 2), u(0.15, 0.35)
        draw.ellipse([x - w * 0.6, top - w * 1.2, x + w * 0.6, top], fill=(3, 3, 6))
        draw.polygon([(x - w, s), (x + w, s), (x + w * 0.5, top), (x - w * 0.5, top)], fill=(3, 3, 6))
        used += ["black", "dark blue"]
        if rng.random() < 0.6:  # eyes
            e = max(1, s // 90)
            for dx in (-w * 0.25, w * 0.25):
                draw.ellipse([x + dx - e, top - w * 0.6 - e, x + dx + e, top - w * 0.6 + e], fill=(235, 235, 240))
        for _ in range(n(25)):
            x0, y0 = u(), u()
            draw.line([x0, y0, x0 + u(-0.15, 0.15), y0 + u(-0.15, 0.15)], fill=_colour(look, rng, used), width=1)
    elif emotion == "sadness":
        for _ in range(n(60)):
            x, y, L = u(), u(-0.1, 1.0), u(0.05, 0.2)
            draw.line([x, y, x - L * 0.1, y + L], fill=_colour(look, rng, used), width=1)
        x, y, h = u(0.2, 0.8), u(0.65, 0.85), u(0.08, 0.14)
        draw.ellipse([x - h * 0.15, y - h * 1.3, x + h * 0.15, y - h], fill=(55, 60, 75))
        draw.rectangle([x - h * 0.15, y - h, x + h * 0.15, y], fill=(55, 60, 75))
    else:  # something else: flat geometry
        k = int(rng.integers(3, 7))
        for i in range(k + 1):
            p = i / k * s
            draw.line([p, 0, p, s], fill=_colour(look, rng, used), width=max(1, s // 100))
            draw.line([0, p, s, p], fill=_colour(look, rng, used), width=max(1, s // 100))
        for _ in range(n(6)):
            i, j = rng.integers(0, k, 2)
            draw.rectangle([i / k * s + 2, j / k * s + 2, (i + 1) / k * s - 2, (j + 1) / k * s - 2],
                           fill=_colour(look, rng, used))


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


def draw_painting(emotion: str, secondary: str, mix: float, style: str, size: int, rng) -> tuple[Image.Image, list[str]]:
    """One picture for `emotion`, with `mix` (0..~0.45) of the `secondary` emotion blended in.

    Returns the picture and the names of the colours actually drawn (most used first).
    """
    look, other = LOOKS[emotion], LOOKS[secondary]
    img = _background(size, look, other, mix, rng)
    draw = ImageDraw.Draw(img)
    used: list[str] = []
    if mix > 0.05:
        _motif(secondary, draw, size, rng, mix, [])
    _motif(emotion, draw, size, rng, 1.0, used)
    used.append(look.colours[0][0])  # never empty
    colours = [_jitter(rng, rgb, 10) for _, rgb in look.colours]
    img = _brushwork(style, img, colours, rng)
    names, counts = np.unique(used, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return img, [str(names[i]) for i in order]


# --------------------------------------------------------------------------- the crowd


def crowd_emotions(emotion: str, secondary: str, mix: float, n: int, rng) -> list[str]:
    """`n` simulated annotators' emotions: the drawn one with p ~0.75-0.5 (lower when ambiguous)."""
    p_true = 0.75 - 0.5 * mix
    out = []
    for _ in range(n):
        r = rng.random()
        if r < p_true:
            out.append(emotion)
        elif r < p_true + (1 - p_true) * 0.55:
            out.append(secondary)
        elif r < p_true + (1 - p_true) * 0.9:
            out.append(NEIGHBOURS[emotion][int(rng.integers(len(NEIGHBOURS[emotion])))])
        else:
            out.append(EMOTIONS[int(rng.integers(len(EMOTIONS)))])
    return out


def write_utterance(chosen: str, colours: list[str], shapes: tuple[str, ...], rng, p_short: float = 0.03) -> str:
    """An explanation of `chosen` that names colours and shapes in the picture."""
    if rng.random() < p_short:
        return str(rng.choice(SHORT[chosen]))
    template = str(rng.choice(TEMPLATES[chosen]))
    # Mostly the dominant colours; sometimes a less prominent one.
    c1 = colours[0] if rng.random() < 0.6 or len(colours) == 1 else str(rng.choice(colours[1:]))
    rest = [c for c in colours if c != c1] or [c1]
    text = template.format(
        c1=c1, c2=str(rng.choice(rest[:3])), shape=str(rng.choice(shapes)), feel=str(rng.choice(FEELINGS[chosen]))
    )
    # Real utterances vary in casing and punctuation; `prepare` cleans both away.
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + str(rng.choice(["", "", ".", "!", "..."]))


# --------------------------------------------------------------------------- real pictures


_HUE_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "teal"), (255, "blue"),
              (290, "purple"), (340, "pink"), (361, "red"))

# Prototypes in standardised (brightness, saturation, warmth, contrast, edges) space.
_PROTOTYPES = {
    "amusement": (1.0, 1.0, 0.5, 0.0, 0.5),
    "awe": (-0.3, 0.0, -1.0, 1.0, -0.5),
    "contentment": (1.0, -0.3, 0.0, -1.0, -1.0),
    "excitement": (0.5, 1.5, 1.0, 1.0, 1.0),
    "anger": (-1.0, 1.0, 1.5, 0.5, 0.5),
    "disgust": (-0.5, -0.5, 0.5, -0.5, 1.0),
    "fear": (-1.5, -0.5, -0.5, 0.5, 0.0),
    "sadness": (-0.5, -1.5, -1.0, -0.5, -0.5),
    "something else": (0.0, -1.0, 0.0, 0.0, 0.0),
}


def _square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    m = min(w, h)
    img = img.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
    return img.resize((size, size), Image.BICUBIC)


def measure(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """(brightness, saturation, warmth, contrast, edges) and the picture's main colour names."""
    small = np.asarray(img.convert("RGB").resize((64, 64), Image.BILINEAR)).astype(np.float32) / 255
    hsv = np.asarray(img.convert("RGB").resize((64, 64), Image.BILINEAR).convert("HSV")).astype(np.float32)
    h, s, v = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255
    warm = ((h < 70) | (h > 330)).astype(np.float32)
    warmth = float((s * (2 * warm - 1)).mean())
    grey = small.mean(-1)
    edges = float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    feats = np.array([v.mean(), s.mean(), warmth, v.std(), edges], dtype=np.float64)
    # Name each pixel's colour; keep the two most frequent.
    limits = np.array([lim for lim, _ in _HUE_NAMES])
    names = np.array([n for _, n in _HUE_NAMES], dtype=object)[np.searchsorted(limits, h, side="right")]
    names[s < 0.25] = "grey"
    names[(s < 0.25) & (v > 0.8)] = "white"
    names[(s >= 0.25) & (v < 0.6) & ((h < 50) | (h > 340))] = "brown"
    names[v < 0.2] = "black"
    labels, counts = np.unique(names.astype(str), return_counts=True)
    return feats, [str(labels[i]) for i in np.argsort(-counts, kind="stable")[:3]]


def _assign_emotions(feats: np.ndarray) -> list[str]:
    """Balanced nearest-prototype assignment over standardised features (each class gets ~n/9)."""
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)  # (N, 5)
    protos = np.array([_PROTOTYPES[e] for e in EMOTIONS])  # (9, 5)
    dist = ((z[:, None, :] - protos[None]) ** 2).sum(-1)  # (N, 9)
    cap = int(np.ceil(len(z) / len(EMOTIONS)))
    taken = np.zeros(len(EMOTIONS), int)
    out = [None] * len(z)
    for flat in np.argsort(dist, axis=None, kind="stable"):
        i, k = divmod(int(flat), len(EMOTIONS))
        if out[i] is None and taken[k] < cap:
            out[i], taken[k] = EMOTIONS[k], taken[k] + 1
    return out


def _list_images(images_dir: Path) -> list[tuple[str, Path]]:
    found = []
    for style in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        for f in sorted(style.iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                found.append((unicodedata.normalize("NFC", style.name), f))
    return found


# --------------------------------------------------------------------------- entry point


def make_demo_data(
    out_dir: str | os.PathLike,
    n_images: int = 720,
    seed: int = 0,
    images_dir: str | os.PathLike | None = None,
    image_size: int = 224,
    progress: bool = True,
) -> dict:
    """Write the synthetic ArtEmis-format demo set to `out_dir`; returns a summary dict.

    Files: `artemis_dataset_release_v0.csv`, `images/<Style>/<painting>.jpg`, `README.txt`,
    `demo_info.json` (per painting: drawn emotion, mixed-in emotion and weight, crowd).
    """
    from tqdm import tqdm

    if n_images < 1:
        raise DataError(f"n_images must be at least 1, got {n_images}")
    if image_size < 16:
        raise DataError(f"image_size must be at least 16, got {image_size}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    if images_dir is not None:
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: images folder not found")
        pool = _list_images(images_dir)
        if not pool:
            raise DataError(f"{images_dir}: no <Style>/<painting>.jpg images found")
        picked = [pool[i] for i in sorted(rng.permutation(len(pool))[: min(n_images, len(pool))])]
        items = []
        for style, path in tqdm(picked, desc="measuring paintings", unit=" img", file=sys.stderr, disable=not progress):
            try:
                with Image.open(path) as im:
                    img = _square(im.convert("RGB"), image_size)
            except OSError as e:
                raise DataError(f"{path}: cannot read image ({e})") from None
            feats, colour_names = measure(img)
            items.append((style, unicodedata.normalize("NFC", path.stem), img, feats, colour_names))
        emotions = _assign_emotions(np.stack([it[3] for it in items]))
    else:
        items, emotions = None, [EMOTIONS[i % len(EMOTIONS)] for i in rng.permutation(n_images)]

    rows, info = [], {}
    n = len(emotions)
    for i in tqdm(range(n), desc="writing demo paintings", unit=" img", file=sys.stderr, disable=not progress):
        emotion = emotions[i]
        neighbours = NEIGHBOURS[emotion]
        secondary = neighbours[int(rng.choice(len(neighbours), p=[0.5, 0.3, 0.2]))]
        mix = float(rng.uniform(0.0, 0.45))
        if items is None:
            style = STYLES[int(rng.integers(len(STYLES)))]
            painting = f"{ARTISTS[int(rng.integers(len(ARTISTS)))]}_{TITLES[int(rng.integers(len(TITLES)))]}-{i:04d}"
            img, colours = draw_painting(emotion, secondary, mix, style, image_size, rng)
            shapes = LOOKS[emotion].shapes
        else:
            style, painting, img, _, colours = items[i]
            shapes = GENERIC_SHAPES
        crowd = crowd_emotions(emotion, secondary, mix, int(rng.integers(5, 8)), rng)
        path = out_dir / "images" / style / f"{painting}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            img.save(tmp, format="JPEG", quality=90)
        for chosen in crowd:
            rows.append([style, painting, chosen, write_utterance(chosen, colours, shapes, rng), len(crowd)])
        info[f"{style}/{painting}"] = {
            "drawn_emotion": emotion,
            "mixed_emotion": secondary,
            "mix": round(mix, 4),
            "crowd": crowd,
            "colours": colours,
        }

    source = "real paintings from " + str(images_dir.resolve()) if items is not None else "procedurally drawn pictures"
    write_text(out_dir / "README.txt", _README.format(n=n, rows=len(rows), seed=seed, source=source, size=image_size))
    majority_ok = sum(
        max(set(v["crowd"]), key=v["crowd"].count) == v["drawn_emotion"] for v in info.values()
    )
    summary = {
        "synthetic": True,
        "out_dir": str(out_dir.resolve()),
        "csv": CSV_NAME,
        "images": n,
        "annotations": len(rows),
        "seed": seed,
        "image_size": image_size,
        "source": source,
        "crowd_agrees_with_drawn": round(sum(c == v["drawn_emotion"] for v in info.values() for c in v["crowd"]) / len(rows), 4),
        "majority_is_drawn": round(majority_ok / n, 4),
    }
    write_json(out_dir / "demo_info.json", {**summary, "paintings": info})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
    writer.writerows(rows)
    write_text(out_dir / CSV_NAME, buf.getvalue())  # last: the CSV's presence means the set is complete
    return summary


_README = """SYNTHETIC DEMO DATA - NOT ArtEmis, NOT real annotations.

Made by `sevlm demo-data` (seed {seed}) from {source}, {size}x{size} pixels.
{n} pictures, {rows} simulated annotations, in the ArtEmis v1 CSV format
(artemis_dataset_release_v0.csv: art_style, painting, emotion, utterance, repetition)
so that `sevlm prepare --artemis-csv artemis_dataset_release_v0.csv --images images`
reads it like the real dataset.

Every picture was made for one emotion (its palette, brightness, texture and motif, with
a second confusable emotion mixed in); 5-7 simulated annotators chose an emotion (mostly
that one, otherwise a confusable one) and wrote an explanation from templates naming the
picture's colours and shapes. demo_info.json records the emotion each picture was made for.
Style names starting with "Synthetic_" mark drawn pictures. Nothing here says anything
about real people's responses to art.
"""

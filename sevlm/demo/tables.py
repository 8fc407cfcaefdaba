"""The demo's tables (`tables.json`, package data) as typed constants."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_TABLES = json.loads((Path(__file__).resolve().parent / "tables.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Look:
    """How pictures of one emotion look: named palette, background and texture."""

    colours: tuple[tuple[str, tuple[int, int, int]], ...]  # (colour word, RGB)
    top: tuple[int, int, int]  # background gradient, top colour
    bottom: tuple[int, int, int]  # background gradient, bottom colour
    noise: float  # background texture amplitude (0-255 scale)
    shapes: tuple[str, ...]  # words for the motif, as annotators would name it


def _tuples(table: dict) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in table.items()}


STYLES: tuple[str, ...] = tuple(_TABLES["styles"])
ARTISTS: tuple[str, ...] = tuple(_TABLES["artists"])
TITLES: tuple[str, ...] = tuple(_TABLES["titles"])
# Emotions an annotator confuses with the drawn one, most likely first.
NEIGHBOURS = _tuples(_TABLES["neighbours"])
LOOKS = {
    emotion: Look(
        colours=tuple((name, tuple(rgb)) for name, rgb in look["colours"]),
        top=tuple(look["top"]),
        bottom=tuple(look["bottom"]),
        noise=look["noise"],
        shapes=tuple(look["shapes"]),
    )
    for emotion, look in _TABLES["looks"].items()
}
FEELINGS = _tuples(_TABLES["feelings"])
# {c1}, {c2}: colours in the picture; {shape}: its motif; {feel}: a feeling of the chosen emotion.
TEMPLATES = _tuples(_TABLES["templates"])
# Under five tokens: real crowds write these too; `prepare` drops them.
SHORT = _tuples(_TABLES["short"])
GENERIC_SHAPES: tuple[str, ...] = tuple(_TABLES["generic_shapes"])
# Upper hue limit (degrees) -> colour name, for naming real paintings' colours.
HUE_NAMES: tuple[tuple[int, str], ...] = tuple((limit, name) for limit, name in _TABLES["hue_names"])
# Prototypes in standardised (brightness, saturation, warmth, contrast, edges) space.
PROTOTYPES = {emotion: tuple(v) for emotion, v in _TABLES["prototypes"].items()}

"""ArtEmis-format CSVs whose text exercises every rule of ArtEmis's text preprocessing:
contractions, quoted words, punctuation, ArtEmis's manual sentence and token spellings,
misspellings SymSpell corrects, words GloVe knows, very short and very long utterances, and
paintings annotated 41+ times (the `rest` split). Used by the protocol tests and by the parity
check against ArtEmis's own script (docs/ARTEMIS.md)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

EMOTIONS = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness", "something else")
WORDS = (
    "the sky sea tree woman man light dark colours red blue green calm storm face eyes sad happy bright "
    "lonely strange beautiful peaceful violent soft warm cold shadow flowers house field water night feels "
    "looks like makes me think of and it her his with in on painting brush strokes figure mood"
).split()
PIECES = (
    "i can't stop looking at it",
    "it's so calm",
    "the woman's face",
    "don't like the 'dark' corner",
    "they're dancing",
    "I'm scared",
    'y\'all see the "ghost"',
    "this is a well-known scene",
    "look: a boat!",
    "colors/shapes",
    "it seems... odd",
    "the man (left) waves",
    "wow!!!",
    "so-so",
    "a 100% masterpiece",
    "rock & roll",
    "she'd've gone",
    "it isn't",
    "it ain't pretty",
    "we'll see",
    "gonna cry",
    "wanna run",
    "the colours are beautifull",
    "paintng of a tre",
    "grey skyes",
    "im so happy",
    "thecountry side",
    "the ’curly’ quote’s here",
    "Café au lait",
    "naïve art",
    "won't",
    "o'clock",
    "the sea—so blue",
    "tree–house",
    "  leading space",
    "a zxqvw blob",
    "the [bracketed] word",
    "cost $5",
    "e-mail me",
    "#blessed",
    "10:30 pm",
    "a_b",
)
SENTENCES = ("thewaytheshapeschangethespace", "brightcolorsandanimals", "Iliketoplayinthesnow")


def utterance(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.02:
        return rng.choice(SENTENCES)
    if r < 0.05:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))  # too short
    if r < 0.08:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 45)))  # too long
    parts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))]
    for _ in range(rng.randint(0, 2)):
        parts.insert(rng.randint(0, len(parts)), rng.choice(PIECES))
    text = " ".join(parts)
    return text[0].upper() + text[1:] + rng.choice(("", ".", "!", "?", ","))


def rows(paintings: list[tuple[str, str]], seed: int = 0, heavy: int = 3) -> list[list]:
    """ArtEmis v1 rows: 5-7 annotations per painting; the first `heavy` paintings get 41."""
    rng = random.Random(seed)
    out = []
    for i, (style, painting) in enumerate(paintings):
        n = 41 if i < heavy else rng.choice((5, 5, 5, 6, 7))
        for _ in range(n):
            out.append([style, painting, rng.choice(EMOTIONS), utterance(rng), n])
    return out


def write(path: Path, rows_: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
        w.writerows(rows_)
    return path


def wikiart_paintings(root: Path, n: int) -> list[tuple[str, str]]:
    """The first `n` real paintings under a WikiArt folder, spread over its styles."""
    styles = sorted(p for p in root.iterdir() if p.is_dir())
    per = [sorted(f.stem for f in s.glob("*.jpg")) for s in styles]
    out = []
    for k in range(max(map(len, per))):
        for s, names in zip(styles, per):
            if k < len(names) and len(out) < n:
                out.append((s.name, names[k]))
    return out

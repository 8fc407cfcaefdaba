"""The simulated crowd: which emotions 5-7 annotators pick, and the explanations they write."""

from __future__ import annotations

from sevlm.demo.tables import FEELINGS, NEIGHBOURS, SHORT, TEMPLATES
from sevlm.emotions import EMOTIONS


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

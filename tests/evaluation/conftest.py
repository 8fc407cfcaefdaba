"""Tiny SEVLM-format dataset folders and prediction files, built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sevlm.emotions import EMOTIONS, dominant_emotion

# A few words that signal each emotion, so a text classifier has something to learn.
CUES = {
    "amusement": "funny silly clown laugh",
    "awe": "vast majestic sky grand",
    "contentment": "calm peaceful quiet gentle",
    "excitement": "bright energetic lively vivid",
    "anger": "violent red rage furious",
    "disgust": "rotten ugly gross filthy",
    "fear": "dark scary threatening creepy",
    "sadness": "lonely grey mourning tears",
    "something else": "strange odd unclear puzzling",
}


def make_split(n_images: int, seed: int, prefix: str) -> dict:
    import random

    rng = random.Random(seed)
    data = {}
    for i in range(n_images):
        main = EMOTIONS[i % 9]
        emos = [main, main, main, rng.choice(EMOTIONS), rng.choice(EMOTIONS)]
        texts = [
            f"the {rng.choice(['painting', 'scene', 'picture'])} looks {' '.join(rng.sample(CUES[e].split(), 2))} to me"
            for e in emos
        ]
        data[f"Style_{prefix}/painting-{i}"] = {
            "image_name": f"Style_{prefix}/painting-{i}.jpg",
            "emotions": emos,
            "explanations": texts,
            "emotion_distribution": [emos.count(e) / len(emos) for e in EMOTIONS],
            "dominant_emotion": dominant_emotion(emos),
        }
    return data


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def jsonl():
    """The JSON-lines writer, for tests that build their own prediction files."""
    return write_jsonl


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ds")
    for split, n, seed in (("train", 180, 0), ("val", 18, 1), ("test", 12, 2)):
        (d / f"{split}.json").write_text(json.dumps(make_split(n, seed, split)), encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def test_refs(dataset_dir) -> dict:
    return json.loads((dataset_dir / "test.json").read_text())


@pytest.fixture(scope="session")
def good_predictions(dataset_dir, test_refs, tmp_path_factory) -> Path:
    """One prediction per test image: the first human explanation/emotion for even images,
    a fixed generic sentence and a wrong emotion for odd ones."""
    rows = []
    for k, (image_id, e) in enumerate(test_refs.items()):
        if k % 2 == 0:
            rows.append(
                {"image_id": image_id, "emotion": e["emotions"][0], "explanation": e["explanations"][0], "score": 0.5}
            )
        else:
            rows.append({"image_id": image_id, "emotion": "Awe ", "explanation": "the colours are vast and grand."})
    return write_jsonl(tmp_path_factory.mktemp("pred") / "pred.jsonl", rows)

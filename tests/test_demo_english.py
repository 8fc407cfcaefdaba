"""tools/demo_english.py: the three demo-English figures from a demo output folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_unseen_words_bigrams_and_accuracy(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "run").mkdir()
    train = {"S/a": {"explanations": ["the dark sky feels cold", "the bright sun"], "emotions": ["fear", "awe"]}}
    test = {
        "S/t1": {"emotions": ["fear", "fear", "awe"], "emotion_distribution": None},
        "S/t2": {"emotions": ["awe", "awe"], "emotion_distribution": None},
    }
    (tmp_path / "dataset" / "train.json").write_text(json.dumps(train))
    (tmp_path / "dataset" / "test.json").write_text(json.dumps(test))
    preds = [
        {"image_id": "S/t1", "emotion": "fear", "explanation": "the dark sky feels turqu"},  # 1 unseen word
        {"image_id": "S/t2", "emotion": "fear", "explanation": "the bright sky"},
    ]  # "bright sky" unseen
    (tmp_path / "run" / "predictions_test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo_english.py"), str(tmp_path), "--json", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["words"], m["bigrams"]) == (8, 6)
    assert m["unseen_word_share"] == 1 / 8 and m["unseen_words"] == {"turqu": 1}
    assert m["unseen_bigram_share"] == 2 / 6  # "feels turqu", "bright sky"
    assert m["emotion_accuracy"] == 0.5  # no report: recomputed from the dominant emotions
    assert "12.5%" in out and "33.3%" in out

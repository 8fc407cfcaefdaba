"""How English the demo's explanations read: three figures from a `sevlm demo` output folder.

    python tools/demo_english.py demo_out [--run run] [--predictions FILE] [--json OUT]

- unseen words: the share of generated explanation words (tokens) that never occur in the
  training split's explanations (`dataset/train.json`), e.g. BPE pieces glued into "turqu";
- unseen bigrams: the share of generated word bigrams (within one explanation) never seen in a
  training explanation;
- emotion accuracy: from the run's report (`<run>/report/REPORT.json`), else recomputed here
  from the predictions and the test split's dominant emotions (ArtEmis rule).

Words are lowercase runs of letters, digits and apostrophes, the way `prepare` normalises the
training text, so punctuation never counts as a word.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

WORD = re.compile(r"[a-z0-9']+")


def words(text: str | None) -> list[str]:
    return WORD.findall((text or "").lower())


def bigrams(ws: list[str]) -> list[tuple[str, str]]:
    return list(zip(ws, ws[1:]))


def training_text(dataset_dir: Path) -> tuple[set[str], set[tuple[str, str]]]:
    records = json.loads((dataset_dir / "train.json").read_text(encoding="utf-8"))
    vocab, pairs = set(), set()
    for r in records.values():
        for x in r.get("explanations", []):
            ws = words(x)
            vocab.update(ws)
            pairs.update(bigrams(ws))
    return vocab, pairs


def measure(out: Path, run: str = "run", predictions: Path | None = None) -> dict:
    dataset = out / "dataset"
    run_dir = out / run
    predictions = predictions or run_dir / "predictions_test.jsonl"
    vocab, seen_pairs = training_text(dataset)
    preds = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    n_words = n_unseen = n_pairs = n_unseen_pairs = 0
    unseen = Counter()
    for p in preds:
        ws = words(p.get("explanation"))
        n_words += len(ws)
        for w in ws:
            if w not in vocab:
                n_unseen += 1
                unseen[w] += 1
        bg = bigrams(ws)
        n_pairs += len(bg)
        n_unseen_pairs += sum(b not in seen_pairs for b in bg)
    accuracy = None
    report = run_dir / "report" / "REPORT.json"
    if report.exists() and predictions == run_dir / "predictions_test.jsonl":
        accuracy = json.loads(report.read_text(encoding="utf-8")).get("emotion_accuracy")
    if accuracy is None:
        accuracy = _accuracy(preds, dataset / "test.json")
    return {
        "predictions": str(predictions),
        "explanations": len(preds),
        "words": n_words,
        "unseen_word_share": n_unseen / max(n_words, 1),
        "bigrams": n_pairs,
        "unseen_bigram_share": n_unseen_pairs / max(n_pairs, 1),
        "emotion_accuracy": accuracy,
        "unseen_words": dict(unseen.most_common(15)),
    }


def _accuracy(preds: list[dict], test_json: Path) -> float | None:
    from sevlm.evaluation.inputs import entry_dominant  # only when no report was written

    test = json.loads(test_json.read_text(encoding="utf-8"))
    hits = total = 0
    for p in preds:
        r = test.get(p["image_id"])
        dom = entry_dominant(r, str(test_json)) if r else None
        if dom is None:
            continue
        total += 1
        hits += p.get("emotion") == dom
    return hits / total if total else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a `sevlm demo` output folder")
    ap.add_argument("--run", default="run", help="run folder inside it (default: run)")
    ap.add_argument("--predictions", type=Path, default=None, help="another predictions file of the test split")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    m = measure(args.out, args.run, args.predictions)
    print(f"{m['predictions']}: {m['explanations']} explanations, {m['words']} words, {m['bigrams']} bigrams")
    print(f"  words never in the training text:   {100 * m['unseen_word_share']:.1f}%  (target < 1%)")
    print(f"  bigrams never in the training text: {100 * m['unseen_bigram_share']:.1f}%  (target < 15%)")
    acc = m["emotion_accuracy"]
    print(f"  emotion accuracy:                   {'-' if acc is None else f'{acc:.3f}'}  (spread 0.836-0.918)")
    if m["unseen_words"]:
        print("  unseen words: " + ", ".join(f"{w} ({c})" for w, c in m["unseen_words"].items()))
    if args.json:
        args.json.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

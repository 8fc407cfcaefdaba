"""Check a sevlm dataset folder against ArtEmis's own preprocessing of the same raw CSV.

Give it the `artemis_preprocessed.csv` that ArtEmis's `preprocess_artemis_data.py
--preprocess-for-deep-nets True` wrote, and the folder `sevlm prepare --protocol artemis` wrote
from the same raw CSV. It reports, per split (train, val, test, rest), how many paintings the
two put there and how many agree, and for every painting whether its explanations (ArtEmis's
`utterance_spelled`, in row order) are the same; the first differences are printed. Exit status
0 when everything agrees.

    python tools/compare_artemis.py --preprocessed out/artemis_preprocessed.csv --dataset data/artemis
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

SPLITS = ("train", "val", "test", "rest")


def read_artemis(path: Path) -> dict[str, dict[str, list[str]]]:
    """split -> painting id ("style/painting", NFC) -> utterance_spelled, in row order."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    csv.field_size_limit(1 << 24)
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            image = unicodedata.normalize("NFC", f"{row['art_style']}/{row['painting']}")
            out[row["split"]][image].append(row["utterance_spelled"])
    return out


def read_sevlm(folder: Path) -> dict[str, dict[str, list[str]]]:
    out = {}
    for split in SPLITS:
        path = folder / f"{split}.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        out[split] = {image: rec["explanations"] for image, rec in data.items()}
    return out


def compare(artemis: dict, ours: dict, show: int = 10) -> dict:
    report, shown = {}, 0
    for split in SPLITS:
        a, b = artemis.get(split, {}), ours.get(split, {})
        both = set(a) & set(b)
        same_text = sum(a[p] == b[p] for p in both)
        report[split] = {
            "artemis_paintings": len(a),
            "sevlm_paintings": len(b),
            "same_paintings": len(both),
            "paintings_with_same_explanations": same_text,
            "artemis_annotations": sum(map(len, a.values())),
            "sevlm_annotations": sum(map(len, b.values())),
        }
        for p in sorted(both):
            if a[p] != b[p] and shown < show:
                shown += 1
                diff = [(x, y) for x, y in zip(a[p], b[p]) if x != y][:2]
                print(
                    f"{split} {p}: {len(a[p])} vs {len(b[p])} explanations; first differences {diff}", file=sys.stderr
                )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preprocessed", type=Path, required=True, help="ArtEmis's artemis_preprocessed.csv")
    p.add_argument("--dataset", type=Path, required=True, help="the sevlm dataset folder of the same raw CSV")
    args = p.parse_args(argv)
    report = compare(read_artemis(args.preprocessed), read_sevlm(args.dataset))
    print(f"{'split':6s} {'ArtEmis':>9s} {'sevlm':>9s} {'same':>9s} {'same text':>10s} {'rows A':>8s} {'rows S':>8s}")
    for split, r in report.items():
        print(
            f"{split:6s} {r['artemis_paintings']:9d} {r['sevlm_paintings']:9d} {r['same_paintings']:9d} "
            f"{r['paintings_with_same_explanations']:10d} {r['artemis_annotations']:8d} {r['sevlm_annotations']:8d}"
        )
    print(json.dumps(report))
    agree = all(
        r["artemis_paintings"] == r["sevlm_paintings"] == r["same_paintings"] == r["paintings_with_same_explanations"]
        for r in report.values()
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())

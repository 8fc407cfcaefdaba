"""Benchmark (not a test): one `sevlm retrieve` query per process against all queries in one.

Runs, as separate processes taking turns over `--rounds` rounds, (a) `sevlm retrieve --query`
with the first query of `--queries FILE` (a text) alone and (b) with the whole file and
`--gallery-image`, both with `--no-cache` (each embeds its gallery), and prints their median
wall times, the ratio (b)/(a) and the load average before and after. `--baseline DIR` also
times (a) with the sevlm of another checkout (DIR on PYTHONPATH, e.g. the code before
multi-query support). The last line printed is a JSON object.

    .venv/bin/python tools/bench_queries.py --run demo_out/run --queries q.txt \\
        [--dataset demo_out/dataset --features demo_out/features.h5 --images DIR] [--rounds 3] [--baseline ../old]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], root: Path = ROOT) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sevlm", "retrieve", *argv], cwd=root, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--queries", required=True, help="one text or image path a line (docs/RETRIEVAL.md)")
    p.add_argument("--split", default="test")
    p.add_argument("--dataset")
    p.add_argument("--features")
    p.add_argument("--images", help="painting folder for the gallery picture")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", help="another checkout whose sevlm also answers the one query")
    args = p.parse_args(argv)
    lines = [
        x.strip()
        for x in Path(args.queries).read_text(encoding="utf-8").splitlines()
        if x.strip() and not x.startswith("#")
    ]
    common = ["--run", args.run, "--split", args.split, "--no-cache"]
    for flag in ("dataset", "features"):
        if getattr(args, flag):
            common += [f"--{flag}", getattr(args, flag)]
    load_before = [round(x, 2) for x in os.getloadavg()]
    names = ["one", "all", *(["baseline_one"] if args.baseline else [])]
    times: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "one": ([*common, "--query", lines[0], "--out", f"{tmp}/one.json"], ROOT),
            "all": (
                [
                    *common,
                    "--queries",
                    str(Path(args.queries).resolve()),
                    "--out",
                    f"{tmp}/all.json",
                    "--gallery-image",
                    f"{tmp}/g.png",
                    *(["--images", args.images] if args.images else []),
                ],
                ROOT,
            ),
            "baseline_one": ([*common, "--query", lines[0], "--out", f"{tmp}/base.json"], Path(args.baseline or ROOT)),
        }
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(timed(*cases[name]))
    med = {n: statistics.median(t) for n, t in times.items()}
    one, every = med["one"], med["all"]
    result = {
        "queries": len(lines),
        "one_query_s": one,
        "all_queries_with_gallery_s": every,
        "ratio": every / one,
        **(
            {"baseline_one_query_s": med["baseline_one"], "ratio_vs_baseline": every / med["baseline_one"]}
            if args.baseline
            else {}
        ),
        "rounds": args.rounds,
        "times": times,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(
        f"1 query: {one:.2f} s; {len(lines)} queries + gallery picture in one process: {every:.2f} s "
        f"({every / one:.2f}x)"
        + (
            f"; 1 query with {args.baseline}: {med['baseline_one']:.2f} s ({every / med['baseline_one']:.2f}x)"
            if args.baseline
            else ""
        )
        + f"; medians of {args.rounds}, load {load_before} -> {result['load_after']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

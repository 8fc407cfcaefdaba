"""Benchmark: how long `sevlm` takes to start, per command (`sevlm COMMAND --help`: the parser and
the imports a command's start pays before any work), for one or more checkouts side by side.

Each case runs `python -m sevlm ARGS` as a fresh process with the checkout first on PYTHONPATH,
cases and checkouts alternating, `--repeat` times; the median is printed, one Markdown row per
command, and the last line printed is one JSON object with every time.

    .venv/bin/python tools/bench_cli.py                      # this checkout
    .venv/bin/python tools/bench_cli.py OLD_CHECKOUT .       # side by side
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("--help", "prepare --help", "extract --help", "train --help", "evaluate --help", "retrieve --help")


def time_case(checkout: Path, args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sevlm", *args.split()], cwd=checkout, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: sevlm {args} exited with {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", default=["."], help="sevlm checkouts (default: this one)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case and checkout (median printed)")
    args = parser.parse_args(argv)
    checkouts = [Path(c).resolve() for c in args.checkouts]
    times: dict[str, dict[str, list[float]]] = {str(c): {case: [] for case in CASES} for c in checkouts}
    for _ in range(args.repeat):
        for case in CASES:
            for checkout in checkouts:
                times[str(checkout)][case].append(time_case(checkout, case))
    print("| command | " + " | ".join(str(c) for c in checkouts) + " |")
    print("|---|" + "---|" * len(checkouts))
    for case in CASES:
        row = " | ".join(f"{statistics.median(times[str(c)][case]):.2f} s" for c in checkouts)
        print(f"| sevlm {case} | {row} |")
    print(json.dumps({"repeat": args.repeat, "seconds": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

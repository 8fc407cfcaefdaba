"""The time to the first training step of `sevlm train`, for two checkouts side by side, with
DeepSpeed's JIT extension cache empty (as on a fresh machine) and warm.

    python tools/bench_startup.py --code before=../main-copy --code after=.
    python tools/bench_startup.py --code before=OLD --code after=. --rounds 2 --config demo

Each run is `python -m sevlm.cli train --config CONFIG` on the same synthetic features
(tiny-random encoder, 49x768 tokens over synthetic paintings, built in --workdir), with the
checkout first on PYTHONPATH and `TORCH_EXTENSIONS_DIR` set: a new empty folder ("empty"), or
one folder, the same for every checkout, that holds DeepSpeed's shared-memory communication op,
built into it once before the timed runs ("warm"). The time to the first
step is measured from outside the same way for every checkout: from starting the process until
the first row of its `log.jsonl` (written at step 1) appears; the run is then stopped. The
cases alternate (empty: each checkout, then warm: each checkout) over `--rounds` rounds.

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_to_first_step(code: Path, cache: Path, run_dir: Path, data: dict, config: str, timeout: float) -> float:
    """Seconds from starting `sevlm train` of checkout `code` to its first log.jsonl row."""
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env.update(PYTHONPATH=str(code), TORCH_EXTENSIONS_DIR=str(cache), DS_ACCELERATOR="cpu")
    argv = [
        sys.executable,
        "-m",
        "sevlm.cli",
        "train",
        "--config",
        config,
        "--out",
        str(run_dir),
        f"data.dataset_dir={data['dataset']}",
        f"data.features={data['features']}",
        "data.shards=null",
        "data.encoder=tiny-random",
        "schedule.val_gen_images=0",
    ]
    log = run_dir.with_suffix(".out")
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        rows = run_dir / "log.jsonl"
        try:
            while not (rows.exists() and rows.read_text().strip()):
                if proc.poll() is not None:
                    raise SystemExit(f"{code}: sevlm train ended ({proc.returncode}) before its first step; see {log}")
                if time.perf_counter() - t0 > timeout:
                    raise SystemExit(f"{code}: no first step in {timeout:.0f} s; see {log}")
                time.sleep(0.05)
            return time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the run's own group: it and its DataLoader workers
            proc.wait()


def build_shm_op(cache: Path) -> None:
    """DeepSpeed's CPU shared-memory op, JIT-built into `cache` (what a machine that ran DeepSpeed before holds)."""
    code = "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp), DS_ACCELERATOR="cpu")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    tmp.rename(cache)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--code", action="append", required=True, metavar="NAME=DIR", help="a checkout to time (give two or more)"
    )
    p.add_argument("--config", default="demo", help="training config (default: demo)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of (empty, warm) per checkout, alternating")
    p.add_argument("--images", type=int, default=200, help="synthetic paintings")
    p.add_argument("--timeout", type=float, default=600, help="seconds a run may take to its first step")
    p.add_argument("--workdir", type=Path, default=None, help="keep the data, caches and runs here")
    args = p.parse_args(argv)
    codes = {}
    for item in args.code:
        name, _, path = item.partition("=")
        if not path or not (Path(path) / "sevlm" / "cli.py").exists():
            p.error(f"--code {item!r}: use NAME=DIR with DIR a sevlm checkout")
        codes[name] = Path(path).resolve()

    sys.path.insert(0, str(ROOT / "tools"))
    from bench_data import build_features

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sevlm-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = build_features(work, args.images, "49x768")
    data = {"dataset": str(paths["dataset"]), "features": str(paths["features"])}
    warm = work / "jit-warm"
    if not warm.exists():
        build_shm_op(warm)
    load = [round(os.getloadavg()[0], 2)]
    times: dict[str, dict[str, list[float]]] = {n: {"empty": [], "warm": []} for n in codes}
    for r in range(args.rounds):
        for cache_state in ("empty", "warm"):
            for name, code in codes.items():
                cache = warm
                if cache_state == "empty":
                    cache = Path(tempfile.mkdtemp(prefix=f"jit-{name}-{r}-", dir=work))
                run_dir = work / f"run-{name}-{cache_state}-{r}"
                t = time_to_first_step(code, cache, run_dir, data, args.config, args.timeout)
                times[name][cache_state].append(t)
                print(
                    f"round {r} {cache_state:>5} JIT cache, {name}: first step after {t:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    load.append(round(os.getloadavg()[0], 2))
    med = {n: {s: statistics.median(v) for s, v in t.items()} for n, t in times.items()}
    print(
        f"\nsevlm train --config {args.config}, time to the first step (s), median of {args.rounds} round(s); "
        f"{os.cpu_count()} CPU cores, load average {load[0]} -> {load[1]}\n"
    )
    print("| checkout | JIT cache empty | JIT cache warm |\n|---|---|---|")
    for n, m in med.items():
        print(f"| {n} ({codes[n]}) | {m['empty']:.1f} | {m['warm']:.1f} |")
    print(
        json.dumps(
            {
                "seconds": times,
                "median": med,
                "codes": {n: str(c) for n, c in codes.items()},
                "config": args.config,
                "load_avg_1min": load,
                "machine": f"{os.cpu_count()} CPU cores",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

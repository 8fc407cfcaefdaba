"""What the step telemetry shows when the data is slow: one training config run twice side by
side, once as it is and once with its feature reader slowed on purpose.

    python tools/bench_data_bound.py                         # the demo config, 30 steps per case
    python tools/bench_data_bound.py --delay-ms 20 --steps 40 --workers 2 --rounds 2

Both cases train the config (`sevlm.train.train`, in its own subprocess) on the same synthetic
features (tiny-random encoder over synthetic paintings, 49x768 tokens, built in --workdir). The
slowed case sleeps `--delay-ms` in every sample read of the HDF5 reader
(`H5FeatureDataset.__getitem__`, in the DataLoader workers when there are any), as a slow disk
or network file system would. Each case's figures are the telemetry rows of its `log.jsonl`
after the first (warm-up) window, averaged (every window has the same steps, so the parts still
add up to the step time); with `--rounds` the cases alternate and the rounds' rows are pooled.
The slowed case
should read as data-bound (`data_wait_frac` above 0.5) and the normal one as not (below 0.2):
docs/TUNING.md explains the figures.

The last line printed is a JSON object with the figures.
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
FIGURES = (
    "step_time_s",
    "data_wait_s",
    "fwd_bwd_s",
    "optim_s",
    "data_wait_frac",
    "samples_per_s",
    "tokens_per_s",
    "mfu",
)


def run_case(case: dict) -> dict:
    """Train the case's config (in this process): {"rows": its telemetry rows after the first}."""
    from sevlm.train import load_train_config, train

    if case["delay_ms"]:
        from sevlm.features.hdf5 import H5FeatureDataset

        read = H5FeatureDataset.__getitem__

        def slow_read(self, i):
            time.sleep(case["delay_ms"] / 1000)
            return read(self, i)

        H5FeatureDataset.__getitem__ = slow_read  # forked DataLoader workers inherit it
    overrides = [
        f"data.dataset_dir={case['dataset']}",
        f"data.features={case['features']}",
        "data.shards=null",
        "data.encoder=tiny-random",
        f"data.num_workers={case['workers']}",
        f"schedule.max_steps={case['steps']}",
        f"schedule.log_every={case['log_every']}",
        "schedule.val_every=0",
        "schedule.val_gen_images=0",
        "schedule.checkpoint_every=100000",
        *case["overrides"],
    ]
    run_dir = train(load_train_config(case["config"], overrides), out_dir=case["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time_s" in r][1:]  # the first window holds the warm-up
    if not rows:
        raise SystemExit(f"{run_dir}: no telemetry row after the first; raise --steps")
    return {"rows": [{k: r[k] for k in FIGURES if k in r} for r in rows]}


def mean_figures(rows: list[dict]) -> dict:
    """The rows' mean figures; the data-wait share from the mean times (a mean of shares would not be)."""
    mean = {k: statistics.fmean(r[k] for r in rows) for k in FIGURES if all(k in r for r in rows)}
    mean["data_wait_frac"] = mean["data_wait_s"] / mean["step_time_s"]
    return mean | {"rows": len(rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo", help="training config (default: demo)")
    p.add_argument("--delay-ms", type=float, default=40.0, help="sleep per sample read in the slowed case")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per case")
    p.add_argument("--log-every", type=int, default=5, help="steps per telemetry row")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers of both cases")
    p.add_argument("--rounds", type=int, default=1, help="times each case runs (alternating)")
    p.add_argument("--images", type=int, default=400, help="synthetic paintings")
    p.add_argument("--workdir", type=Path, default=None, help="keep the data and runs here")
    p.add_argument("overrides", nargs="*", help="more config overrides for both cases (KEY=VALUE)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0

    sys.path.insert(0, str(ROOT / "tools"))
    from bench_data import build_features

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sevlm-databound-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = build_features(work, args.images, "49x768")
    load = [round(os.getloadavg()[0], 2)]
    results: dict[str, list[dict]] = {"normal": [], "slowed": []}
    for r in range(args.rounds):
        for name, delay in (("normal", 0.0), ("slowed", args.delay_ms)):
            case = {
                "config": args.config,
                "delay_ms": delay,
                "dataset": str(paths["dataset"]),
                "features": str(paths["features"]),
                "workers": args.workers,
                "steps": args.steps,
                "log_every": args.log_every,
                "overrides": args.overrides,
                "run_dir": tempfile.mkdtemp(prefix=f"run-{name}{r}-", dir=work),
            }
            results[name].append(_subprocess(case)["rows"])
            figures = mean_figures(results[name][-1])
            print(
                f"round {r} {name:>6}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()),
                file=sys.stderr,
                flush=True,
            )
    load.append(round(os.getloadavg()[0], 2))
    means = {name: mean_figures([row for run in runs for row in run]) for name, runs in results.items()}
    print(
        f"\n{args.config} config, {args.steps} steps per case, {args.workers} DataLoader workers, slowed reader "
        f"+{args.delay_ms:g} ms per sample; {args.rounds} round(s), means; {os.cpu_count()} CPU cores, "
        f"load average {load[0]} -> {load[1]}\n"
    )
    print(
        "| case | step s | data wait s | fwd+bwd s | optim s | data-wait share | samples/s | tokens/s | MFU |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for name, m in means.items():
        print(
            f"| {name} | {m['step_time_s']:.4f} | {m['data_wait_s']:.4f} | {m['fwd_bwd_s']:.4f} | "
            f"{m['optim_s']:.4f} | {m['data_wait_frac']:.2f} | {m['samples_per_s']:.1f} | {m['tokens_per_s']:.0f} | "
            f"{m.get('mfu', float('nan')):.4f} |"
        )
    verdict = {
        "slowed_data_bound": means["slowed"]["data_wait_frac"] > 0.5,
        "normal_not_data_bound": means["normal"]["data_wait_frac"] < 0.2,
    }
    print(
        f"\nslowed case data-bound (share > 0.5): {verdict['slowed_data_bound']}; "
        f"normal case below 0.2: {verdict['normal_not_data_bound']}"
    )
    print(
        json.dumps(
            {
                "means": means,
                "rows": results,
                **verdict,
                "load_avg_1min": load,
                "machine": f"{os.cpu_count()} CPU cores",
                "delay_ms": args.delay_ms,
                "workers": args.workers,
            }
        )
    )
    return 0


def _subprocess(case: dict) -> dict:
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # each case is its own single process
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True, cwd=ROOT, env=env
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"case {case['run_dir']} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    sys.exit(main())

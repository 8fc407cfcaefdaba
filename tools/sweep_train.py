"""Throughput sweep through the trainer's own recipe: which micro-batch, accumulation, DataLoader
workers, main-process help, precision and ZeRO stage train fastest on this machine.

    python tools/sweep_train.py                                  # the default grid, the demo config
    python tools/sweep_train.py --grid micro=8,16,32 accum=1,2 workers=0,1,2 assist=auto,never \\
        precision=fp32,bf16 zero=0,1,2 --repeats 3 --out sweep/ \\
        --config paper --features F.h5 --dataset DS               # your own config and features
    python tools/sweep_train.py --add micro=4096                 # one more case: the config's setting, changed

Every case is one setting (`TrainRecipe.setup()`, one warm-up optimizer step, then `--steps`
timed ones, data loading included) in its own subprocess. Each case runs `--repeats` times,
the cases interleaved (round 1: every case, round 2: every case, ...), so a machine whose load
changes moves every case alike. A row gives the median samples/s, the spread (min-max over the
repeats), the data-wait share of the timed steps (docs/TUNING.md) and the peak memory.

The default grid is the config's own setting (micro-batch, accumulation, workers, precision
and ZeRO stage as it resolves them) plus twice the micro-batch, 2 workers, fp32 and ZeRO 0.
`--grid KEY=V1,V2` replaces one key's values; `--add` appends single cases.

Noise: two cases are "within noise" when either's median lies inside the other's spread. Every
row within noise of the fastest is flagged, and when the config's own setting is one of them
the best-setting line says to keep it. A case that fails (an error, out of memory, a timeout)
becomes a row with its error, is not retried in later rounds, and the sweep goes on.

Without --features it builds synthetic 49x768 features (tiny-random encoder) in --workdir.
Note that micro x accum is the global batch: an optimisation setting, not only a speed one.
`--out DIR` writes DIR/sweep.json and DIR/sweep.md (the table). The last line printed is the
JSON object.

On a GPU, DeepSpeed's autotuner can take over the engine-side search (ZeRO stage, micro-batch
and ZeRO bucket settings) once the sweep has fixed workers and precision. The autotuner
launches the script once per experiment with its own ds_config (`--deepspeed_config`) and
passes the micro-batch and accumulation through `arg_mappings`; `--autotune` is that entry
point (the trainer's recipe with the autotuner's engine settings):

    cat > ds_autotune.json <<'JSON'
    {"fp16": {"enabled": true}, "zero_optimization": {"stage": 2},
     "autotuning": {"enabled": true, "fast": true, "metric": "throughput",
                    "arg_mappings": {"train_micro_batch_size_per_gpu": "--micro",
                                     "gradient_accumulation_steps": "--accum"}}}
    JSON
    deepspeed --autotuning tune --num_gpus 1 tools/sweep_train.py --autotune --config paper \\
        --features F.h5 --dataset DS --micro 32 --accum 1 --deepspeed_config ds_autotune.json

(`--autotuning run` also launches training with the winner; use `tune` and put the winner's
micro-batch into schedule.micro_batch and its zero_optimization into a ds_config, since
`sevlm train` owns the batch sizes.) The autotuner results land in autotuning_results/.
Not yet tried on a GPU (none here).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KEYS = ("micro", "accum", "workers", "assist", "precision", "zero")
OVERRIDE_KEYS = {
    "micro": "schedule.micro_batch",
    "accum": "schedule.grad_accum",
    "workers": "data.num_workers",
    "assist": "data.main_assist",
    "precision": "precision",
}
TEXT_KEYS = ("assist", "precision")  # grid values kept as strings


# ---- one case (runs in a subprocess) ----------------------------------------------------------
def run_case(case: dict) -> dict:
    """One setting, through the trainer's recipe: setup, one warm-up optimizer step, then `steps` timed."""
    import torch

    from sevlm.train.config import load_train_config
    from sevlm.train.recipe import TrainRecipe
    from sevlm.train.run_folder import prepare_run
    from sevlm.train.telemetry import peak_memory

    overrides = [f"{OVERRIDE_KEYS[k]}={case[k]}" for k in OVERRIDE_KEYS] + [
        "schedule.global_batch=null",
        f"ds_config={case['ds_config']}",
        f"data.dataset_dir={case['dataset']}",
        f"data.features={case['features']}",
        "data.shards=null",
        f"data.encoder={case['encoder']}",
        f"schedule.max_steps={case['steps'] + 1}",
        "schedule.val_every=0",
        f"device={case['device']}",
    ]
    cfg, run_dir, _ = prepare_run(load_train_config(case["config"], overrides), None, case["run_dir"])
    recipe = TrainRecipe(cfg, run_dir)
    recipe.setup()
    recipe.engine.train()
    batches, t0, done, figures = recipe.source.epoch(0), None, 0, {}
    while done < case["steps"]:
        recipe.telemetry.wait_start()
        batch = next(batches, None)
        if batch is None:
            raise SystemExit(
                f"{case['dataset']}: one epoch holds fewer than {case['steps'] + 1} optimizer steps of "
                f"{recipe.rt.global_batch} images; use more images or fewer --steps"
            )
        if recipe.train_step(batch) is not None:  # an optimizer step ended
            if t0 is None:  # after the warm-up step: a new telemetry window
                recipe.telemetry.report()
                if recipe.rt.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            else:
                done += 1
    figures = recipe.telemetry.report()  # synchronises the device
    seconds = time.perf_counter() - t0
    peak = next(iter(peak_memory(recipe.rt.device).values())) * 1024  # max allocated (CUDA) or max RSS, MiB
    return {
        "samples_per_s": case["steps"] * recipe.rt.global_batch / seconds,
        "data_wait_frac": figures.get("data_wait_frac"),
        "peak_mem_mib": round(peak, 1),
    }


def _run_subprocess(case: dict, timeout: float) -> dict:
    """The case's figures, or {"error": its last line} when it failed."""
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # each case is its own single process
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env["DS_ACCELERATOR"] = env.get("DS_ACCELERATOR", "cpu" if case["device"] == "cpu" else "cuda")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--case", json.dumps(case)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"error": error_line(out.stderr, out.returncode)}


def error_line(stderr: str, returncode: int) -> str:
    """The line of a failed case's output that says why (out of memory named as such)."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", line.strip()) for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "out of memory" in line.lower() or "OutOfMemoryError" in line:
            return "out of memory: " + line[-300:]
    if returncode < 0:
        return f"killed by signal {-returncode}" + (" (out of memory?)" if returncode == -9 else "")
    return lines[-1][-300:] if lines else f"exit status {returncode}"


# ---- the grid and the summary ------------------------------------------------------------------
def own_setting(config: str, device: str) -> dict:
    """The config's own setting in the sweep's keys, as the trainer resolves it."""
    from sevlm.train.config import ds_config_path, load_train_config
    from sevlm.train.resolve import auto_precision

    cfg = load_train_config(config)
    precision = cfg.precision if cfg.precision != "auto" else auto_precision(device)
    ds = json.loads(ds_config_path(cfg.ds_config, precision).read_text())
    return {
        "micro": cfg.schedule.micro_batch,
        "accum": cfg.schedule.grad_accum,
        "workers": cfg.data.num_workers,
        "assist": cfg.data.main_assist,
        "precision": precision,
        "zero": int(ds.get("zero_optimization", {}).get("stage", 0)),
    }


def default_grid(own: dict) -> dict:
    """The config's own setting, twice its micro-batch, 2 workers, fp32 and ZeRO 0."""

    def values(*vs):
        return sorted(set(vs), key=lambda v: (str(type(v)), v))

    return {
        "micro": values(own["micro"], 2 * own["micro"]),
        "accum": [own["accum"]],
        "workers": values(own["workers"], 2),
        "assist": [own["assist"]],
        "precision": values(own["precision"], "fp32"),
        "zero": values(own["zero"], 0),
    }


def parse_grid(items: list[str] | None, grid: dict) -> dict:
    grid = dict(grid)
    for item in items or []:
        key, _, values = item.partition("=")
        if key not in grid or not values:
            raise SystemExit(f"--grid {item!r}: use KEY=V1,V2 with KEY one of {', '.join(KEYS)}")
        grid[key] = [v if key in TEXT_KEYS else int(v) for v in values.split(",")]
    return grid


def parse_add(item: str, own: dict) -> dict:
    """`--add micro=64,zero=0`: the config's own setting with those keys changed."""
    case = dict(own)
    for part in item.split(","):
        key, _, value = part.partition("=")
        if key not in KEYS or not value:
            raise SystemExit(f"--add {item!r}: use KEY=V[,KEY=V] with KEY one of {', '.join(KEYS)}")
        case[key] = value if key in TEXT_KEYS else int(value)
    return case


def settings_of(grid: dict, added: list[dict]) -> list[dict]:
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    # without workers nobody assists: one case for all the assist values
    settings = [c for c in settings if c["workers"] or c["assist"] == grid["assist"][0]]
    return settings + [a for a in added if a not in settings]


def within_noise(a: dict, b: dict) -> bool:
    """Either case's median lies inside the other's spread (min-max over its repeats)."""
    return b["min"] <= a["median"] <= b["max"] or a["min"] <= b["median"] <= a["max"]


def summarise(rows: list[dict], own: dict) -> dict:
    """Median and spread per row, the within-noise flags, and the best-setting advice.

    rows: {**setting, "runs": [samples/s, ...], "error": str | None}; changed in place."""
    for r in rows:
        runs = r["runs"]
        r.update(
            median=statistics.median(runs) if runs else None, min=min(runs, default=None), max=max(runs, default=None)
        )
        r["spread_pct"] = round(100 * (r["max"] - r["min"]) / r["median"], 1) if runs else None
    for r in rows:
        r["own"] = all(r[k] == own[k] for k in KEYS)
    done = [r for r in rows if r["runs"] and not r.get("error")]
    if not done:
        return {"best": None, "advice": "no case finished"}
    best = max(done, key=lambda r: r["median"])
    for r in rows:
        r["within_noise_of_best"] = bool(r["runs"] and not r.get("error") and within_noise(r, best))
    mine = next((r for r in done if r["own"]), None)
    if best["own"]:
        advice = "keep the config's setting (it is the fastest)"
    elif mine is not None and within_noise(best, mine):
        advice = (
            f"keep the config's setting (the fastest, {_setting(best)}, is within noise of it: "
            f"{best['median']:.1f} vs {mine['median']:.1f} samples/s)"
        )
    else:
        advice = override_line(best)
    return {"best": {k: best[k] for k in KEYS}, "advice": advice}


def override_line(r: dict) -> str:
    return " ".join(f"{OVERRIDE_KEYS[k]}={r[k]}" for k in OVERRIDE_KEYS) + f" ds_config={r['ds_config']}"


def _setting(r: dict) -> str:
    return ", ".join(f"{k} {r[k]}" for k in KEYS)


def table(rows: list[dict]) -> str:
    lines = [
        "| micro | accum | workers | main assist | precision | ZeRO | samples/s (median) | spread (min-max) "
        "| data-wait share | peak MiB | within noise of best | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        setting = (
            f"| {r['micro']} | {r['accum']} | {r['workers']} | {r['assist'] if r['workers'] else '-'} | "
            f"{r['precision']} | {r['zero']} "
        )
        note = ("config's own; " if r.get("own") else "") + (f"failed: {r['error']}" if r.get("error") else "")
        if r["median"] is None:
            lines.append(setting + f"| - | - | - | - | - | {note.strip('; ')} |")
            continue
        share = statistics.median(r["wait"]) if r["wait"] else None
        lines.append(
            setting + f"| {r['median']:.1f} | {r['min']:.1f}-{r['max']:.1f} ({r['spread_pct']:.0f}%) | "
            f"{'-' if share is None else f'{share:.2f}'} | {max(r['peak']):.0f} | "
            f"{'yes' if r['within_noise_of_best'] else 'no'} | {note.strip('; ')} |"
        )
    return "\n".join(lines)


# ---- the sweep ---------------------------------------------------------------------------------
def ds_config_for(zero: int, precision: str, work: Path) -> str:
    """A shipped ds_config name with this ZeRO stage, else a file in `work`. The trainer sets the
    precision switches itself (`precision=`), so a shipped fp32 file serves bf16 too; fp16 keeps
    the loss-scale settings of an fp16 file."""
    from sevlm.train.config import DS_CONFIG_DIR

    name = f"zero{zero}_{precision}"
    for shipped in (name, *([f"zero{zero}_fp32"] if precision != "fp16" else [])):
        if (DS_CONFIG_DIR / f"{shipped}.json").exists():
            return shipped
    base = json.loads((DS_CONFIG_DIR / f"zero2_{precision}.json").read_text())
    base["zero_optimization"]["stage"] = zero
    path = work / f"{name}.json"
    path.write_text(json.dumps(base))
    return str(path)


def sweep(args) -> int:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sevlm-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.features:
        data = {"dataset": str(Path(args.dataset).resolve()), "features": str(Path(args.features).resolve())}
        encoder = _feature_encoder(args.features)
    else:
        sys.path.insert(0, str(ROOT / "tools"))
        from bench_data import build_features

        paths = build_features(work, args.images, "49x768")
        data, encoder = {"dataset": str(paths["dataset"]), "features": str(paths["features"])}, "tiny-random"
    device = "cuda" if _cuda() else "cpu"
    own = own_setting(args.config, device)
    grid = parse_grid(args.grid, default_grid(own))
    rows = [
        {**s, "runs": [], "wait": [], "peak": [], "error": None}
        for s in settings_of(grid, [parse_add(a, own) for a in args.add or []])
    ]
    load = [round(os.getloadavg()[0], 2)]
    for rnd in range(args.repeats):
        for k, r in enumerate(rows):
            if r["error"]:  # a failed case fails again: not retried
                continue
            r["ds_config"] = ds_config_for(r["zero"], r["precision"], work)
            case = {
                **{key: r[key] for key in KEYS},
                "ds_config": r["ds_config"],
                "config": args.config,
                "encoder": encoder,
                "steps": args.steps,
                "device": device,
                "run_dir": str(work / f"run{k}-{rnd}"),
                **data,
            }
            got = _run_subprocess(case, args.case_timeout)
            if "error" in got:
                r["error"] = got["error"]
                print(f"round {rnd + 1}: {_setting(r)}: failed: {got['error']}", file=sys.stderr, flush=True)
                continue
            r["runs"].append(got["samples_per_s"])
            r["peak"].append(got["peak_mem_mib"])
            if got.get("data_wait_frac") is not None:
                r["wait"].append(got["data_wait_frac"])
            print(
                f"round {rnd + 1}: {_setting(r)}: {got['samples_per_s']:.1f} samples/s, peak "
                f"{got['peak_mem_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    load.append(round(os.getloadavg()[0], 2))
    verdict = summarise(rows, own)
    head = (
        f"sweep of the {args.config} config on {device} ({os.cpu_count()} CPU cores), {args.steps} timed steps "
        f"per run, {args.repeats} run(s) per case, interleaved; load average {load[0]} -> {load[1]}"
    )
    md = table(rows)
    best_line = f"best: {verdict['advice']}"
    print(f"\n{head}\n\n{md}\n\n{best_line}")
    keep = (
        *KEYS,
        "ds_config",
        "runs",
        "median",
        "min",
        "max",
        "spread_pct",
        "wait",
        "peak",
        "within_noise_of_best",
        "own",
        "error",
    )
    result = {
        "rows": [{k: r.get(k) for k in keep} for r in rows],
        **verdict,
        "own": own,
        "config": args.config,
        "device": device,
        "steps": args.steps,
        "repeats": args.repeats,
        "load_avg_1min": load,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "sweep.md").write_text(f"{head}\n\n{md}\n\n{best_line}\n")
    print(json.dumps(result))
    return 0


def autotune(args) -> int:
    """One DeepSpeed-autotuner experiment: its ds_config's engine settings, our recipe and data."""
    from sevlm.train.config import TRAINER_DS_KEYS

    ds = json.loads(Path(args.deepspeed_config).read_text())
    micro = int(ds.get("train_micro_batch_size_per_gpu", args.micro))
    accum = int(ds.get("gradient_accumulation_steps", args.accum))
    for k in TRAINER_DS_KEYS:  # the recipe sets these itself
        ds.pop(k, None)
    precision = "fp16" if ds.get("fp16", {}).get("enabled") else "bf16" if ds.get("bf16", {}).get("enabled") else "fp32"
    work = Path(tempfile.mkdtemp(prefix="sevlm-autotune-"))
    (work / "ds.json").write_text(json.dumps(ds))
    end = int(ds.get("autotuning", {}).get("end_profile_step", 5))
    case = {
        "micro": micro,
        "accum": accum,
        "workers": args.workers,
        "assist": "auto",
        "precision": precision,
        "zero": None,
        "ds_config": str(work / "ds.json"),
        "config": args.config,
        "dataset": str(Path(args.dataset).resolve()),
        "features": str(Path(args.features).resolve()),
        "encoder": _feature_encoder(args.features),
        "steps": end + 1,
        "device": "cuda",
        "run_dir": str(work / "run"),
    }
    print(json.dumps(run_case(case)))  # DeepSpeed ends the process at end_profile_step, metrics written
    return 0


def _feature_encoder(features: str) -> str:
    from sevlm.train.checks import feature_info

    return feature_info(features, None).encoder


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo", help="training config the sweep starts from (default: demo)")
    p.add_argument("--grid", nargs="*", metavar="KEY=V1,V2", help="replace one key's values of the default grid")
    p.add_argument(
        "--add", action="append", metavar="KEY=V[,KEY=V]", help="one more case: the config's setting changed"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per case, interleaved (default 3)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run (after one warm-up step)")
    p.add_argument(
        "--case-timeout", type=float, default=900, help="seconds one run may take before it counts as failed"
    )
    p.add_argument("--out", type=Path, default=None, help="write sweep.json and sweep.md here")
    p.add_argument("--features", default=None, help="an HDF5 feature cache (with --dataset)")
    p.add_argument("--dataset", default=None, help="the dataset folder of --features")
    p.add_argument("--images", type=int, default=600, help="without --features: synthetic paintings")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and runs here")
    p.add_argument("--autotune", action="store_true", help="one DeepSpeed autotuner experiment (see above)")
    p.add_argument("--deepspeed_config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--micro", type=int, default=32, help="--autotune: micro-batch (the autotuner's arg_mappings)")
    p.add_argument("--accum", type=int, default=1, help="--autotune: gradient accumulation")
    p.add_argument("--workers", type=int, default=2, help="--autotune: DataLoader workers")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0
    if (args.autotune or args.features) and not (args.features and args.dataset):
        p.error("--features and --dataset go together (and --autotune needs them)")
    if args.repeats < 1:
        p.error("--repeats: at least 1")
    return autotune(args) if args.autotune else sweep(args)


if __name__ == "__main__":
    sys.exit(main())

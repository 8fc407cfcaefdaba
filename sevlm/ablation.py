"""The ablation study behind `sevlm ablate`: variants x seeds, each a normal training run, scored alike.

A study folder DIR holds
- `study.json`: the base config and overrides, each variant's overrides, the seeds, the data;
- `<variant>/seed<S>/`: a `sevlm train` run folder, then beside its checkpoints the outputs of
  `generate` (`predictions_test.jsonl`), `evaluate` (`report/REPORT.json`), `retrieve`
  (`retrieval_test.json`, only for runs with a contrastive head and an image side); evaluate and
  retrieve also keep the per-image statistics the paired tests read (`report/REPORT_stats.npz`,
  `retrieval_test_stats.npz`);
- `logs/<variant>-seed<S>.log` (and `.error.json` while the run's last attempt failed);
- `ABLATION.md`, `ABLATION.json`, `ABLATION.png` (sevlm.evaluation.ablation).

Every stage writes its output atomically, so an existing output is a finished one: a killed or
rerun study skips what exists and resumes a half-trained run from its last checkpoint
(`sevlm train --resume`). Each run is one child process (`python -m sevlm.ablation DIR VARIANT
SEED`) calling the commands' own `main(argv)`; a child dies with the study (Linux's
parent-death signal), so a killed study leaves no training behind to collide with its resume.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sevlm import cli
from sevlm.commands import demo as demo_command
from sevlm.data.vad import DEMO, DEMO_DATA
from sevlm.errors import ConfigError, SevlmError
from sevlm.evaluation.ablation import write_tables
from sevlm.evaluation.emo_classifier import load_or_train
from sevlm.export import RunDataPaths
from sevlm.io import write_json
from sevlm.locks import claim
from sevlm.study_folder import (
    PREDICTIONS,
    REPORT,
    RETRIEVAL,
    RETRIEVAL_STATS,
    SPLIT,
    STATS,
    STUDY_FILE,
    log_path,
    run_dir,
    run_finished,
    run_outputs,
)
from sevlm.train import load_train_config
from sevlm.train.run_folder import CONFIG_FILE, DONE_FILE


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]
    label: str = ""


# The paper's Figure 5 ladder, each rung adding one component to the one before; every rung sets
# all three switches, so the ladder does not depend on the base config's values. The contrastive
# rung switches on the whole contrastive head: the ternary loss and, where the config's w_align > 0,
# our alignment head (the retrieval space). The control is the full model without the image.
_OFF = ("model.use_vad_input=false", "model.use_vad_head=false", "model.use_contrastive=false")
LADDER = (
    Variant("baseline", _OFF, "baseline (GPT-2 + image, no VAD, no contrastive)"),
    Variant("vad_input", ("model.use_vad_input=true", *_OFF[1:]), "+ VAD input"),
    Variant("vad_head", ("model.use_vad_input=true", "model.use_vad_head=true", _OFF[2]), "+ VAD head"),
    Variant(
        "full",
        ("model.use_vad_input=true", "model.use_vad_head=true", "model.use_contrastive=true"),
        "+ contrastive head (full)",
    ),
    Variant(
        "no_image",
        ("model.use_vad_input=true", "model.use_vad_head=true", "model.use_contrastive=true", "model.mode=none"),
        "full, no image (control)",
    ),
)
BUILTIN = {v.name: v for v in LADDER}


def parse_variant(spec: str) -> Variant:
    """`name:key=value,key=value` (a custom variant; `name:` alone = the base config as it is)."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--variant {spec!r}: expected NAME:key=value,key=value (NAME of letters, digits, - and _)")
    overrides = tuple(o.strip() for o in rest.split(",") if o.strip())
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"--variant {name}: {o!r} is not key=value")
    return Variant(name, overrides, name)


def select_variants(names: list[str] | None, custom: list[str] | None) -> list[Variant]:
    """The study's rungs in order: the named built-in ones (default: the whole ladder unless custom
    ones are given), then the custom ones."""
    customs = [parse_variant(s) for s in custom or []]
    if names is None:
        names = [] if customs else [v.name for v in LADDER]
    out = []
    for n in names:
        if n not in BUILTIN:
            raise ConfigError(
                f"--variants: unknown variant {n!r} (built in: {', '.join(BUILTIN)}; "
                f"define others with --variant NAME:key=value,...)"
            )
        out.append(BUILTIN[n])
    out += customs
    seen = set()
    for v in out:
        if v.name in seen:
            raise ConfigError(f"variant {v.name!r} is given twice")
        seen.add(v.name)
    if not out:
        raise ConfigError("no variant to run")
    return out


# ---------------------------------------------------------------------------------------------
# The study: plan, check against what the folder already holds, run the children, tabulate


def plan_study(
    study: Path, config: str, overrides: list[str], variants: list[Variant], seeds: list[int], data: dict
) -> dict:
    """study.json's content, every variant's config checked (a bad override names its variant)."""
    data_overrides = [f"data.{k}={v}" for k, v in data.items() if v]
    spec = {
        "version": 1,
        "config": config,
        "overrides": list(overrides),
        "data": data,
        "split": SPLIT,
        "seeds": list(seeds),
        "variants": {},
    }
    for v in variants:
        try:
            cfg = load_train_config(config, [*overrides, *data_overrides, *v.overrides])
        except SevlmError as e:
            raise ConfigError(f"variant {v.name}: {e}") from e
        spec["variants"][v.name] = {
            "label": v.label or v.name,
            "overrides": list(v.overrides),
            "image": cfg.model.mode != "none",
            # retrieval needs the contrastive head and an image side that some loss trained
            "retrieve": bool(cfg.model.use_contrastive and cfg.model.mode != "none"),
            "seed_base": cfg.seed,
        }
    return spec


def reconcile(study: Path, spec: dict) -> dict:
    """Merge `spec` with the study.json already in `study` (a resumed or extended study): the base
    config, overrides and data must be the same, and a variant already run must keep its overrides.
    New variants and seeds are added."""
    path = Path(study) / STUDY_FILE
    if not path.exists():
        return spec
    old = json.loads(path.read_text(encoding="utf-8"))
    for key in ("config", "overrides", "data", "demo_images"):
        if old.get(key, spec.get(key)) != spec.get(key):  # (a key an older study.json lacks is not compared)
            raise ConfigError(
                f"{path}: this study was run with {key} {old.get(key)!r}, not {spec[key]!r}; "
                f"use another --out, or give the same {key}"
            )
    for name, v in spec["variants"].items():
        was = old["variants"].get(name)
        if was is not None and was["overrides"] != v["overrides"]:
            raise ConfigError(
                f"{path}: variant {name} was run with {was['overrides']}, not {v['overrides']}; "
                f"name the new variant differently"
            )
    merged = dict(spec)
    merged["variants"] = {**old["variants"], **spec["variants"]}
    merged["seeds"] = sorted(set(old["seeds"]) | set(spec["seeds"]))
    return merged


def resolve_data(study: Path, config: str, overrides: list[str], demo_images: int) -> dict:
    """The dataset and data source the runs train on: the config's, or for a config on the demo
    lexicon that names no dataset, the synthetic demo set built in DIR/data as `sevlm demo` does."""
    cfg = load_train_config(config, overrides)
    if cfg.data.dataset_dir:
        return {}  # the config (or its overrides) says where the data is: the runs read it from there
    if cfg.data.lexicon not in (DEMO, DEMO_DATA):
        raise ConfigError(
            f"config {config!r} names no data.dataset_dir: pass data.dataset_dir=... data.features=... "
            f"(only a config on the demo lexicon gets the synthetic demo set built for it)"
        )
    print(
        f"[ablate] {config} names no dataset: building the synthetic demo set ({demo_images} images, "
        f"encoder {cfg.data.encoder}) in {Path(study) / 'data'}",
        flush=True,
    )
    dataset, features, shards = demo_command.build_demo_data(
        Path(study).resolve() / "data", demo_images, 0, None, cfg.data.encoder, {}
    )
    # the runs read the shards, as the demo's do (one source; they name their feature cache)
    return {"dataset_dir": str(dataset), "shards": str(shards)}


def run_study(
    study: str | os.PathLike,
    config: str,
    overrides: list[str],
    variants: list[Variant],
    n_seeds: int,
    parallel: int = 1,
    demo_images: int = 720,
    n_resamples: int = 2000,
) -> dict:
    """Run (or finish) every variant x seed and write the table; -> the table (ABLATION.json)."""
    if n_seeds < 1 or parallel < 1:
        raise ConfigError("--seeds and --parallel must be >= 1")
    for o in overrides:
        if o.split("=", 1)[0].strip() == "seed":
            raise ConfigError("the study sets each run's seed (--seeds); drop seed= from the overrides")
    study = Path(study).resolve()
    study.mkdir(parents=True, exist_ok=True)
    with claim(study / ".ablate.lock", f"{study} (an ablation study)"):
        data = resolve_data(study, config, overrides, demo_images)
        base_seed = load_train_config(config, overrides).seed
        spec = plan_study(study, config, overrides, variants, [base_seed + k for k in range(n_seeds)], data)
        spec["demo_images"] = demo_images if data else None  # the size of the demo set built in DIR/data
        spec = reconcile(study, spec)
        write_json(study / STUDY_FILE, spec)
        names, seeds = [v.name for v in variants], [base_seed + k for k in range(n_seeds)]
        _prepare_classifier(spec, config, overrides)
        t0 = time.perf_counter()
        failures = _run_children(study, spec, names, seeds, parallel)
        wall = time.perf_counter() - t0
        table = write_tables(study, spec, names, seeds, n_resamples=n_resamples)
        table["wall_s_this_invocation"] = round(wall, 1)
        print(
            f"[ablate] {len(names)} variants x {len(seeds)} seeds: {len(failures)} failed; "
            f"{wall:.0f} s of runs in this invocation; wrote {study / 'ABLATION.md'}",
            flush=True,
        )
        return table


def _prepare_classifier(spec: dict, config: str, overrides: list[str]) -> None:
    """Train the Emo-Align classifier once before the children start (they would race to)."""
    dataset = spec["data"].get("dataset_dir") or load_train_config(config, overrides).data.dataset_dir
    load_or_train(dataset)


def _child_env(parallel: int) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("DS_ACCELERATOR", "cpu" if not _cuda() else env.get("DS_ACCELERATOR", "cuda"))
    # the children share the cores: each gets its share of OpenMP threads unless the user chose
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def _cuda() -> bool:
    return torch.cuda.is_available()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_children(study: Path, spec: dict, names: list[str], seeds: list[int], parallel: int) -> list[tuple]:
    """Run every unfinished (variant, seed), `parallel` at a time, seed by seed so that an
    interrupted study leaves whole seeds (the paired tests pair runs of one seed). On a machine
    with GPUs, child k gets GPU k mod the number of GPUs."""
    todo = [(v, s) for s in seeds for v in names if not run_finished(study, spec, v, s)]
    done = len(names) * len(seeds) - len(todo)
    if done:
        print(f"[ablate] {done} of {len(names) * len(seeds)} runs finished already: reused", flush=True)
    env = _child_env(parallel)
    n_gpu = _gpu_count()
    running: dict[subprocess.Popen, tuple] = {}
    failures = []
    slot = 0
    try:
        while todo or running:
            while todo and len(running) < parallel:
                v, s = todo.pop(0)
                log = log_path(study, v, s)
                log.parent.mkdir(parents=True, exist_ok=True)
                child_env = dict(env, **({"CUDA_VISIBLE_DEVICES": str(slot % n_gpu)} if n_gpu else {}))
                slot += 1
                with open(log, "ab") as out:
                    p = subprocess.Popen(
                        [sys.executable, "-m", "sevlm.ablation", str(study), v, str(s)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=child_env,
                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                    )
                running[p] = (v, s, time.perf_counter())
                print(f"[ablate] start {v} seed {s} (pid {p.pid}, log {log})", flush=True)
            time.sleep(0.2)
            for p in [p for p in running if p.poll() is not None]:
                v, s, t = running.pop(p)
                if p.returncode == 0:
                    print(f"[ablate] done  {v} seed {s} in {time.perf_counter() - t:.0f} s", flush=True)
                else:
                    err = _record_crash(study, v, s, p.returncode)
                    failures.append((v, s, err))
                    print(
                        f"[ablate] FAILED {v} seed {s}: {err} (log {log_path(study, v, s)}); the study goes on",
                        flush=True,
                    )
    finally:
        for p in running:  # an interrupted study stops its children (SIGTERM: a training run exits cleanly)
            p.terminate()
        for p in running:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return failures


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _record_crash(study: Path, variant: str, seed: int, rc: int) -> str:
    """The error of a failed child: what it recorded itself, or its exit code and last log line."""
    err_file = log_path(study, variant, seed, ".error.json")
    if err_file.exists():
        return json.loads(err_file.read_text(encoding="utf-8"))["error"]
    lines = [
        ln
        for ln in log_path(study, variant, seed).read_text(encoding="utf-8", errors="replace").splitlines()
        if ln.strip()
    ]
    error = f"exit code {rc}" + (f": {lines[-1].strip()[:300]}" if lines else "")
    write_json(err_file, {"variant": variant, "seed": seed, "stage": None, "error": error})
    return error


# ---------------------------------------------------------------------------------------------
# One run: the child process


def run_one(study: Path, variant: str, seed: int) -> None:
    """Train, generate, evaluate, retrieve and score one (variant, seed), each stage skipped when its
    output exists; raises SevlmError naming the run and the stage that failed."""
    study = Path(study)
    spec = json.loads((study / STUDY_FILE).read_text(encoding="utf-8"))
    v = spec["variants"][variant]
    folder = run_dir(study, variant, seed)
    data = spec["data"]
    data_overrides = [f"data.{k}={val}" for k, val in data.items() if val]
    who = f"variant {variant} seed {seed}"

    def stage(name: str, output: Path | list[Path], argv: list[str]) -> bool:
        if all(o.exists() for o in (output if isinstance(output, list) else [output])):
            return False
        print(f"[ablate {variant} seed {seed}] {name}: sevlm {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = cli.main(argv)
        if rc != 0:
            raise SevlmError(f"{who}: {name} failed (exit code {rc})")
        print(f"[ablate {variant} seed {seed}] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        return True

    if (folder / CONFIG_FILE).exists():
        train_argv = ["train", "--resume", str(folder)]
    else:
        train_argv = [
            "train",
            "--config",
            spec["config"],
            "--out",
            str(folder),
            *spec["overrides"],
            *data_overrides,
            *v["overrides"],
            f"seed={seed}",
        ]
    if stage("train", folder / DONE_FILE, train_argv):
        for stale in run_outputs(folder, True)[1:]:  # outputs of an earlier, unfinished model
            stale.unlink(missing_ok=True)
    dataset = data.get("dataset_dir") or _recorded_dataset(folder)
    stage(
        "generate",
        folder / PREDICTIONS,
        ["generate", "--run", str(folder), "--split", SPLIT, "--out", str(folder / PREDICTIONS)],
    )
    lexicon = _recorded_lexicon(folder)
    # a REPORT.json without its statistics (an older sevlm's) is evaluated again
    stage(
        "evaluate",
        [folder / STATS, folder / REPORT],
        [
            "evaluate",
            "--predictions",
            str(folder / PREDICTIONS),
            "--references",
            str(Path(dataset) / f"{SPLIT}.json"),
            "--dataset",
            str(dataset),
            *(["--vad-lexicon", lexicon] if lexicon else []),
            "--out",
            str(folder / REPORT),
        ],
    )
    if v["retrieve"]:
        stage(
            "retrieve",
            [folder / RETRIEVAL_STATS, folder / RETRIEVAL],
            ["retrieve", "--run", str(folder), "--split", SPLIT, "--out", str(folder / RETRIEVAL)],
        )


def _recorded_dataset(folder: Path) -> str:
    return RunDataPaths.of(folder).dataset_dir


def _recorded_lexicon(folder: Path) -> str | None:
    return RunDataPaths.of(folder).lexicon


def _last_error_line(log: Path) -> str | None:
    """The last `sevlm CMD: error: ...` line a command printed into the run's log."""
    if not log.exists():
        return None
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ": error: " in ln]
    return lines[-1][:500] if lines else None


def _child_main(argv: list[str]) -> int:
    """`python -m sevlm.ablation STUDY VARIANT SEED`: one run of a study (started by run_study)."""
    study, variant, seed = Path(argv[0]), argv[1], int(argv[2])
    err_file = log_path(study, variant, seed, ".error.json")
    err_file.unlink(missing_ok=True)
    try:
        run_one(study, variant, seed)
    except (SevlmError, OSError) as e:
        error = " ".join(str(e).split())
        cause = _last_error_line(log_path(study, variant, seed))
        if cause and cause not in error:
            error = f"{error}: {cause}"
        write_json(err_file, {"variant": variant, "seed": seed, "error": error})
        print(f"sevlm ablate: {variant} seed {seed}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))

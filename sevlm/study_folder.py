"""Where an ablation study keeps each run's outputs (the layout is in sevlm.ablation's docstring).
Its own module because the runner (sevlm.ablation) writes these files and the table
(sevlm.evaluation.ablation) reads them."""

from __future__ import annotations

from pathlib import Path

from sevlm.train.run_folder import DONE_FILE

STUDY_FILE = "study.json"
SPLIT = "test"
PREDICTIONS = f"predictions_{SPLIT}.jsonl"
REPORT = Path("report") / "REPORT.json"
RETRIEVAL = f"retrieval_{SPLIT}.json"
STATS = Path("report") / "REPORT_stats.npz"  # evaluate's per-image statistics (report.statistics_path)
RETRIEVAL_STATS = f"retrieval_{SPLIT}_stats.npz"  # retrieve's per-image image -> emotion hits


def run_dir(study: Path, variant: str, seed: int) -> Path:
    return Path(study) / variant / f"seed{seed}"


def log_path(study: Path, variant: str, seed: int, suffix: str = ".log") -> Path:
    return Path(study) / "logs" / f"{variant}-seed{seed}{suffix}"


def run_outputs(folder: Path, retrieve: bool) -> list[Path]:
    """What a finished run folder holds, in the order the stages write it."""
    outs = [folder / DONE_FILE, folder / PREDICTIONS, folder / STATS, folder / REPORT]
    return outs + ([folder / RETRIEVAL_STATS, folder / RETRIEVAL] if retrieve else [])


def run_finished(study: Path, spec: dict, variant: str, seed: int) -> bool:
    folder = run_dir(study, variant, seed)
    return all(p.exists() for p in run_outputs(folder, spec["variants"][variant]["retrieve"]))

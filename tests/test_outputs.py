"""No command writes over its own inputs (sevlm.outputs, called by the CLI before any work)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sevlm.cli import main


@pytest.fixture()
def layout(tmp_path) -> dict:
    """A dataset folder as `prepare` leaves it, a run folder with export/ and checkpoints/,
    a feature file and a predictions file (their content never read: refusal comes first)."""
    ds = tmp_path / "ds"
    ds.mkdir()
    for split in ("train", "val", "test"):
        (ds / f"{split}.json").write_text(json.dumps({"Style/a": {"image_name": "Style/a.jpg"}}))
    (ds / "manifest.json").write_text(json.dumps({"format": "sevlm-dataset", "input_format": "artemis"}))
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "checkpoints" / "step00000002").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "run.json").write_text("{}")
    (run / "export" / "config.json").write_text(json.dumps({"format": "sevlm-export-2"}))
    (run / "export" / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoints" / "pointers.json").write_text(json.dumps({"last": "step00000002"}))
    feats = tmp_path / "f.h5"
    feats.write_bytes(b"\x89HDF-not-really")
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"image_id": "Style/a", "emotion": "awe", "explanation": "calm"}\n')
    return {"ds": ds, "run": run, "features": feats, "pred": pred, "root": tmp_path}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv: list[str], root: Path, capsys, match: str) -> str:
    before = snapshot(root)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err  # one line
    assert match in err, err
    assert snapshot(root) == before  # every file unchanged byte for byte, nothing added
    return err


def test_evaluate_out_onto_its_references_is_refused(layout, capsys):
    ds = layout["ds"]
    err = refused(
        [
            "evaluate",
            "--predictions",
            str(layout["pred"]),
            "--references",
            str(ds / "test.json"),
            "--out",
            str(ds / "test.json"),
        ],
        layout["root"],
        capsys,
        "is this command's input (--references",
    )
    assert err.startswith(f"sevlm evaluate: error: --out {ds / 'test.json'}")


def test_evaluate_out_through_another_spelling_or_a_symlink_is_refused(layout, capsys, tmp_path):
    ds = layout["ds"]
    os.symlink(ds, tmp_path / "link")
    refused(
        [
            "evaluate",
            "--predictions",
            str(layout["pred"]),
            "--references",
            str(ds / "test.json"),
            "--out",
            str(tmp_path / "link" / "test.json"),
        ],
        layout["root"],
        capsys,
        "is this command's input",
    )
    md = tmp_path / "pred.md"  # a predictions file that REPORT.md (beside --out pred.json) would replace
    md.write_bytes(layout["pred"].read_bytes())
    refused(
        [
            "evaluate",
            "--predictions",
            str(md),
            "--references",
            str(ds / "test.json"),
            "--out",
            str(tmp_path / "pred.json"),
        ],
        layout["root"],
        capsys,
        "(its .md beside it)",
    )
    # a report into the dataset folder (not an input file, but a folder `prepare` owns)
    refused(
        [
            "evaluate",
            "--predictions",
            str(layout["pred"]),
            "--references",
            str(ds / "test.json"),
            "--out",
            str(ds / "reports" / "R.json"),
        ],
        layout["root"],
        capsys,
        "inside the dataset folder",
    )


def test_generate_out_into_the_runs_export_is_refused(layout, capsys):
    run = layout["run"]
    refused(
        ["generate", "--run", str(run), "--out", str(run / "export" / "config.json")],
        layout["root"],
        capsys,
        "inside the run folder's export/",
    )
    refused(
        ["generate", "--run", str(run / "export"), "--out", str(run / "checkpoints" / "pointers.json")],
        layout["root"],
        capsys,
        "inside the run folder's checkpoints/",
    )
    refused(
        ["generate", "--run", str(run), "--features", str(layout["features"]), "--out", str(layout["features"])],
        layout["root"],
        capsys,
        "is this command's input (--features",
    )


def test_retrieve_out_onto_an_input_is_refused(layout, capsys):
    run = layout["run"]
    refused(
        ["retrieve", "--run", str(run), "--out", str(run / "export" / "model.safetensors")],
        layout["root"],
        capsys,
        "inside the run folder's export/",
    )
    refused(
        ["retrieve", "--run", str(run), "--dataset", str(layout["ds"]), "--out", str(layout["ds"] / "val.json")],
        layout["root"],
        capsys,
        "inside the dataset folder",
    )


def test_shard_out_onto_the_dataset_folder_is_refused(layout, capsys):
    ds = layout["ds"]
    refused(
        ["shard", "--features", str(layout["features"]), "--dataset", str(ds), "--split", "train", "--out", str(ds)],
        layout["root"],
        capsys,
        "is this command's input (--dataset",
    )
    refused(
        [
            "shard",
            "--features",
            str(layout["features"]),
            "--dataset",
            str(ds),
            "--split",
            "train",
            "--out",
            str(ds / "shards"),
        ],
        layout["root"],
        capsys,
        "inside the dataset folder",
    )


def test_extract_out_onto_an_input_is_refused(layout, capsys):
    ds = layout["ds"]
    refused(
        ["extract", "--dataset", str(ds), "--encoder", "tiny-random", "--out", str(ds / "train.json")],
        layout["root"],
        capsys,
        "inside the dataset folder",
    )
    refused(
        ["extract", "--dataset", str(ds), "--encoder", "tiny-random", "--out", str(layout["run"] / "export" / "f.h5")],
        layout["root"],
        capsys,
        "inside the run folder's export/",
    )


def test_outputs_beside_the_inputs_are_allowed(layout):
    from sevlm.outputs import check_outputs

    run, ds = layout["run"], layout["ds"]
    check_outputs({"--out": run / "pred.jsonl"}, {"--run": run, "--dataset": ds})  # the README's layout
    check_outputs({"--out": run / "report" / "REPORT.json"}, {"--references": ds / "test.json"})
    check_outputs({"--out": layout["root"] / "shards"}, {"--dataset": ds})

"""`sevlm ablate`: variants, the seed-paired table, failures recorded, and a whole study killed and resumed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from sevlm.ablation import LADDER, parse_variant, reconcile, select_variants
from sevlm.cli import main
from sevlm.errors import ConfigError
from sevlm.evaluation import ablation as A
from sevlm.evaluation.significance import write_statistics
from tests.train import runkit


def test_ladder_is_cumulative_and_ends_with_the_control():
    def switches(v):
        kv = dict(o.split("=") for o in v.overrides)
        return tuple(kv[f"model.{k}"] == "true" for k in ("use_vad_input", "use_vad_head", "use_contrastive"))

    assert [v.name for v in LADDER] == ["baseline", "vad_input", "vad_head", "full", "no_image"]
    assert [switches(v) for v in LADDER[:4]] == [(False,) * 3, (True, False, False), (True, True, False), (True,) * 3]
    assert switches(LADDER[4]) == (True,) * 3 and "model.mode=none" in LADDER[4].overrides


def test_variant_selection_and_parsing():
    assert [v.name for v in select_variants(None, None)] == [v.name for v in LADDER]
    v = parse_variant("no_align:model.w_align=0, schedule.epochs=2")
    assert v.name == "no_align" and v.overrides == ("model.w_align=0", "schedule.epochs=2")
    assert [v.name for v in select_variants(["full"], ["x:model.w_vad=0"])] == ["full", "x"]
    assert [v.name for v in select_variants(None, ["x:model.w_vad=0"])] == ["x"]
    with pytest.raises(ConfigError, match="unknown variant 'fulll'"):
        select_variants(["fulll"], None)
    with pytest.raises(ConfigError, match="expected NAME:key=value"):
        parse_variant("model.w_vad=0")
    with pytest.raises(ConfigError, match="'w_vad' is not key=value"):
        parse_variant("x:w_vad")
    with pytest.raises(ConfigError, match="given twice"):
        select_variants(["full"], ["full:model.w_vad=0"])


def test_a_resumed_study_keeps_its_definition(tmp_path):
    spec = {"config": "tiny", "overrides": [], "data": {}, "seeds": [0], "variants": {"a": {"overrides": ["x=1"]}}}
    (tmp_path / "study.json").write_text(json.dumps(spec))
    assert reconcile(tmp_path, {**spec, "seeds": [0, 1]})["seeds"] == [0, 1]
    with pytest.raises(ConfigError, match="variant a was run with"):
        reconcile(tmp_path, {**spec, "variants": {"a": {"overrides": ["x=2"]}}})
    with pytest.raises(ConfigError, match="this study was run with overrides"):
        reconcile(tmp_path, {**spec, "overrides": ["schedule.epochs=3"]})


def test_demo_configs_get_the_demo_set_and_others_must_name_their_data(tmp_path, monkeypatch):
    import sevlm.commands.demo as demo
    from sevlm.ablation import resolve_data
    from sevlm.train import load_train_config
    from sevlm.train.checks import data_source

    built = []
    monkeypatch.setattr(
        demo, "build_demo_data", lambda out, n, *a: built.append((out, n)) or (out / "ds", out / "f.h5", out / "shards")
    )
    for config in ("tiny", "demo"):  # both name the demo table on the demo data (data.lexicon=demo-data)
        data = resolve_data(tmp_path / config, config, [], 12)
        assert data["dataset_dir"] == str((tmp_path / config).resolve() / "data" / "ds")
        cfg = load_train_config(config, [f"data.{k}={v}" for k, v in data.items()])
        assert data_source(cfg.data.features, cfg.data.shards, cfg.data.source) == "shards"  # one source, as the demo
    assert [n for _, n in built] == [12, 12]
    assert resolve_data(tmp_path, "tiny", ["data.dataset_dir=/d"], 12) == {}  # the user's data: nothing built
    lexicon = tmp_path / "lex.txt"
    lexicon.write_text("word\tvalence\tarousal\tdominance\nhappy\t1\t0.7\t0.7\n")
    with pytest.raises(ConfigError, match="names no data.dataset_dir"):
        resolve_data(tmp_path, "tiny", [f"data.lexicon={lexicon}"], 12)
    assert len(built) == 2


def test_bad_variant_override_names_the_variant(tmp_path):
    assert (
        main(
            [
                "ablate",
                "--config",
                "tiny",
                "--out",
                str(tmp_path / "s"),
                "--variants",
                "baseline",
                "--variant",
                "oops:model.not_a_key=1",
                "data.dataset_dir=/nowhere",
            ]
        )
        == 1
    )
    with pytest.raises(ConfigError, match="variant oops: .*not_a_key"):
        main(
            [
                "--debug",
                "ablate",
                "--config",
                "tiny",
                "--out",
                str(tmp_path / "s"),
                "--variants",
                "baseline",
                "--variant",
                "oops:model.not_a_key=1",
                "data.dataset_dir=/nowhere",
            ]
        )


def test_stars_follow_figure_5():
    assert [A.stars(p) for p in (0.0005, 0.005, 0.03, 0.05, 0.5, None)] == ["***", "**", "*", "n.s.", "n.s.", None]


# --------------------------------------------------------------------------- the table, from fake run folders


def _fake_run(folder: Path, hits: list[int], meteor: list[float], failed: str | None = None):
    """A finished run folder as the study's stages leave it: REPORT.json and its per-image statistics."""
    from sevlm.train.run_folder import DONE_FILE

    report = folder / "report"
    report.mkdir(parents=True)
    for f in (DONE_FILE, "predictions_test.jsonl"):
        (folder / f).write_text("{}")
    n = len(hits)
    ids = [f"img{i}" for i in range(n)]
    bleu = np.tile(np.array([5, 5, 5, 4, 3, 2, 3, 2, 1, 0], float), (n, 1))
    mean = lambda x: np.stack([np.asarray(x, float), np.ones(n)], 1)  # noqa: E731
    stats = {
        **{f"BLEU-{k}": bleu for k in range(1, 5)},
        "METEOR": mean(meteor),
        "ROUGE-L": mean(meteor),
        "CIDEr": mean(meteor),
        "emotion_accuracy": np.stack([np.asarray(hits, float), np.ones(n)], 1),
        "emo_align": np.stack([np.asarray(hits, float), np.ones(n)], 1),
    }
    # rows in a shuffled order: the table pairs by image id, not by row
    order = np.random.default_rng(len(folder.parts)).permutation(n)
    write_statistics(report / "REPORT_stats.npz", [ids[i] for i in order], {k: v[order] for k, v in stats.items()}, {})
    figures = {
        "BLEU-1": 0.5,
        "BLEU-2": 0.4,
        "BLEU-3": 0.3,
        "BLEU-4": 0.2,
        "METEOR": float(np.mean(meteor)),
        "ROUGE-L": float(np.mean(meteor)),
        "CIDEr": float(np.mean(meteor)),
        "emotion_accuracy": float(np.mean(hits)),
        "emo_align": float(np.mean(hits)),
    }
    (report / "REPORT.json").write_text(json.dumps(figures))


def test_table_pairs_seeds_and_records_failures(tmp_path):
    study = tmp_path / "study"
    spec = {
        "config": "tiny",
        "overrides": [],
        "split": "test",
        "seeds": [0, 1],
        "variants": {n: {"label": n, "overrides": [], "retrieve": False} for n in ("base", "better", "same")},
    }
    rng = np.random.default_rng(0)
    n = 60
    base = {s: (rng.random(n) < 0.3).astype(int) for s in (0, 1)}
    for s in (0, 1):
        m = rng.random(n)
        _fake_run(study / "base" / f"seed{s}", list(base[s]), list(m))
        _fake_run(study / "better" / f"seed{s}", [1] * n, list(m + 0.1))
    _fake_run(study / "same" / "seed0", list(base[0]), list(rng.random(n)))
    (study / "logs").mkdir()
    (study / "logs" / "same-seed1.error.json").write_text(json.dumps({"error": "variant same seed 1: train failed"}))

    table = A.write_tables(study, spec, ["base", "better", "same"], [0, 1], n_resamples=2000)
    rows = {r["name"]: r for r in table["variants"]}
    better = rows["better"]["vs_previous"]["metrics"]
    assert rows["better"]["vs_previous"]["seeds"] == [0, 1]
    acc = better["emotion_accuracy"]
    pooled_base = float(np.mean(np.concatenate([base[0], base[1]])))
    assert acc["delta"] == pytest.approx(1 - pooled_base) and acc["delta_pooled"] == pytest.approx(acc["delta"])
    assert acc["p_bootstrap"] < 0.001 and acc["stars"] == "***"
    assert better["METEOR"]["delta"] == pytest.approx(0.1) and better["METEOR"]["stars"] == "***"
    assert better["BLEU-4"]["p_bootstrap"] == 1.0 and better["BLEU-4"]["stars"] == "n.s."  # identical counts
    assert better["image_to_emotion"] is None  # no retrieval in these runs
    # "same" finished seed 0 only: its tests pair seed 0 alone; its failed seed is listed with its error
    assert rows["same"]["vs_baseline"]["seeds"] == [0] and rows["same"]["n_done"] == 1
    assert rows["same"]["runs"][1] == {
        "seed": 1,
        "run_dir": str(study / "same" / "seed1"),
        "status": "failed",
        "error": "variant same seed 1: train failed",
    }
    assert rows["same"]["sd"]["METEOR"] is None and rows["better"]["sd"]["METEOR"] is not None
    md = (study / "ABLATION.md").read_text()
    assert "same seed 1: failed: variant same seed 1: train failed" in md
    assert "Δprev +" in md and "***" in md
    assert (study / "ABLATION.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((study / "ABLATION.json").read_text())["variants"][1]["name"] == "better"


# --------------------------------------------------------------------------- a real study


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """40 demo paintings, prepared (no features: enough for runs that fail before training)."""
    from sevlm.data.artemis import prepare_dataset
    from sevlm.demo import make_demo_data

    root = tmp_path_factory.mktemp("ablate_data")
    make_demo_data(root / "raw", n_images=40, seed=0, image_size=32, progress=False)
    prepare_dataset(
        root / "raw" / "artemis_dataset_release_v0.csv", root / "dataset", images_dir=root / "raw" / "images"
    )
    return root / "dataset"


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_study_goes_on(tmp_path, small_dataset, capsys):
    out = tmp_path / "study"
    rc = main(
        [
            "ablate",
            "--config",
            "tiny",
            "--out",
            str(out),
            "--seeds",
            "1",
            "--parallel",
            "2",
            "--variant",
            "a:data.features=/nowhere/a.h5",
            "--variant",
            "b:data.features=/nowhere/b.h5",
            f"data.dataset_dir={small_dataset}",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "2 runs did not finish (a seed 0, b seed 0)" in err
    table = json.loads((out / "ABLATION.json").read_text())
    for row, name in zip(table["variants"], "ab"):  # both ran although the first failed
        run = row["runs"][0]
        assert run["status"] == "failed" and "/nowhere/" + name in run["error"], run
        assert run["error"].startswith(f"variant {name} seed 0: train failed")
    assert "a seed 0: failed: variant a seed 0: train failed" in (out / "ABLATION.md").read_text()


# The tiny model, sized and trained just enough to read the emotion off tiny-random features of
# 300 demo paintings (27 test images with a dominant emotion); few checkpoints, no validation.
STUDY_ARGS = [
    "--config",
    "tiny",
    "--seeds",
    "2",
    "--variants",
    "baseline",
    "full",
    "no_image",
    "--parallel",
    "2",
    "--demo-images",
    "300",
    "--resamples",
    "2000",
    "model.n_embd=64",
    "optim.decoder_lr=5e-3",
    "optim.emotion_lr=5e-3",
    "optim.heads_lr=5e-3",
    "schedule.epochs=8",
    "schedule.micro_batch=8",
    "schedule.val_every=100000",
    "schedule.checkpoint_every=20",
    "schedule.log_every=10",
]


def _finished(out: Path) -> list[Path]:
    """The study's finished run folders, by the study's own rule (every stage's output exists)."""
    from sevlm.study_folder import run_finished

    if not (out / "study.json").exists():
        return []
    spec = json.loads((out / "study.json").read_text())
    return [d for d in sorted(out.glob("*/seed*")) if run_finished(out, spec, d.parent.name, int(d.name[4:]))]


def _stamps(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_study_is_killed_resumed_and_tabulated(tmp_path):
    out = tmp_path / "study"
    log = tmp_path / "study.log"
    proc = runkit.start(runkit.sevlm_argv("ablate", "--out", str(out), *STUDY_ARGS), log)
    with runkit.stopped_afterwards([proc]):
        # kill the study (SIGKILL, no clean-up) once one run has finished and another is training
        runkit.wait_for(
            lambda: (
                _finished(out)
                and any((d / "config.json").exists() and not (d / "done.json").exists() for d in out.glob("*/seed*"))
            ),
            timeout=900,
            interval=0.5,
            procs=[proc],
            what="a finished run beside one in training",
            logs=[log],
        )
        children = runkit.descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        runkit.wait_for(lambda: not runkit.alive(children), timeout=30, what="the runs die with the study")
    finished = _finished(out)
    before = {d: _stamps(d) for d in finished}
    reports = {d: json.loads((d / "report" / "REPORT.json").read_text()) for d in finished}
    assert 1 <= len(finished) < 6

    assert main(["ablate", "--out", str(out), *STUDY_ARGS]) == 0
    for d in finished:  # reused: not one file of a finished run written again
        assert _stamps(d) == before[d], d
        assert len([r for r in runkit.log_rows(d) if r.get("event") == "done"]) == 1
    assert len(_finished(out)) == 6

    table = json.loads((out / "ABLATION.json").read_text())
    assert [r["name"] for r in table["variants"]] == ["baseline", "full", "no_image"]
    keys = [k for k, _, _ in A.METRICS]
    for row in table["variants"]:
        assert row["n_done"] == 2 and all(r["status"] == "done" for r in row["runs"])
        for key in keys[:-1]:  # retrieval: the full model only (the others have no trained image side)
            assert row["mean"][key] is not None and row["sd"][key] is not None, (row["name"], key)
        for cmp in ("vs_previous", "vs_baseline") if row["name"] != "baseline" else ():
            if row["name"] == "full" and cmp == "vs_baseline":
                continue  # the second rung's previous rung is the baseline
            tests = row[cmp]["metrics"]
            assert row[cmp]["seeds"] == [0, 1]
            for key in keys[:-1]:
                assert 0 < tests[key]["p_bootstrap"] <= 1 and tests[key]["stars"] in ("n.s.", "*", "**", "***")
    rows = {r["name"]: r for r in table["variants"]}
    assert rows["full"]["mean"]["image_to_emotion"] is not None and rows["no_image"]["mean"]["image_to_emotion"] is None
    for d, report in reports.items():  # the finished runs' figures, as they were before the kill
        run = next(r for r in rows[d.parent.name]["runs"] if r["run_dir"] == str(d))
        assert run["metrics"]["emotion_accuracy"] == report["emotion_accuracy"]
    control = rows["no_image"]["vs_previous"]["metrics"]["emotion_accuracy"]  # against the full model
    assert rows["no_image"]["vs_previous"]["against"] == "full"
    assert control["delta"] < 0 and control["p_bootstrap"] < 0.05, control
    assert control["stars"] in ("*", "**", "***")
    md = (out / "ABLATION.md").read_text()
    for name in ("baseline", "full", "no_image"):
        assert f"**{name}**" in md

    # once more: every run reused (nothing written in a run folder), the same table
    stamps = {d: _stamps(d) for d in _finished(out)}
    assert main(["ablate", "--out", str(out), *STUDY_ARGS]) == 0
    assert {d: _stamps(d) for d in _finished(out)} == stamps
    again = json.loads((out / "ABLATION.json").read_text())
    assert again == table and (out / "ABLATION.md").read_text() == md

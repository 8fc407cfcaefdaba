"""`prepare --format generic`: any affective dataset's CSV / JSON Lines files over real paintings,
combined into one ArtEmis-format dataset folder, with the ArtEmis reader's bad-row rules."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from sevlm.data.folder import SPLITS, load_split
from sevlm.data.generic import prepare_generic
from sevlm.emotions import EMOTIONS
from sevlm.errors import ConfigError, DataError

LONG = "the light in this picture makes me feel {}"  # 8 tokens


def paintings(wikiart: Path, n: int) -> list[str]:
    """`n` real paintings, as paths under the WikiArt folder, taken across its styles."""
    styles = sorted(p for p in wikiart.iterdir() if p.is_dir())
    per = -(-n // len(styles))
    found = [f"{s.name}/{f.name}" for s in styles for f in sorted(s.glob("*.jpg"))[:per]]
    return found[:n]


def write_csv(path: Path, rows: list[dict], columns=("image", "emotion", "utterance")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def two_inputs(tmp_path, wikiart_dir):
    """affection.csv: 40 paintings x 3 rows (no split, no source column); ours.jsonl: 10 of those
    paintings plus 5 new ones, with sources and, for some, a fixed split."""
    images = paintings(wikiart_dir, 45)
    a = [
        {"image": im, "emotion": EMOTIONS[(i + k) % 9], "utterance": LONG.format(f"a {i} {k}")}
        for i, im in enumerate(images[:40])
        for k in range(3)
    ]
    b = [
        {
            "image": im,
            "emotion": "awe",
            "utterance": LONG.format(f"b {i}"),
            "source": "ours",
            "split": "test" if i < 4 else ("val" if i == 4 else ""),
        }
        for i, im in enumerate(images[30:45])
    ]
    return write_csv(tmp_path / "affection.csv", a), write_jsonl(tmp_path / "ours.jsonl", b), images


def test_inputs_combine_into_one_dataset(tmp_path, wikiart_dir, two_inputs):
    a, b, images = two_inputs
    m = prepare_generic([a, b], wikiart_dir, tmp_path / "ds", progress=False)
    splits = {s: load_split(tmp_path / "ds", s) for s in SPLITS}
    ids = [set(splits[s]) for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {im.rsplit(".", 1)[0] for im in images}
    # The split column fixes those images' splits; the rest are split 85/5/10.
    fixed = {im.rsplit(".", 1)[0]: "test" for im in images[30:34]} | {images[34].rsplit(".", 1)[0]: "val"}
    assert all(image_id in splits[s] for image_id, s in fixed.items())
    assert m["images_with_fixed_split"] == 5
    # Sources: the column, else the input's file stem; kept per annotation and counted per split.
    by_source = {s: m["counts"][s]["annotations_by_source"] for s in SPLITS}
    assert sum(c.get("affection", 0) for c in by_source.values()) == 120
    assert sum(c.get("ours", 0) for c in by_source.values()) == 15
    for s in SPLITS:
        assert Counter(x for v in splits[s].values() for x in v["sources"]) == by_source[s]
    # An image in both inputs holds both inputs' annotations, and its distribution counts all of them.
    both = images[32].rsplit(".", 1)[0]
    entry = splits["test"][both]
    assert entry["sources"] == ["affection"] * 3 + ["ours"]
    assert entry["emotions"][-1] == "awe" and len(entry["explanations"]) == 4
    assert sum(entry["emotion_distribution"]) == pytest.approx(1.0)
    # The folder has ArtEmis's format: real image files, COCO references, a manifest naming both inputs.
    for s in SPLITS:
        for image_id, v in splits[s].items():
            assert (wikiart_dir / v["image_name"]).is_file()
            assert image_id == f"{v['art_style']}/{v['painting']}"
        coco = json.loads((tmp_path / "ds" / f"{s}_coco.json").read_text())
        assert len(coco["annotations"]) == m["counts"][s]["annotations"]
    assert m["input_format"] == "generic" and m["images_dir"] == str(wikiart_dir.resolve())
    assert [e["rows"] for e in m["sources"].values()] == [120, 15]
    # Deterministic: the same inputs give the same bytes.
    prepare_generic([a, b], wikiart_dir, tmp_path / "again", progress=False)
    for f in ("train.json", "val.json", "test.json"):
        assert (tmp_path / "ds" / f).read_bytes() == (tmp_path / "again" / f).read_bytes()


GOOD = {"image": "Cubism/x.jpg", "emotion": "awe", "utterance": LONG.format("good")}
BAD_ROWS = [
    ("unknown_emotion", {**GOOD, "emotion": "joy"}, "unknown emotion 'joy' (expected one of: amusement"),
    ("empty_utterance", {**GOOD, "utterance": "  "}, "empty utterance"),
    ("bad_name", {**GOOD, "image": "../secret.jpg"}, "image '../secret.jpg' is not a path inside the images folder"),
    ("bad_split", {**GOOD, "split": "dev"}, "split 'dev' is not one of: train, val, test"),
]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("reason, bad, words", BAD_ROWS, ids=[r for r, _, _ in BAD_ROWS])
def test_bad_rows_as_in_the_artemis_reader(tmp_path, wikiart_dir, kind, reason, bad, words):
    good = [{**GOOD, "image": im, "utterance": LONG.format(i)} for i, im in enumerate(paintings(wikiart_dir, 6))]
    rows = good[:2] + [bad] + good[2:]
    path = (
        write_csv(tmp_path / "in.csv", rows, ("image", "emotion", "utterance", "split"))
        if kind == "csv"
        else write_jsonl(tmp_path / "in.jsonl", rows)
    )
    with pytest.raises(DataError) as err:
        prepare_generic([path], wikiart_dir, tmp_path / "ds", progress=False)
    line = 4 if kind == "csv" else 3
    assert str(err.value).startswith(f"{path}: line {line}: {words}")
    assert str(err.value).endswith("(use --skip-bad-rows to skip such rows)")
    m = prepare_generic([path], wikiart_dir, tmp_path / "ds", skip_bad_rows=True, progress=False)
    assert m["skipped_rows"] == {reason: 1} and m["sources"][str(path)]["rows_read"] == 6


def test_malformed_rows_csv_and_jsonl(tmp_path, wikiart_dir):
    ims = paintings(wikiart_dir, 4)
    path = tmp_path / "in.csv"
    path.write_text(
        "image,emotion,utterance\n"
        f"{ims[0]},awe,{LONG.format(0)}\n"
        f'{ims[1]},awe,"{LONG.format(1)}\n'  # a stray quote
        f"{ims[2]},awe,{LONG.format(2)},extra\n"
        f"{ims[3]},awe,{LONG.format(3)}\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"in\.csv: line 3: malformed CSV \(unbalanced quote"):
        prepare_generic([path], wikiart_dir, tmp_path / "ds", progress=False)
    m = prepare_generic([path], wikiart_dir, tmp_path / "ds", skip_bad_rows=True, progress=False)
    assert m["skipped_rows"] == {"malformed_row": 2} and "line 4: malformed row: 4 fields" in m["skipped_examples"][1]

    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"image": ims[0], "emotion": "awe", "utterance": LONG.format(0)})
        + "\n"
        + '{"image": "x.jpg", "emotion": \n'
        + json.dumps({"image": ims[1], "emotion": "awe"})
        + "\n"
        + json.dumps(["a", "list"])
        + "\n\n"
        + json.dumps({"image": ims[2], "emotion": ["awe"], "utterance": "x"})
        + "\n"
        + json.dumps({"image": ims[3], "emotion": "fear", "utterance": LONG.format(3)})
        + "\n",
        encoding="utf-8",
    )
    m = prepare_generic([path], wikiart_dir, tmp_path / "ds", skip_bad_rows=True, progress=False)
    assert m["skipped_rows"] == {"malformed_row": 4} and m["sources"][str(path)]["rows"] == 6
    assert [e.split(": ", 1)[1] for e in m["skipped_examples"]] == [
        "line 2: not valid JSON (Expecting value)",
        "line 3: missing field 'utterance'",
        "line 4: not a JSON object (list)",
        "line 6: field 'emotion' is not text",
    ]


def test_one_split_per_image_and_one_file_per_id(tmp_path, wikiart_dir):
    ims = paintings(wikiart_dir, 8)
    a = write_csv(
        tmp_path / "a.csv",
        [{"image": im, "emotion": "awe", "utterance": LONG.format(i), "split": "train"} for i, im in enumerate(ims)],
        ("image", "emotion", "utterance", "split"),
    )
    b = write_jsonl(
        tmp_path / "b.jsonl", [{"image": ims[0], "emotion": "awe", "utterance": LONG.format(9), "split": "test"}]
    )
    with pytest.raises(
        DataError,
        match=rf"b\.jsonl: line 1: image '{ims[0]}' is put in split 'test' but in "
        rf"'train' by a\.csv line 2",
    ):
        prepare_generic([a, b], wikiart_dir, tmp_path / "ds", progress=False)
    m = prepare_generic([a, b], wikiart_dir, tmp_path / "ds", skip_bad_rows=True, progress=False)
    assert m["skipped_rows"] == {"split_conflict": 1} and m["counts"]["train"]["images"] == 8
    # Two files whose paths differ only by extension would share an id.
    (tmp_path / "img" / "S").mkdir(parents=True)
    for name in ("p.jpg", "p.png"):
        (tmp_path / "img" / "S" / name).write_bytes(b"x")
    c = write_csv(
        tmp_path / "c.csv",
        [{"image": f"S/p.{e}", "emotion": "awe", "utterance": LONG.format(e)} for e in ("jpg", "png")],
    )
    with pytest.raises(
        DataError, match=r"c\.csv: line 3: image 'S/p\.png' has the id 'S/p' of 'S/p\.jpg' \(c\.csv line 2\)"
    ):
        prepare_generic([c], tmp_path / "img", tmp_path / "ds2", progress=False)


def test_missing_images_and_empty_inputs(tmp_path, wikiart_dir):
    ims = paintings(wikiart_dir, 20) + ["Cubism/not-there.jpg"] * 2 + ["Nowhere/x.jpg"]
    path = write_csv(
        tmp_path / "in.csv", [{"image": im, "emotion": "awe", "utterance": LONG.format(i)} for i, im in enumerate(ims)]
    )
    with pytest.raises(DataError, match=r"2 of 22 images not found \(9%.*--allow-missing-images"):
        prepare_generic([path], wikiart_dir, tmp_path / "ds", progress=False)
    m = prepare_generic([path], wikiart_dir, tmp_path / "ds", allow_missing_images=True, progress=False)
    assert m["missing_images"] == {"count": 2, "examples": ["Cubism/not-there", "Nowhere/x"]}
    assert sum(c["images"] for c in m["counts"].values()) == 20
    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(DataError, match=r"empty\.csv: no data rows"):
        prepare_generic([empty], wikiart_dir, tmp_path / "ds", progress=False)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: file is empty"):
        prepare_generic([tmp_path / "empty.jsonl"], wikiart_dir, tmp_path / "ds", progress=False)
    with pytest.raises(DataError, match=r"in\.csv: line 1: missing column\(s\) 'utterance'"):
        prepare_generic(
            [write_csv(tmp_path / "in.csv", [], ("image", "emotion"))], wikiart_dir, tmp_path / "ds", progress=False
        )
    with pytest.raises(ConfigError, match="no input files"):
        prepare_generic([], wikiart_dir, tmp_path / "ds", progress=False)


def test_prepare_command_generic(tmp_path, wikiart_dir, two_inputs, capsys):
    from sevlm import cli

    a, b, _ = two_inputs
    out = tmp_path / "ds"
    assert (
        cli.main(
            [
                "prepare",
                "--format",
                "generic",
                "--input",
                str(a),
                "--input",
                str(b),
                "--images",
                str(wikiart_dir),
                "--out",
                str(out),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 input file(s); images split 85/5/10 train/val/test" in printed and "seed 3" in printed
    assert "training set" not in printed and "affection" in printed and "ours" in printed  # ArtEmis v2 wording
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert (
        cli.main(
            [
                "prepare",
                "--format",
                "generic",
                "--input",
                str(a),
                "--images",
                str(wikiart_dir),
                "--contrastive-csv",
                "x.csv",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "--contrastive-csv: ArtEmis options, not for --format generic" in capsys.readouterr().err
    assert cli.main(["prepare", "--format", "generic", "--input", str(a), "--out", str(out)]) == 1
    assert "needs --input FILE (one or more) and --images DIR" in capsys.readouterr().err
    assert cli.main(["prepare", "--input", str(a), "--out", str(out)]) == 1
    assert "--format artemis reads --artemis-csv" in capsys.readouterr().err


@pytest.mark.slow
def test_generic_dataset_through_the_whole_pipeline(tmp_path, wikiart_dir):
    """prepare (generic) -> extract -> shard -> train (from the shards) -> generate -> evaluate -> retrieve."""
    from sevlm.cli import main

    images = paintings(wikiart_dir, 30)
    emotion = [[EMOTIONS[i % 9], EMOTIONS[i % 9], EMOTIONS[(i + 1) % 9]] for i in range(len(images))]
    rows = [
        {"image": im, "emotion": emotion[i][k], "utterance": LONG.format(f"{emotion[i][k]} {k}")}
        for i, im in enumerate(images)
        for k in range(3)
    ]
    path = write_csv(tmp_path / "mine.csv", rows)
    ds, feats, shards, run = tmp_path / "ds", tmp_path / "f.h5", tmp_path / "shards", tmp_path / "run"
    assert (
        main(["prepare", "--format", "generic", "--input", str(path), "--images", str(wikiart_dir), "--out", str(ds)])
        == 0
    )
    assert main(["extract", "--dataset", str(ds), "--encoder", "tiny-random", "--out", str(feats)]) == 0
    for split in ("train", "val"):
        assert (
            main(["shard", "--features", str(feats), "--dataset", str(ds), "--split", split, "--out", str(shards)]) == 0
        )
    # not the demo data: the tiny config's demo table only when asked for (data.lexicon=demo)
    assert (
        main(
            [
                "train",
                "--config",
                "tiny",
                "--out",
                str(run),
                f"data.dataset_dir={ds}",
                f"data.shards={shards}",
                "data.lexicon=demo",
                "schedule.max_steps=2",
                "schedule.val_every=0",
                "schedule.val_gen_images=1",
            ]
        )
        == 0
    )
    preds = run / "pred.jsonl"
    assert main(["generate", "--run", str(run), "--split", "test", "--features", str(feats), "--out", str(preds)]) == 0
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(preds),
                "--references",
                str(ds / "test.json"),
                "--dataset",
                str(ds),
                "--vad-lexicon",
                "demo",
                "--out",
                str(run / "report" / "REPORT.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "retrieve",
                "--run",
                str(run),
                "--split",
                "test",
                "--features",
                str(feats),
                "--out",
                str(run / "retrieval.json"),
            ]
        )
        == 0
    )

    test = json.loads((ds / "test.json").read_text())
    assert len(test) == 3  # 10% of 30 paintings
    predicted = [json.loads(line) for line in preds.read_text().splitlines()]
    assert sorted(p["image_id"] for p in predicted) == sorted(test)
    report = json.loads((run / "report" / "REPORT.json").read_text())
    assert (report["n_predictions"], report["n_reference_images"]) == (3, 3)
    retrieval = json.loads((run / "retrieval.json").read_text())
    assert retrieval["model"]["image_to_explanation"]["n_queries"] == 3
    assert retrieval["model"]["image_to_explanation"]["gallery_size"] == 9


def _tiny_images(root: Path, n: int) -> list[str]:
    (root / "S").mkdir(parents=True)
    for i in range(n):
        (root / "S" / f"p{i:02d}.jpg").write_bytes(b"x")
    return [f"S/p{i:02d}.jpg" for i in range(n)]


def test_image_paths_without_their_suffix_name_the_file_that_exists(tmp_path):
    _tiny_images(tmp_path / "img", 13)
    rows = [{"image": f"S/p{i:02d}", "emotion": "awe", "utterance": LONG.format(i)} for i in range(13)]
    path = write_csv(tmp_path / "in.csv", rows)
    with pytest.raises(
        DataError,
        match=r"13 of 13 images not found .*'S/p00' is not a file under .* but "
        r"'S/p00\.jpg' is: did you mean 'S/p00\.jpg'\? \(image paths need their file suffix\)",
    ):
        prepare_generic([path], tmp_path / "img", tmp_path / "ds", progress=False)


def test_split_fractions_and_generic_wording(tmp_path, capsys):
    from sevlm.cli import main

    images = _tiny_images(tmp_path / "img", 40)
    rows = [{"image": im, "emotion": "awe", "utterance": LONG.format(i)} for i, im in enumerate(images)]
    path = write_csv(tmp_path / "in.csv", rows)
    argv = ["prepare", "--format", "generic", "--input", str(path), "--images", str(tmp_path / "img")]
    assert main([*argv, "--out", str(tmp_path / "ds"), "--split-fractions", "0.5,0.25,0.25"]) == 0
    out = capsys.readouterr().out
    assert "images split 50/25/25 train/val/test" in out and "training set" not in out
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["split_fractions"] == {"train": 0.5, "val": 0.25, "test": 0.25}
    assert {s: m["counts"][s]["images"] for s in SPLITS} == {"train": 20, "val": 10, "test": 10}
    assert main([*argv, "--out", str(tmp_path / "ds2")]) == 0  # the default 85/5/10
    assert {s: json.loads((tmp_path / "ds2" / "manifest.json").read_text())["counts"][s]["images"] for s in SPLITS} == {
        "train": 34,
        "val": 2,
        "test": 4,
    }
    assert main([*argv, "--out", str(tmp_path / "ds3"), "--split-fractions", "0.5,0.5"]) != 0
    assert "--split-fractions '0.5,0.5': expected three shares train,val,test that sum to 1" in capsys.readouterr().err

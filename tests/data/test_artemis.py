"""ArtEmis ingestion: splits, set-aside and length rules, dominance, v2 Combined, COCO refs,
manifest, every bad-input case, and Unicode painting names against files on disk."""

from __future__ import annotations

import csv
import json
import random
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from sevlm.data.artemis import prepare_dataset
from sevlm.data.folder import SPLITS, load_split
from sevlm.data.split import split_paintings
from sevlm.data.table import clean_utterance, tokenize
from sevlm.emotions import EMOTIONS, dominant_emotion, emotion_distribution
from sevlm.errors import ConfigError, DataError
from sevlm.io import sha256_file

HEADER = ["art_style", "painting", "emotion", "utterance", "repetition"]
LONG = "the colours in this painting make me feel {}"  # 8 tokens


def write_csv(path: Path, rows, header=HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def v1_rows(n_paintings=200, per=5, seed=0, style="Impressionism"):
    rng = random.Random(seed)
    rows = []
    for i in range(n_paintings):
        for k in range(per):
            e = rng.choice(EMOTIONS)
            rows.append([style, f"artist_painting-{i:03d}", e, LONG.format(k), per])
    return rows


def prepare(tmp_path, rows, name="out", **kw):
    csv_path = write_csv(tmp_path / f"{name}.csv", rows)
    kw.setdefault("protocol", "sevlm")  # these tests pin sevlm's own protocol; ArtEmis's: test_artemis_protocol.py
    return prepare_dataset(csv_path, tmp_path / name, progress=False, **kw), tmp_path / name


# --------------------------------------------------------------------------- text and dominance


def test_tokenize_and_clean():
    assert tokenize("It's SO bright, isn't it?!") == ["it's", "so", "bright", "isn't", "it"]
    assert clean_utterance("  The  sky\u2019s   blue...  ") == "the sky's blue"
    assert clean_utterance("black-and-white") == "black and white"


@pytest.mark.parametrize(
    "emotions, expected",
    [
        (["fear", "fear", "awe"], "fear"),
        (["fear", "fear", "awe", "sadness"], "fear"),  # exactly half, no rival
        (["fear", "fear", "awe", "awe"], None),  # exactly half each: tie
        (["fear", "awe", "sadness"], None),  # nobody reaches half
        (["fear", "fear", "awe", "sadness", "anger"], None),  # 2/5 < half
        (["awe"], "awe"),  # single annotation
        ([], None),
        (["something else"] * 3 + ["awe"] * 2, "something else"),
    ],
)
def test_dominant_emotion(emotions, expected):
    assert dominant_emotion(emotions) == expected


def test_emotion_distribution_canonical_order():
    d = emotion_distribution(["sadness", "amusement", "amusement", "something else"])
    assert len(d) == 9 and sum(d) == pytest.approx(1.0)
    assert d[0] == 0.5 and d[EMOTIONS.index("sadness")] == 0.25 and d[8] == 0.25


# --------------------------------------------------------------------------- splits


def test_split_disjoint_complete_and_proportional(tmp_path):
    m, out = prepare(tmp_path, v1_rows(200))
    splits = {s: load_split(out, s) for s in SPLITS}
    ids = [set(splits[s]) for s in SPLITS]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 200
    assert [len(x) for x in ids] == [170, 10, 20]
    assert [m["counts"][s]["images"] for s in SPLITS] == [170, 10, 20]
    assert m["counts"]["train"]["annotations"] == 850


def test_split_deterministic_and_seeded(tmp_path):
    rows = v1_rows(120)
    _, a = prepare(tmp_path, rows, "a")
    _, b = prepare(tmp_path, rows, "b")
    for f in sorted(p.name for p in a.iterdir() if p.name != "manifest.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # Row order does not matter; the seed does.
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert split_paintings([r[1] for r in shuffled]) == split_paintings([r[1] for r in rows])
    assert split_paintings([r[1] for r in rows], seed=7) != split_paintings([r[1] for r in rows])


def test_tiny_dataset_keeps_a_training_painting(tmp_path):
    m, out = prepare(tmp_path, v1_rows(2))
    assert m["counts"]["train"]["images"] == 2 and m["counts"]["test"]["images"] == 0


# --------------------------------------------------------------------------- filtering rules


def test_repetition_41_set_aside(tmp_path):
    rows = v1_rows(40)
    rows += [["Impressionism", "heavy", "awe", LONG.format(k), 41] for k in range(41)]
    rows += [["Impressionism", "forty", "awe", LONG.format(k), 40] for k in range(40)]
    m, out = prepare(tmp_path, rows)
    all_ids = set().union(*(load_split(out, s) for s in SPLITS))
    assert "Impressionism/heavy" not in all_ids and "Impressionism/forty" in all_ids
    assert m["set_aside"] == {"rule": "repetition >= 41", "paintings": 1, "annotations": 41}


def test_short_utterances_dropped_but_emotion_counted(tmp_path):
    rows = [
        ["Cubism", "p", "fear", "too short to keep", 4],  # 4 tokens
        ["Cubism", "p", "fear", "this one has five tokens", 4],
        ["Cubism", "p", "awe", "Wow!!! Look at that sky!", 4],  # 5 tokens once cleaned
        ["Cubism", "p", "awe", "...", 4],  # no words at all
        ["Cubism", "q", "sadness", "so sad", 1],  # the painting's only utterance is short
    ]
    m, out = prepare(tmp_path, rows)
    train = load_split(out, "train")
    assert set(train) == {"Cubism/p"}
    p = train["Cubism/p"]
    assert p["explanations"] == ["this one has five tokens", "wow look at that sky"]
    assert p["explanations_raw"] == ["this one has five tokens", "Wow!!! Look at that sky!"]
    assert p["emotions"] == ["fear", "awe"]
    # The distribution counts every valid annotation, short ones included (ArtEmis histograms).
    assert p["emotion_distribution"][EMOTIONS.index("fear")] == 0.5
    assert p["dominant_emotion"] is None  # fear 2, awe 2
    assert m["dropped_short_utterances"]["total"] == 3
    assert m["dropped_short_utterances"]["rule"] == "fewer than 5 tokens"


def test_split_json_schema_and_nfc_ids(tmp_path):
    nfd = unicodedata.normalize("NFD", "café-nuit")
    rows = [
        ["Fauvism", nfd, "contentment", "A warm, calm café at night.", 2],
        ["Fauvism", nfd, "contentment", "i love the yellow light here", 2],
    ]
    _, out = prepare(tmp_path, rows)
    train = load_split(out, "train")
    ((image_id, entry),) = train.items()
    assert image_id == "Fauvism/café-nuit" and image_id == unicodedata.normalize("NFC", image_id)
    assert set(entry) == {
        "image_name",
        "art_style",
        "painting",
        "emotions",
        "explanations",
        "explanations_raw",
        "sources",
        "emotion_distribution",
        "dominant_emotion",
    }
    assert entry["sources"] == ["v1", "v1"]
    assert entry["image_name"] == "Fauvism/café-nuit.jpg"
    assert entry["dominant_emotion"] == "contentment"
    assert entry["emotion_distribution"][EMOTIONS.index("contentment")] == 1.0


# --------------------------------------------------------------------------- COCO and manifest


def test_coco_references(tmp_path):
    _, out = prepare(tmp_path, v1_rows(60))
    for s in SPLITS:
        grouped = load_split(out, s)
        coco = json.loads((out / f"{s}_coco.json").read_text(encoding="utf-8"))
        assert [im["id"] for im in coco["images"]] == list(range(len(grouped)))
        assert all(isinstance(a["id"], int) and isinstance(a["image_id"], int) for a in coco["annotations"])
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        assert set(coco["image_id_to_coco_id"]) == set(grouped)
        for image_id, coco_id in coco["image_id_to_coco_id"].items():
            caps = [a["caption"] for a in coco["annotations"] if a["image_id"] == coco_id]
            assert caps == grouped[image_id]["explanations"]
            assert coco["images"][coco_id]["sevlm_image_id"] == image_id
            assert coco["images"][coco_id]["file_name"] == grouped[image_id]["image_name"]


def test_manifest_contents(tmp_path):
    rows = v1_rows(100) + [["Impressionism", "bad", "joy", LONG.format(0), 5]]
    csv_path = write_csv(tmp_path / "v1.csv", rows)
    m = prepare_dataset(csv_path, tmp_path / "d", skip_bad_rows=True, seed=5, protocol="sevlm", progress=False)
    on_disk = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert on_disk == m
    src = m["sources"]["artemis_csv"]
    assert src["sha256"] == sha256_file(csv_path) and src["path"] == str(csv_path.resolve())
    assert src["rows"] == 501 and src["rows_read"] == 500
    assert m["skipped_rows"] == {"unknown_emotion": 1}
    assert "v1.csv: line 502" in m["skipped_examples"][0]
    assert m["seed"] == 5 and m["sevlm_version"] and m["images_dir"] is None
    assert m["emotions"] == list(EMOTIONS)
    assert sum(m["counts"][s]["images"] for s in SPLITS) == 100
    for f in m["files"]:
        assert (tmp_path / "d" / f).is_file()


# --------------------------------------------------------------------------- ArtEmis v2 Combined


def _v1_and_v2(tmp_path):
    """A v1 CSV of 200 paintings and a Contrastive.csv (no repetition column, an extra column)
    with rows on training, validation and test paintings, new paintings and one short row."""
    v1_csv = write_csv(tmp_path / "v1.csv", v1_rows(200))
    prepare_dataset(v1_csv, tmp_path / "v1only", protocol="sevlm", progress=False)
    ids = {s: sorted(load_split(tmp_path / "v1only", s)) for s in SPLITS}
    header = ["art_style", "painting", "emotion", "utterance", "anchor_painting"]
    v2 = [[*ids["train"][i].split("/"), "sadness", LONG.format(f"sad {i}"), "x"] for i in range(30)]
    v2 += [["Impressionism", f"new-{i}", "fear", LONG.format(f"new {i}"), "y"] for i in range(10)]
    v2 += [[*ids["test"][0].split("/"), "anger", LONG.format(f"test {i}"), "z"] for i in range(5)]
    v2 += [[*ids["val"][1].split("/"), "awe", LONG.format(f"val {i}"), "z"] for i in range(3)]
    v2 += [["Impressionism", "new-0", "fear", "too short", "y"]]
    return v1_csv, write_csv(tmp_path / "Contrastive.csv", v2, header), ids


def test_v2_combined_test_set_and_training_subsets(tmp_path):
    v1_csv, v2_csv, ids = _v1_and_v2(tmp_path)
    base = json.loads((tmp_path / "v1only" / "manifest.json").read_text())
    m = prepare_dataset(v1_csv, tmp_path / "comb", contrastive_csv=v2_csv, protocol="sevlm", progress=False)
    assert m["train_subset"] == "combined" and m["training_set"].startswith("combined")
    assert m["combined"] == {
        "v1_train_annotations_available": 850,
        "v1_train_annotations_used": 40,
        "v2_new_paintings": 10,
    }
    by_source = {s: m["counts"][s]["annotations_by_source"] for s in SPLITS}
    assert by_source == {
        "train": {"v1": 40, "v2": 40},
        "val": {"v1": base["counts"]["val"]["annotations"], "v2": 3},
        "test": {"v1": base["counts"]["test"]["annotations"], "v2": 5},
    }
    assert m["sources"]["contrastive_csv"]["sha256"] == sha256_file(v2_csv)
    assert m["dropped_short_utterances"]["v2_train"] == 1
    splits = {s: load_split(tmp_path / "comb", s) for s in SPLITS}
    # Every valid v2 annotation is in exactly one split, and val/test paintings are v1's.
    v2_texts = [
        x for s in SPLITS for v in splits[s].values() for x, src in zip(v["explanations"], v["sources"]) if src == "v2"
    ]
    assert len(v2_texts) == len(set(v2_texts)) == 48
    assert {s: sorted(splits[s]) for s in ("val", "test")} == {s: ids[s] for s in ("val", "test")}
    test_entry = splits["test"][ids["test"][0]]
    assert test_entry["sources"].count("v2") == 5 and test_entry["dominant_emotion"] == "anger"  # 5 of 10 votes
    assert "Impressionism/new-3" in splits["train"]
    assert splits["train"]["Impressionism/new-0"]["emotion_distribution"][EMOTIONS.index("fear")] == 1.0

    every = prepare_dataset(
        v1_csv, tmp_path / "all", contrastive_csv=v2_csv, train_subset="all", protocol="sevlm", progress=False
    )
    assert every["train_subset"] == "all" and every["training_set"].startswith("all")
    assert every["counts"]["train"]["annotations_by_source"] == {"v1": 850, "v2": 40}
    assert every["combined"]["v1_train_annotations_used"] == 850
    for s in ("val", "test"):  # the subset changes training only
        assert (tmp_path / "all" / f"{s}.json").read_bytes() == (tmp_path / "comb" / f"{s}.json").read_bytes()
    with pytest.raises(ConfigError, match="unknown training subset 'most'"):
        prepare_dataset(
            v1_csv, tmp_path / "x", contrastive_csv=v2_csv, train_subset="most", protocol="sevlm", progress=False
        )
    with pytest.raises(ConfigError, match="needs ArtEmis v2"):
        prepare_dataset(v1_csv, tmp_path / "x", train_subset="all", protocol="sevlm", progress=False)


# --------------------------------------------------------------------------- bad input

GOOD = ["Cubism", "p1", "awe", LONG.format(1), "5"]
BAD_ROWS = [
    ("unknown_emotion", ["Cubism", "p2", "happiness", LONG.format(2), "5"], "unknown emotion 'happiness'"),
    ("empty_utterance", ["Cubism", "p2", "awe", "   ", "5"], "empty utterance"),
    ("malformed_row", ["Cubism", "p2", "awe", LONG.format(2)], "4 fields, the header has 5"),
    ("malformed_row", ["Cubism", "p2", "awe", LONG.format(2), "5", "extra"], "6 fields"),
    ("bad_repetition", ["Cubism", "p2", "awe", LONG.format(2), "five"], "repetition 'five'"),
    ("empty_name", ["Cubism", "", "awe", LONG.format(2), "5"], "empty art_style or painting"),
]


@pytest.mark.parametrize("reason, bad, words", BAD_ROWS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_ROWS)])
def test_bad_row_raises_naming_file_and_line(tmp_path, reason, bad, words):
    path = write_csv(tmp_path / "bad.csv", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as err:
        prepare_dataset(path, tmp_path / "out", protocol="sevlm", progress=False)
    msg = str(err.value)
    assert str(path) in msg and "line 4" in msg and words in msg
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("reason, bad, words", BAD_ROWS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_ROWS)])
def test_bad_row_skipped_and_counted(tmp_path, reason, bad, words):
    path = write_csv(tmp_path / "bad.csv", [GOOD, bad, GOOD, bad])
    m = prepare_dataset(path, tmp_path / "out", skip_bad_rows=True, protocol="sevlm", progress=False)
    assert m["skipped_rows"] == {reason: 2}
    assert m["sources"]["artemis_csv"]["rows"] == 4 and m["sources"]["artemis_csv"]["rows_read"] == 2
    assert len(m["skipped_examples"]) == 2 and "line 3" in m["skipped_examples"][0]


def test_undecodable_row_is_a_row_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        b"art_style,painting,emotion,utterance,repetition\n"
        b"Cubism,p1,awe,the colours in this painting are nice,5\n"
        b"Cubism,p2,awe,the caf\xe9 in this painting is nice,5\n"
    )
    with pytest.raises(DataError, match=r"latin1\.csv: line 3: text is not valid UTF-8"):
        prepare_dataset(path, tmp_path / "out", protocol="sevlm", progress=False)
    m = prepare_dataset(path, tmp_path / "out", skip_bad_rows=True, protocol="sevlm", progress=False)
    assert m["skipped_rows"] == {"not_utf8": 1}


@pytest.mark.parametrize(
    "content, words",
    [
        (
            b"art_style,painting,emotion,utterance\nCubism,p,awe,nice painting of a tree,5\n",
            "line 1: missing column(s) 'repetition'",
        ),
        (b"style,title,feeling,text,rep\nCubism,p,awe,x,5\n", "missing column(s) 'art_style', 'painting'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00" + bytes(range(256)) * 4, "not a CSV file (binary data"),
        (bytes(range(128, 256)) * 20, "not a CSV file (not UTF-8 text"),
        (b'{"art_style": "Cubism", "painting": "p"}\n', "not a CSV file (it looks like JSON)"),
        (b'[{"a": 1}]', "not a CSV file (it looks like JSON)"),
        (b"", "file is empty"),
        (b"art_style\tpainting\temotion\tutterance\trepetition\nCubism\tp\tawe\tnice tree here\t5\n", "tab-separated"),
        (b"lorem ipsum dolor sit amet\nconsectetur adipiscing elit\n", "missing column(s)"),
    ],
    ids=["missing-column", "wrong-header", "binary", "not-utf8", "json-object", "json-list", "empty", "tsv", "garbage"],
)
@pytest.mark.parametrize("skip", [False, True], ids=["strict", "skip"])
def test_not_an_artemis_csv(tmp_path, content, words, skip):
    path = tmp_path / "input.csv"
    path.write_bytes(content)
    # File-level problems cannot be skipped row by row.
    with pytest.raises(DataError) as err:
        prepare_dataset(path, tmp_path / "out", skip_bad_rows=skip, protocol="sevlm", progress=False)
    assert str(path) in str(err.value) and words in str(err.value)


def test_bad_rows_in_contrastive_csv_named_and_counted(tmp_path):
    v1_csv = write_csv(tmp_path / "v1.csv", v1_rows(20))
    v2_csv = write_csv(
        tmp_path / "Contrastive.csv",
        [["Impressionism", "new", "joy", LONG.format(0)], ["Impressionism", "new", "awe", LONG.format(1)]],
        HEADER[:4],
    )
    with pytest.raises(DataError, match=r"Contrastive\.csv: line 2: unknown emotion 'joy'"):
        prepare_dataset(v1_csv, tmp_path / "o", contrastive_csv=v2_csv, protocol="sevlm", progress=False)
    m = prepare_dataset(
        v1_csv, tmp_path / "o", contrastive_csv=v2_csv, skip_bad_rows=True, protocol="sevlm", progress=False
    )
    assert m["sources"]["contrastive_csv"]["skipped_rows"] == {"unknown_emotion": 1}
    assert m["skipped_rows"] == {"unknown_emotion": 1}


def test_missing_csv_and_images_dir(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        prepare_dataset(tmp_path / "nope.csv", tmp_path / "o", protocol="sevlm", progress=False)
    path = write_csv(tmp_path / "v1.csv", v1_rows(3))
    with pytest.raises(DataError, match="no-images: images folder not found"):
        prepare_dataset(path, tmp_path / "o", images_dir=tmp_path / "no-images", protocol="sevlm", progress=False)


def test_load_split_errors(tmp_path):
    with pytest.raises(DataError, match="train.json: file not found"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split(tmp_path, "dev")


# --------------------------------------------------------------------------- Unicode names vs files


def test_nfc_and_nfd_names_match_image_files(tmp_path):
    nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    images = tmp_path / "wikiart"
    # On disk: one file stored NFD, one stored NFC, style folder stored NFD.
    (images / nfd("Art_Nouveau_(Modérne)")).mkdir(parents=True)
    (images / nfd("Art_Nouveau_(Modérne)") / nfd("émile-gallé_vase.jpg")).write_bytes(b"jpg")
    (images / nfd("Art_Nouveau_(Modérne)") / nfc("zoë-dürer_rose.jpg")).write_bytes(b"jpg")
    rows = [
        # CSV spells the first NFC, the second NFD: both must still find their files.
        [nfc("Art_Nouveau_(Modérne)"), nfc("émile-gallé_vase"), "awe", LONG.format(1), 2],
        [nfc("Art_Nouveau_(Modérne)"), nfc("émile-gallé_vase"), "awe", LONG.format(2), 2],
        [nfd("Art_Nouveau_(Modérne)"), nfd("zoë-dürer_rose"), "contentment", LONG.format(3), 1],
        [nfc("Art_Nouveau_(Modérne)"), "missing-painting", "fear", LONG.format(4), 1],
    ]
    with pytest.raises(
        DataError, match=r"1 of 3 images not found \(33%; e\.g\. .*missing-painting\).*--allow-missing-images"
    ):
        prepare(tmp_path, rows, images_dir=images)
    m, out = prepare(tmp_path, rows, images_dir=images, allow_missing_images=True)
    assert m["images_dir"] == str(images.resolve())
    assert m["missing_images"] == {"count": 1, "examples": [nfc("Art_Nouveau_(Modérne)/missing-painting")]}
    train = load_split(out, "train")
    assert set(train) == {nfc("Art_Nouveau_(Modérne)/émile-gallé_vase"), nfc("Art_Nouveau_(Modérne)/zoë-dürer_rose")}
    for image_id, entry in train.items():
        assert image_id == nfc(image_id)
        assert (images / entry["image_name"]).is_file()  # the on-disk spelling, whatever its form
    assert train[nfc("Art_Nouveau_(Modérne)/émile-gallé_vase")]["image_name"] == nfd(
        "Art_Nouveau_(Modérne)/émile-gallé_vase.jpg"
    )
    assert Counter(e for v in train.values() for e in v["emotions"]) == {"awe": 2, "contentment": 1}


# --------------------------------------------------------------------------- stray quotes


def _with_stray_quote(path: Path, rows, open_at: int, close_at: int | None = None) -> Path:
    """Write `rows`, then put a quote before the utterance on line `open_at` and (optionally)
    one after the utterance on line `close_at`, as a hand edit would."""
    write_csv(path, rows)
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[open_at - 1] = lines[open_at - 1].replace(",the colours", ',"the colours')
    if close_at:
        lines[close_at - 1] = lines[close_at - 1].replace(",5", '",5')
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("close_at", [30, None], ids=["closed-20-lines-later", "never-closed"])
def test_stray_quote_is_one_bad_line(tmp_path, close_at):
    rows = v1_rows(146, per=5)  # 730 rows: lines 2..731
    path = _with_stray_quote(tmp_path / "stray.csv", rows, open_at=10, close_at=close_at)
    runs_to = close_at or 731
    with pytest.raises(
        DataError,
        match=rf"stray\.csv: line 10: malformed CSV \(unbalanced quote: the quoted "
        rf"field opened on this line runs on to line {runs_to}\)",
    ):
        prepare_dataset(path, tmp_path / "out", protocol="sevlm", progress=False)
    m = prepare_dataset(path, tmp_path / "out", skip_bad_rows=True, protocol="sevlm", progress=False)
    assert m["skipped_rows"] == {"malformed_row": 1}
    assert m["sources"]["artemis_csv"]["rows"] == 730 and m["sources"]["artemis_csv"]["rows_read"] == 729
    explanations = [x for s in SPLITS for v in load_split(tmp_path / "out", s).values() for x in v["explanations"]]
    assert len(explanations) == 729 and max(len(x) for x in explanations) < 60


def test_well_formed_multiline_utterance_is_kept(tmp_path):
    rows = [GOOD, ["Cubism", "p2", "awe", 'so "calm",\nlike a lake at dawn, i said', "5"], GOOD]
    path = write_csv(tmp_path / "multi.csv", rows)
    m = prepare_dataset(path, tmp_path / "out", protocol="sevlm", progress=False)
    assert m["sources"]["artemis_csv"]["rows"] == 3 and m["skipped_rows"] == {}
    entry = load_split(tmp_path / "out", "train")["Cubism/p2"]
    assert entry["explanations_raw"] == ['so "calm",\nlike a lake at dawn, i said']
    # The row after it is numbered by its physical line.
    bad = write_csv(tmp_path / "multi_bad.csv", rows + [["Cubism", "p3", "joy", LONG.format(3), "5"]])
    with pytest.raises(DataError, match=r"multi_bad\.csv: line 6: unknown emotion 'joy'"):
        prepare_dataset(bad, tmp_path / "out2", protocol="sevlm", progress=False)


# --------------------------------------------------------------------------- empty input, missing images


@pytest.mark.parametrize("skip", [False, True], ids=["strict", "skip"])
def test_header_only_csv_is_an_error(tmp_path, skip):
    path = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(DataError, match=r"empty\.csv: no data rows \(the file has only a header\)"):
        prepare_dataset(path, tmp_path / "out", skip_bad_rows=skip, protocol="sevlm", progress=False)
    assert not (tmp_path / "out").exists()


def test_no_usable_rows_is_an_error(tmp_path):
    path = write_csv(
        tmp_path / "bad.csv", [["Cubism", "p", "joy", LONG.format(1), 5], ["Cubism", "q", "awe", "short", 5]]
    )
    with pytest.raises(
        DataError,
        match=r"bad\.csv: no training annotations left \(of 2 rows: 1 bad, 1 utterances "
        r"under 5 tokens, 0 images not found\)",
    ):
        prepare_dataset(path, tmp_path / "out", skip_bad_rows=True, protocol="sevlm", progress=False)


def _images_for(root: Path, rows, skip: int = 0) -> Path:
    """A folder with the .jpg of every painting in `rows` but the first `skip`."""
    ids = sorted({(r[0], r[1]) for r in rows})
    for style, painting in ids[skip:]:
        (root / style).mkdir(parents=True, exist_ok=True)
        (root / style / f"{painting}.jpg").write_bytes(b"jpg")
    return root


def test_missing_images_threshold(tmp_path):
    rows = v1_rows(40)
    csv_path = write_csv(tmp_path / "v1.csv", rows)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: 40 of 40 images not found \(100%"):
        prepare_dataset(csv_path, tmp_path / "a", images_dir=tmp_path / "empty", protocol="sevlm", progress=False)
    with pytest.raises(DataError, match="no training annotations left .* 40 images not found"):
        prepare_dataset(
            csv_path,
            tmp_path / "a",
            images_dir=tmp_path / "empty",
            allow_missing_images=True,
            protocol="sevlm",
            progress=False,
        )
    # 2 of 40 (5%) is at the threshold: left out and counted without the flag.
    m = prepare_dataset(
        csv_path, tmp_path / "b", images_dir=_images_for(tmp_path / "img2", rows, 2), protocol="sevlm", progress=False
    )
    assert m["missing_images"]["count"] == 2 and sum(c["images"] for c in m["counts"].values()) == 38
    # 3 of 40 is above it.
    images3 = _images_for(tmp_path / "img3", rows, 3)
    with pytest.raises(DataError, match=r"3 of 40 images not found \(8%.*--allow-missing-images"):
        prepare_dataset(csv_path, tmp_path / "c", images_dir=images3, protocol="sevlm", progress=False)
    m = prepare_dataset(
        csv_path, tmp_path / "c", images_dir=images3, allow_missing_images=True, protocol="sevlm", progress=False
    )
    assert m["missing_images"]["count"] == 3 and sum(c["images"] for c in m["counts"].values()) == 37


# --------------------------------------------------------------------------- the output folder


def test_interrupted_reprepare_leaves_the_old_dataset_whole(tmp_path, monkeypatch):
    import sevlm.data.folder as artemis

    old_csv = write_csv(tmp_path / "old.csv", v1_rows(60, seed=0))
    new_csv = write_csv(tmp_path / "new.csv", v1_rows(80, seed=1))
    out = tmp_path / "ds"
    prepare_dataset(old_csv, out, protocol="sevlm", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real_write, calls = artemis.write_json, []

    def dies_on_the_fourth_file(path, *a, **kw):
        calls.append(path)
        if len(calls) == 4:  # train, train_coco, val written: the process dies here
            raise KeyboardInterrupt
        return real_write(path, *a, **kw)

    monkeypatch.setattr(artemis, "write_json", dies_on_the_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(new_csv, out, protocol="sevlm", progress=False)
    monkeypatch.setattr(artemis, "write_json", real_write)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "new.csv", "old.csv"]  # no temporary left
    # A run killed outright (no cleanup) leaves its half-built folder; the next run removes it,
    # but not a folder of other files that happens to share the pattern.
    (tmp_path / ".ds.abc123.tmp").mkdir()
    (tmp_path / ".ds.abc123.tmp" / "train.json").write_text("{}")
    (tmp_path / ".ds.mine.tmp").mkdir()
    (tmp_path / ".ds.mine.tmp" / "notes.txt").write_text("keep")
    # An uninterrupted rerun replaces it whole.
    m = prepare_dataset(new_csv, out, protocol="sevlm", progress=False)
    assert sum(c["images"] for c in m["counts"].values()) == 80
    assert sum(len(load_split(out, s)) for s in SPLITS) == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.mine.tmp", "ds", "new.csv", "old.csv"]


def test_out_folder_must_be_a_dataset_folder(tmp_path):
    csv_path = write_csv(tmp_path / "v1.csv", v1_rows(10))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "features.h5").write_bytes(b"precious")
    with pytest.raises(DataError, match=r"busy: not a dataset folder \(it holds features\.h5\)"):
        prepare_dataset(csv_path, tmp_path / "busy", protocol="sevlm", progress=False)
    assert (tmp_path / "busy" / "features.h5").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file: exists and is not a folder"):
        prepare_dataset(csv_path, tmp_path / "file", protocol="sevlm", progress=False)
    (tmp_path / "emptydir").mkdir()
    prepare_dataset(csv_path, tmp_path / "emptydir", protocol="sevlm", progress=False)
    assert (tmp_path / "emptydir" / "manifest.json").is_file()
    # What `evaluate` derives from the old dataset is dropped with it.
    (tmp_path / "emptydir" / "emo_classifier").mkdir()
    prepare_dataset(csv_path, tmp_path / "emptydir", protocol="sevlm", progress=False)
    assert sorted(p.name for p in (tmp_path / "emptydir").iterdir()) == sorted(
        [f"{s}.json" for s in SPLITS] + [f"{s}_coco.json" for s in SPLITS] + ["manifest.json"]
    )


def test_outputs_follow_the_umask(tmp_path):
    import os

    csv_path = write_csv(tmp_path / "v1.csv", v1_rows(10))
    old = os.umask(0o027)
    try:
        prepare_dataset(csv_path, tmp_path / "ds", protocol="sevlm", progress=False)
        prepare_dataset(csv_path, tmp_path / "ds", protocol="sevlm", progress=False)  # the replacing path too
    finally:
        os.umask(old)
    assert (tmp_path / "ds").stat().st_mode & 0o777 == 0o750
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ds").iterdir()}
    assert modes == dict.fromkeys(modes, 0o640) and len(modes) == 7

"""ArtEmis's protocol (`prepare --protocol artemis`): each rule of ArtEmis's deep-net
preprocessing on cases worked out by hand from its code, the split, the length cut, the rest
split, preprocessed input, and the command line."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from sevlm.data.artemis import prepare_dataset
from sevlm.data.artemis_protocol import artemis_split, is_preprocessed, too_long_threshold
from sevlm.data.artemis_text import ArtemisText, unquote, word_tokenize
from sevlm.errors import ConfigError, DataError

sys.path.insert(0, str(Path(__file__).parent))
import artemis_like  # noqa: E402


@pytest.fixture(scope="module")
def text() -> ArtemisText:
    return ArtemisText()


# --------------------------------------------------------------------------- text rules


def test_manual_sentence_spelling_then_lower_case(text):
    # ArtEmis's sentence table matches the utterance as written, before lower case.
    assert text.tokens("Iliketoplayinthesnow") == "i like to play in the snow".split()
    assert text.tokens("thesoftcolors") == ["the", "soft", "colors"]
    # Not the whole utterance: no sentence spelling, and SymSpell cannot mend a run-together phrase.
    assert text.tokens("thesoftcolors.")[0] != "the"


def test_contractions(text):
    # "can't" -> "cannot" (ArtEmis's table), which nltk's tokeniser then splits into "can", "not".
    assert text.tokens("I can't see") == ["i", "can", "not", "see"]
    assert text.tokens("Y'all won't") == ["you", "all", "will", "not"]
    # Matched anywhere in the text, case-insensitively, as ArtEmis's unanchored regex does.
    assert text.clean("IT'S") == "it is"
    # A curly apostrophe is not in the table: left for the tokeniser.
    assert "it’s" in text.clean("it’s")


def test_unquote_and_punctuation(text):
    assert unquote("the 'sad' man") == "the  sad  man"
    assert unquote('a "big" |tree| here') == "a  big   tree  here"
    assert unquote("don't") == "don't"  # no closing quote after a word: unchanged
    assert text.clean("look: a boat!/ship-like") == "look  a boat  ship like"
    assert text.tokens("the 'sad' man, alone...") == ["the", "sad", "man", "alone"]


def test_manual_token_spelling(text):
    assert text.tokens("im so happy") == ["i", "am", "so", "happy"]  # one token becomes two
    assert text.tokens("the colour") == ["the", "color"]  # in GloVe, but ArtEmis's own table maps it


def test_symspell_only_outside_the_vocabulary(text):
    assert text.tokens("a lonley tree") == ["a", "lonely", "tree"]  # not a GloVe word: corrected
    assert text.tokens("grey skies") == ["grey", "skies"]  # GloVe words are left alone
    assert text.tokens("xqzvw") == ["xqzvw"]  # no suggestion: kept as it is
    # ArtEmis calls lookup(token, 1): verbosity 1 and the dictionary's distance, 2. "beautfl"
    # is two edits from "beauty" (and "beautiful"): corrected, where a distance of 1 would keep it.
    assert text.tokens("beautfl") == ["beauty"]
    assert ArtemisText(spell_check=False).tokens("a lonley tree") == ["a", "lonley", "tree"]


def test_counters(text):
    t = ArtemisText()
    t.tokens("I can't see the lonley colour")
    assert t.stats["contractions_expanded"] == 1
    assert t.stats["tokens_spelled_manually"] == 1  # colour
    assert t.stats["tokens_corrected"] == 1  # lonley
    assert t.stats["tokens_spell_checked"] == 1


def test_fast_tokeniser_path_equals_nltk():
    from nltk.tokenize import word_tokenize as nltk_tokenize

    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789     '\"()&+é"
    words = ["cannot", "gonna", "wanna", "gimme", "gotta", "lemme", "can", "not", "the", "a1", "'t", "'s"]
    for _ in range(3000):
        if rng.random() < 0.5:
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        else:
            s = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        assert word_tokenize(s) == nltk_tokenize(s, preserve_line=True), s


# --------------------------------------------------------------------------- split and length


def test_split_of_a_known_id_list():
    # ArtEmis: sorted ids; train vs the rest with test_size = 0.05 + 0.1 (= 0.15000000000000002 in
    # floating point, so ceil(x * 20) = 4 paintings, not 3); then test = round(0.1 * 20) = 2 of the
    # rest. scikit-learn's ShuffleSplit takes a RandomState(seed) permutation: the first n_test
    # indices are the test part, the next the train part.
    ids = [f"Style{i % 3}painting-{i:02d}" for i in range(20)]
    got = artemis_split(reversed(ids), seed=2021)
    order = sorted(ids)
    perm = np.random.RandomState(2021).permutation(20)
    rest, train = [order[i] for i in perm[:4]], [order[i] for i in perm[4:]]
    perm2 = np.random.RandomState(2021).permutation(4)
    test, val = [rest[i] for i in perm2[:2]], [rest[i] for i in perm2[2:]]
    assert sorted(k for k, s in got.items() if s == "train") == sorted(train) and len(train) == 16
    assert sorted(k for k, s in got.items() if s == "val") == sorted(val) and len(val) == 2
    assert sorted(k for k, s in got.items() if s == "test") == sorted(test) and len(test) == 2


def test_split_too_small_is_refused():
    with pytest.raises(DataError, match="--protocol sevlm"):
        artemis_split(["a", "b", "c"])


def test_percentile_cut_by_hand():
    # numpy's linear interpolation: position 0.95 * 9 = 8.55 between 13 and 30 -> 13 + 0.55 * 17.
    assert too_long_threshold([5, 6, 7, 8, 9, 10, 11, 12, 13, 30]) == pytest.approx(22.35)
    assert too_long_threshold([5, 6, 7], 100) == 7


def _rows_for(n_paintings, lengths, heavy=()):
    """Rows whose utterance of painting i has lengths[i % len] plain words (no spelling at play)."""
    rows = []
    for i in range(n_paintings):
        rep = 41 if i in heavy else 5
        for k in range(rep):
            n = lengths[(i + k) % len(lengths)]
            rows.append(["Impressionism", f"p-{i:03d}", "awe", " ".join(["tree"] * n), rep])
    return rows


def test_length_rules_rest_split_and_manifest(tmp_path):
    lengths = [3] + [6, 8, 10, 12] * 6 + [40]  # 40 in under 5% of rows: above the 95th percentile
    rows = _rows_for(60, lengths, heavy={0, 1})
    path = artemis_like.write(tmp_path / "raw.csv", rows)
    m = prepare_dataset(path, tmp_path / "ds", progress=False)
    assert m["protocol"] == "artemis"
    rep = m["artemis"]
    # The threshold is the 95th percentile of the train rows' lengths (before any drop).
    train_keys = {
        k for k, s in artemis_split([f"Impressionismp-{i:03d}" for i in range(2, 60)]).items() if s == "train"
    }
    train_lengths = [len(r[3].split()) for r in rows if r[0] + r[1] in train_keys]
    threshold = float(np.percentile(train_lengths, 95))
    assert rep["too_long"]["threshold"] == pytest.approx(threshold) and 12 <= threshold < 40
    kept = {s: json.loads((tmp_path / "ds" / f"{s}.json").read_text()) for s in ("train", "val", "test", "rest")}
    every = [x for s in kept.values() for v in s.values() for x in v["explanations"]]
    assert every and all(5 <= len(x.split()) <= threshold for x in every)
    assert rep["too_short"]["dropped"] == sum(len(r[3].split()) < 5 for r in rows)
    assert rep["too_long"]["dropped"] == sum(len(r[3].split()) > threshold for r in rows)
    # The heavily re-annotated paintings are the rest split, and only there.
    assert set(kept["rest"]) == {"Impressionism/p-000", "Impressionism/p-001"}
    assert not {"Impressionism/p-000", "Impressionism/p-001"} & (
        set(kept["train"]) | set(kept["val"]) | set(kept["test"])
    )
    assert m["counts"]["rest"]["images"] == 2 and "rest.json" in m["files"]
    assert m["counts"]["train"]["paintings_in_split"] == len(train_keys)


def test_explanations_are_spelled_and_raw_text_kept(tmp_path):
    rows = [
        ["Impressionism", f"p-{i:03d}", "awe", "I can't stop looking at the lonley 'grey' sea", 5]
        for i in range(40)
        for _ in range(5)
    ]
    path = artemis_like.write(tmp_path / "raw.csv", rows)
    prepare_dataset(path, tmp_path / "ds", progress=False)
    rec = next(iter(json.loads((tmp_path / "ds" / "train.json").read_text()).values()))
    assert rec["explanations"][0] == "i can not stop looking at the lonely grey sea"
    assert rec["explanations_raw"][0] == "I can't stop looking at the lonley 'grey' sea"
    coco = json.loads((tmp_path / "ds" / "train_coco.json").read_text())
    assert coco["annotations"][0]["caption"] == "i can not stop looking at the lonely grey sea"


# --------------------------------------------------------------------------- preprocessed input


def _write_preprocessed(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "art_style",
                "painting",
                "emotion",
                "utterance",
                "repetition",
                "split",
                "tokens_len",
                "utterance_spelled",
                "version",
            ]
        )
        w.writerows(rows)
    return path


def test_preprocessed_csv_is_taken_as_given(tmp_path):
    rows = [
        ["Cubism", f"p{i}", "fear", "Raw text!", 5, split, 6, f"spelled text number {i} here", "old"]
        for i, split in enumerate(["train"] * 6 + ["val", "test", "rest"])
    ]
    rows.append(["Cubism", "p9", "awe", "x", 5, "train", 6, "new version text here ok", "new"])
    path = _write_preprocessed(tmp_path / "artemis_preprocessed.csv", rows)
    assert is_preprocessed(path)
    m = prepare_dataset(path, tmp_path / "ds", progress=False)
    assert m["protocol"] == "artemis-preprocessed"
    train = json.loads((tmp_path / "ds" / "train.json").read_text())
    assert train["Cubism/p0"]["explanations"] == ["spelled text number 0 here"]
    assert train["Cubism/p0"]["explanations_raw"] == ["Raw text!"]
    assert train["Cubism/p9"]["sources"] == ["v2"]
    for split, painting in (("val", "p6"), ("test", "p7"), ("rest", "p8")):
        assert list(json.loads((tmp_path / "ds" / f"{split}.json").read_text())) == [f"Cubism/{painting}"]

    # v2: a test CSV replaces the training CSV's test rows.
    test = _write_preprocessed(
        tmp_path / "test_all.csv", [["Cubism", "q1", "awe", "r", 5, "test", 5, "the released test text", "new"]]
    )
    m = prepare_dataset(path, tmp_path / "v2", test_csv=test, progress=False)
    assert list(json.loads((tmp_path / "v2" / "test.json").read_text())) == ["Cubism/q1"]
    assert m["artemis-preprocessed"]["test_rows_replaced_by_test_csv"] == 1
    assert m["sources"]["test_csv"]["rows"] == 1


def test_preprocessed_input_errors(tmp_path):
    good = ["Cubism", "p1", "fear", "t", 5, "train", 5, "one two three four five", "old"]
    path = _write_preprocessed(
        tmp_path / "bad.csv", [good, ["Cubism", "p2", "fear", "t", 5, "holdout", 5, "one two three four five", "old"]]
    )
    with pytest.raises(DataError, match=r"bad\.csv: line 3: split 'holdout' is not one of: train, val, test, rest"):
        prepare_dataset(path, tmp_path / "o", progress=False)
    both = _write_preprocessed(tmp_path / "both.csv", [good, [*good[:5], "test", *good[6:]]])
    with pytest.raises(DataError, match="Cubism/p1 is in both the train and the test split"):
        prepare_dataset(both, tmp_path / "o", progress=False)
    raw = artemis_like.write(tmp_path / "raw.csv", [["Cubism", "p1", "fear", "one two three four five", 5]])
    with pytest.raises(ConfigError, match="--test-csv goes with a preprocessed CSV"):
        prepare_dataset(raw, tmp_path / "o", test_csv=both, progress=False)
    with pytest.raises(ConfigError, match="already preprocessed"):
        prepare_dataset(both, tmp_path / "o", contrastive_csv=raw, progress=False)
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        prepare_dataset(raw, tmp_path / "o", protocol="nope", progress=False)


# --------------------------------------------------------------------------- parity and the CLI


PARITY = Path(__file__).parent / "fixtures" / "artemis_parity"


def test_parity_with_artemis_own_output(tmp_path):
    """`raw.csv` (written by artemis_like.py) and `artemis_preprocessed.csv`, the output of
    ArtEmis's own preprocess_artemis_data.py --preprocess-for-deep-nets True on it (columns
    trimmed): the raw route reproduces it painting for painting and text for text, and the
    preprocessed route gives the same dataset files byte for byte."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from compare_artemis import compare, read_artemis, read_sevlm

    prepare_dataset(PARITY / "raw.csv", tmp_path / "raw", progress=False)
    report = compare(read_artemis(PARITY / "artemis_preprocessed.csv"), read_sevlm(tmp_path / "raw"))
    for split, r in report.items():
        assert r["artemis_paintings"] > 0, split
        assert (
            r["artemis_paintings"]
            == r["sevlm_paintings"]
            == r["same_paintings"]
            == r["paintings_with_same_explanations"]
        ), (split, r)
        assert r["artemis_annotations"] == r["sevlm_annotations"], (split, r)
    prepare_dataset(PARITY / "artemis_preprocessed.csv", tmp_path / "pre", progress=False)
    for split in ("train", "val", "test", "rest"):
        for suffix in ("", "_coco"):
            name = f"{split}{suffix}.json"
            assert (tmp_path / "raw" / name).read_bytes() == (tmp_path / "pre" / name).read_bytes(), name


def test_cli_protocols(tmp_path, capsys):
    from sevlm import cli

    raw = PARITY / "raw.csv"
    assert cli.main(["prepare", "--artemis-csv", str(raw), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "protocol: artemis" in out and "rest :" in out and "corrected by SymSpell" in out
    assert cli.main(["prepare", "--artemis-csv", str(raw), "--protocol", "sevlm", "--out", str(tmp_path / "s")]) == 0
    assert "protocol: sevlm" in capsys.readouterr().out
    assert not (tmp_path / "s" / "rest.json").exists() and (tmp_path / "a" / "rest.json").exists()
    assert (
        cli.main(
            [
                "prepare",
                "--format",
                "generic",
                "--input",
                str(raw),
                "--images",
                str(tmp_path),
                "--protocol",
                "artemis",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 1
    )
    assert "--protocol: ArtEmis options" in capsys.readouterr().err


def test_v2_rows_follow_their_painting_under_artemis_protocol(tmp_path):
    v1 = [
        ["Impressionism", f"p-{i:03d}", "awe", "a calm and lonley sea at night", 5] for i in range(40) for _ in range(5)
    ]
    v2 = [
        ["Impressionism", "p-000", "fear", "the sea isn't calm at all"],  # 7 tokens: the 95th percentile
        ["Impressionism", "new-1", "awe", "a brand new painting of the sea"],
    ]
    v1_csv = artemis_like.write(tmp_path / "v1.csv", v1)
    v2_csv = tmp_path / "v2.csv"
    with open(v2_csv, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["art_style", "painting", "emotion", "utterance"], *v2])
    m = prepare_dataset(v1_csv, tmp_path / "ds", contrastive_csv=v2_csv, train_subset="all", progress=False)
    split_of = artemis_split([f"Impressionismp-{i:03d}" for i in range(40)])
    data = {s: json.loads((tmp_path / "ds" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    home = split_of["Impressionismp-000"]
    assert "the sea is not calm at all" in data[home]["Impressionism/p-000"]["explanations"]
    assert data["train"]["Impressionism/new-1"]["sources"] == ["v2"]  # new in v2: it trains
    assert data["train"]["Impressionism/new-1"]["explanations"] == ["a brand new painting of the sea"]
    v1_train = [v for k, v in data["train"].items() if k != "Impressionism/new-1"]
    assert v1_train and all(v["explanations"][0] == "a calm and lonely sea at night" for v in v1_train)
    assert m["combined"]["v2_new_paintings"] == 1

"""coco-caption metrics, emotion metrics and every bad-input case of sevlm.evaluation.metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.evaluation import metrics as M


@pytest.fixture(scope="module")
def evaluation(good_predictions, dataset_dir):
    return M.evaluate(good_predictions, dataset_dir / "test.json")


def test_scores_equal_pycocoevalcap_own(evaluation, good_predictions, test_refs):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds = [json.loads(line) for line in good_predictions.read_text().splitlines()]
    # the way coco-caption's own COCOEvalCap prepares its inputs
    tok = PTBTokenizer()
    gts = tok.tokenize(
        {p["image_id"]: [{"caption": c} for c in test_refs[p["image_id"]]["explanations"]] for p in preds}
    )
    res = tok.tokenize({p["image_id"]: [{"caption": p["explanation"]}] for p in preds})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, meteor_per = M.get_meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    expected = {
        "BLEU-1": bleu[0],
        "BLEU-2": bleu[1],
        "BLEU-3": bleu[2],
        "BLEU-4": bleu[3],
        "METEOR": meteor,
        "ROUGE-L": rouge,
        "CIDEr": cider,
    }
    for key, value in expected.items():
        assert evaluation.report[key] == pytest.approx(value, abs=1e-12), key
    assert set(M.LANGUAGE_METRICS) <= set(evaluation.report)
    assert "SPICE" in evaluation.report["unavailable"] and "SPICE" not in evaluation.report
    np.testing.assert_allclose(evaluation.captions.per_image["METEOR"], meteor_per)
    # corpus BLEU recomputed from the kept per-image statistics is coco's corpus BLEU
    np.testing.assert_allclose(M.bleu_from_stats(evaluation.captions.bleu_stats.sum(0)), bleu, rtol=1e-12)


def test_caption_metrics_hand_checkable():
    s = M.caption_metrics(
        {"x": "a b c d", "y": "p q r s t u"},
        {"x": ["a b c e"], "y": ["p q r s t u", "zz"]},
        tokenize=False,
    )
    x, y = s.image_ids.index("x"), s.image_ids.index("y")
    # x: 3/4 unigrams, 2/3 bigrams, 1/2 trigrams, 0/1 4-grams match; same length, no brevity penalty
    assert s.per_image["BLEU-1"][x] == pytest.approx(0.75)
    assert s.per_image["BLEU-2"][x] == pytest.approx(np.sqrt(0.75 * 2 / 3))
    assert s.per_image["BLEU-3"][x] == pytest.approx((0.75 * 2 / 3 * 0.5) ** (1 / 3))
    assert s.per_image["BLEU-4"][x] < 1e-3
    assert s.per_image["ROUGE-L"][x] == pytest.approx(0.75)  # LCS 3 of 4 both ways
    # y equals one of its references
    for n in range(1, 5):
        assert s.per_image[f"BLEU-{n}"][y] == pytest.approx(1.0)
    assert s.per_image["ROUGE-L"][y] == pytest.approx(1.0)
    assert s.per_image["METEOR"][y] > 0.99 > s.per_image["METEOR"][x]
    # corpus BLEU-1: (3 + 6) / (4 + 6) matched unigrams, reference lengths 4 + 6 (closest)
    assert s.corpus["BLEU-1"] == pytest.approx(0.9)
    assert s.corpus["ROUGE-L"] == pytest.approx(0.875)
    assert s.corpus["CIDEr"] == pytest.approx(s.per_image["CIDEr"].mean())


def test_emotion_metrics_hand_checkable():
    pred = ["awe", "awe", "fear", "banana", "sadness", "awe"]
    dom = ["awe", "fear", "fear", "fear", None, "sadness"]
    out = M.emotion_metrics(pred, dom)
    assert out["emotion_accuracy_n"] == 5  # the None image is not counted
    assert out["emotion_accuracy"] == pytest.approx(2 / 5)
    cm = np.array(out["confusion_matrix"]["counts"])
    assert cm.shape == (9, 10) and cm.sum() == 5
    awe, fear, sad = (EMOTIONS.index(e) for e in ("awe", "fear", "sadness"))
    assert cm[fear, awe] == 1 and cm[fear, fear] == 1 and cm[fear, 9] == 1 and cm[sad, awe] == 1
    assert out["per_class"]["awe"]["precision"] == pytest.approx(1 / 3)
    assert out["per_class"]["fear"]["recall"] == pytest.approx(1 / 3)
    assert out["per_class"]["fear"]["precision"] == pytest.approx(1.0)
    assert out["per_class"]["sadness"]["support"] == 1 and out["per_class"]["sadness"]["recall"] == 0
    assert M.emotion_metrics(["awe"], [None]) == {"emotion_accuracy": None, "emotion_accuracy_n": 0}


def test_text_stats():
    out = M.text_stats(["A red  sky", "a red sky", "blue sea here now"])
    assert out["distinct_explanations_share"] == pytest.approx(2 / 3)
    assert out["mean_length_words"] == pytest.approx((3 + 3 + 4) / 3)


def test_report_values(evaluation, test_refs):
    r = evaluation.report
    # even images copy a human emotion equal to the dominant one; odd ones say "awe"
    dominant = [e["dominant_emotion"] for e in test_refs.values()]
    expected = np.mean([True if k % 2 == 0 else d == "awe" for k, d in enumerate(dominant)])
    assert r["emotion_accuracy"] == pytest.approx(expected)
    assert r["emotion_accuracy_n"] == 12 and r["n_predictions"] == 12 and r["coverage"] == 1.0
    assert r["emotion_not_one_of_9_share"] == 0 and r["warnings"] == {}
    assert r["distinct_explanations_share"] == pytest.approx(7 / 12)  # 6 copies + 1 repeated sentence


def _refs(tmp_path, entries: dict):
    path = tmp_path / "refs.json"
    path.write_text(
        json.dumps(
            {k: {"emotions": v, "explanations": [f"text {i}" for i in range(len(v))]} for k, v in entries.items()}
        )
    )
    return path


def test_dominance_edge_cases(tmp_path):
    refs = M.load_references(
        _refs(
            tmp_path,
            {
                "tie": ["fear", "fear", "awe", "awe"],
                "half": ["fear", "fear", "awe", "sadness"],
                "half_tie": ["fear", "awe"],
                "below_half": ["fear", "fear", "awe", "sadness", "anger"],
                "single": ["awe"],
                "majority": ["sadness", "sadness", "awe"],
            },
        )
    )
    got = {k: r.dominant for k, r in refs.items()}
    assert got == {
        "tie": None,
        "half": "fear",
        "half_tie": None,
        "below_half": None,
        "single": "awe",
        "majority": "sadness",
    }


def test_stored_dominant_emotion_wins(tmp_path):
    # `sevlm prepare` takes the dominant emotion over all votes, including annotations whose
    # utterance was dropped, so it may differ from the kept `emotions`
    path = tmp_path / "refs.json"
    path.write_text(
        json.dumps(
            {
                "pool": {"emotions": ["awe", "fear"], "explanations": ["a", "b"], "dominant_emotion": "fear"},
                "none": {"emotions": ["awe", "awe"], "explanations": ["a", "b"], "dominant_emotion": None},
            }
        )
    )
    refs = M.load_references(path)
    assert refs["pool"].dominant == "fear" and refs["none"].dominant is None


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"emotions": ["awe"], "explanations": []}, "non-empty list"),
        ({"emotions": ["awe", "fear"], "explanations": ["x"]}, "as long as"),
        ({"emotions": ["joy"], "explanations": ["x"]}, "unknown emotion 'joy'"),
        ({"emotions": ["awe"], "explanations": ["  "]}, "empty explanation"),
        (
            {"emotions": ["awe"], "explanations": ["x"], "dominant_emotion": "joy"},
            "dominant_emotion 'joy' is not one of",
        ),
        ("not an object", "not an object"),
    ],
)
def test_bad_references(tmp_path, entry, message):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"Style/img": entry}))
    with pytest.raises(DataError, match=message) as e:
        M.load_references(path)
    assert str(path) in str(e.value) and "Style/img" in str(e.value)


def test_broken_reference_json(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text('{"a": ')
    with pytest.raises(DataError, match="not valid JSON"):
        M.load_references(path)


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"image_id": "a", "emotion": "awe", "explanation": "x"}', '{"image_id": "b", "emotion"'],
            r":2: not valid JSON",
        ),
        (["[1, 2]"], r":1: expected a JSON object"),
        (['{"image_id": "a", "explanation": "x"}'], r":1: missing key 'emotion'"),
        (['{"image_id": "a", "emotion": "awe", "explanation": null}'], r":1: 'explanation' must be a string"),
        (
            [
                '{"image_id": "a", "emotion": "awe", "explanation": "x"}',
                "",
                '{"image_id": "a", "emotion": "fear", "explanation": "y"}',
            ],
            r":3: duplicate prediction for image 'a' \(first at line 1\)",
        ),
        ([""], r"no predictions"),
    ],
)
def test_bad_prediction_files(tmp_path, lines, message, jsonl):
    path = jsonl(tmp_path / "p.jsonl", lines)
    with pytest.raises(DataError, match=message) as e:
        M.load_predictions(path)
    assert str(path) in str(e.value)


def test_null_emotion_is_read_as_invalid_label(tmp_path, jsonl):
    path = jsonl(tmp_path / "p.jsonl", ['{"image_id": "a", "emotion": null, "explanation": "x", "raw": "joyful"}'])
    (pred,) = M.load_predictions(path)
    assert pred.emotion == "" and pred.emotion not in EMOTIONS


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        M.load_predictions(tmp_path / "nope.jsonl")


def _pred(image_id, emotion="awe", explanation="x", line=1):
    return M.Prediction(image_id, emotion, explanation, line)


def test_unknown_and_missing_ids(tmp_path):
    refs = M.load_references(_refs(tmp_path, {"a": ["awe"], "b": ["fear"], "c": ["fear"]}))
    with pytest.raises(DataError, match=r"p.jsonl:2: image 'zzz' is not in the references"):
        M.align([_pred("a"), _pred("zzz", line=2)], refs, "p.jsonl", strict=True)
    with pytest.raises(DataError, match=r"2 of 3 reference images have no prediction"):
        M.align([_pred("a")], refs, "p.jsonl", strict=True)
    kept, warnings = M.align([_pred("a"), _pred("zzz", line=2), _pred("b", "joy", " ")], refs, "p.jsonl", strict=False)
    assert [p.image_id for p in kept] == ["a", "b"]
    assert warnings == {
        "unknown_image_id": 1,
        "missing_prediction": 1,
        "empty_explanation": 1,
        "emotion_not_one_of_9": 1,
    }
    with pytest.raises(DataError, match="no prediction matches"):
        M.align([_pred("zzz")], refs, "p.jsonl", strict=False)


def test_lenient_evaluation_counts_and_scores_empty(tmp_path, dataset_dir, test_refs, jsonl):
    ids = list(test_refs)
    rows = [
        {"image_id": ids[0], "emotion": "joy", "explanation": ""},
        {
            "image_id": ids[1],
            "emotion": test_refs[ids[1]]["dominant_emotion"],
            "explanation": test_refs[ids[1]]["explanations"][0],
        },
        {"image_id": "Unknown/img", "emotion": "awe", "explanation": "x"},
    ]
    path = jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError):
        M.evaluate(path, dataset_dir / "test.json")
    ev = M.evaluate(path, dataset_dir / "test.json", strict=False)
    r = ev.report
    assert r["warnings"] == {
        "unknown_image_id": 1,
        "missing_prediction": 10,
        "empty_explanation": 1,
        "emotion_not_one_of_9": 1,
    }
    assert r["n_predictions"] == 2 and r["coverage"] == pytest.approx(2 / 12)
    assert r["emotion_accuracy"] == pytest.approx(0.5) and r["emotion_not_one_of_9_share"] == pytest.approx(0.5)
    k = ev.captions.image_ids.index(ids[0])
    for name in ("BLEU-1", "METEOR", "ROUGE-L", "CIDEr"):  # the empty explanation scores zero, it is not dropped
        assert ev.captions.per_image[name][k] == pytest.approx(0.0, abs=1e-6), name
    assert r["emotions"]["confusion_matrix"]["counts"][EMOTIONS.index(test_refs[ids[0]]["dominant_emotion"])][9] == 1


# ----------------------------------------------------------------------------- how the language reads
def test_distinct_n_pools_all_texts():
    texts = ["A b a b", "a, c"]  # words: a b a b a c; bigrams: ab ba ab ac
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert M.distinct_n(["one"], 2) is None and M.distinct_n([], 1) is None


def test_repeated_bigram_share():
    texts = ["the dark and the dark and", "a calm sea under a calm sky", "the the the", "a calm sea", "the sky the sea"]
    assert [M.has_repeated_bigram(t) for t in texts] == [True, True, True, False, False]
    assert M.repeated_bigram_share(texts) == pytest.approx(3 / 5)
    assert M.repeated_bigram_share([]) is None


def test_copied_share_compares_cleaned_text():
    training = ["The sky is blue.", "the sea is calm"]
    corpus = {"the sky is blue", "the sea is calm"}
    assert M.copied_share(["the sky is  BLUE!", "the sky is blue today", "The sea, is calm"], corpus) == pytest.approx(
        2 / 3
    )
    out = M.language_stats(["the sky is blue", "a new sentence here"], ["x"], training)
    assert out["copied_training_share"] == 0.5
    assert M.language_stats(["a"], ["b"])["copied_training_share"] is None  # no training split given


def test_metaphor_rate_uses_artemis_phrases_as_whole_words():
    texts = [
        "It looks like a storm",
        "this likely hurts",
        "Reminds me of home",
        "plain words",
        "she is like a ghost",
        "it could be a dream",
        "the figure resembles my father",
        "I think of summer",
    ]
    assert M.metaphor_rate(texts) == pytest.approx(6 / 8)
    assert M.metaphor_rate([]) is None
    assert {"looks like", "reminds me", "is like", "could be", "resembles", "think of"} <= set(M.METAPHOR_PHRASES)


def test_language_figures_in_the_report(tmp_path):
    refs = {
        "a": {"emotions": ["awe"], "explanations": ["it looks like the sea at night"]},
        "b": {"emotions": ["fear"], "explanations": ["dark shapes frighten me"]},
    }
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "pred.jsonl").write_text(
        json.dumps({"image_id": "a", "emotion": "awe", "explanation": "the dark and the dark and"})
        + "\n"
        + json.dumps({"image_id": "b", "emotion": "fear", "explanation": "a calm sea"})
        + "\n"
    )
    r = M.evaluate(tmp_path / "pred.jsonl", tmp_path / "refs.json", training_texts=["A calm sea."]).report
    # words: the dark and the dark and a calm sea (9, 6 distinct); bigrams: 5 (3 distinct) + 2 = 7, 5 distinct
    assert r["distinct_1"] == pytest.approx(6 / 9) and r["distinct_2"] == pytest.approx(5 / 7)
    assert r["repeated_bigram_share"] == 0.5 and r["copied_training_share"] == 0.5
    assert r["metaphor_rate_generated"] == 0.0 and r["metaphor_rate_human"] == 0.5
    assert r["mean_length_words"] == 4.5 and r["human_mean_length_words"] == 5.5


def test_coco_caption_file_as_references_is_named(tmp_path, test_refs, capsys):
    from sevlm.data.folder import coco_references

    path = tmp_path / "test_coco.json"
    path.write_text(json.dumps(coco_references(test_refs, "test")))
    with pytest.raises(DataError) as e:
        M.load_references(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: this is a COCO caption file") and f"pass {tmp_path / 'test.json'} instead" in msg
    other = tmp_path / "captions.json"
    other.write_text(path.read_text())
    with pytest.raises(
        DataError, match=r"captions.json: this is a COCO caption file .*grouped JSON \(e.g. DATASET/test.json\)"
    ):
        M.load_references(other)
    # the command line prints it on one line
    from sevlm.cli import main

    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"image_id": next(iter(test_refs)), "emotion": "awe", "explanation": "a sky"}) + "\n")
    assert (
        main(["evaluate", "--predictions", str(pred), "--references", str(path), "--out", str(tmp_path / "R.json")])
        == 1
    )
    err = capsys.readouterr().err
    assert "this is a COCO caption file" in err and str(path) in err and "Traceback" not in err


def test_because_last_scores_after_the_last_because(tmp_path, jsonl):
    assert M.explanation_after("it is dark because she lost him ", "first") == "it is dark because she lost him"
    assert M.explanation_after("it is dark because she lost him", "last") == "she lost him"
    assert M.explanation_after("it is dark BECAUSE the night", "last") == "the night"
    assert M.explanation_after("the becauses of life", "last") == "the becauses of life"  # whole words only
    with pytest.raises(ValueError, match="because rule must be one of first, last"):
        M.explanation_after("x", "middle")
    refs = tmp_path / "refs.json"
    refs.write_text(
        json.dumps(
            {
                "a": {"emotions": ["fear"], "explanations": ["she lost him"]},
                "b": {"emotions": ["awe"], "explanations": ["the sky is vast"]},
            }
        )
    )
    preds = jsonl(
        tmp_path / "p.jsonl",
        [
            {"image_id": "a", "emotion": "fear", "explanation": "it is dark because she lost him"},
            {"image_id": "b", "emotion": "awe", "explanation": "the sky is vast"},
        ],
    )
    first = M.evaluate(preds, refs)
    last = M.evaluate(preds, refs, because="last")
    assert [p.explanation for p in last.predictions] == ["she lost him", "the sky is vast"]
    assert (first.report["because"], last.report["because"]) == ("first", "last")
    assert last.report["explanations_cut_at_a_later_because"] == 1
    assert first.report["explanations_cut_at_a_later_because"] == 0
    assert last.report["BLEU-1"] == pytest.approx(1.0) and first.report["BLEU-1"] < 0.9


def test_a_200000_character_explanation_is_cut_and_evaluate_exits(dataset_dir, test_refs, jsonl, tmp_path):
    """The issue's case: one 200,000-character explanation hung `sevlm evaluate` (METEOR's jar died,
    pycocoevalcap's Meteor.__del__ then waited forever on its lock). It is cut to
    MAX_EXPLANATION_CHARS before scoring, counted in the report, and the process exits."""
    import subprocess
    import sys

    rows = [
        {"image_id": i, "emotion": r["emotions"][0], "explanation": r["explanations"][0]} for i, r in test_refs.items()
    ]
    rows[0]["explanation"] = "the sky is calm and blue " * 8000  # 200,000 characters
    pred = jsonl(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "report" / "R.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sevlm.cli",
            "evaluate",
            "--predictions",
            str(pred),
            "--references",
            str(dataset_dir / "test.json"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["warnings"]["explanation_truncated"] == 1 and 0 <= report["METEOR"] <= 1
    assert M.MAX_EXPLANATION_CHARS == 2000


def test_a_dead_meteor_process_is_one_error_naming_the_prediction():
    import os
    import signal

    meteor = M.get_meteor()
    assert meteor.compute_score({"a": ["the sky is calm"]}, {"a": ["the sky is calm"]})[0] == pytest.approx(1.0)
    os.killpg(meteor.proc.pid, signal.SIGKILL)  # as when the jar dies on a line
    meteor.proc.wait()
    with pytest.raises(
        DataError,
        match=r"^METEOR \(Java\) stopped while scoring the prediction for image 'b' "
        r"\(11 characters\)",
    ):
        meteor.compute_score({"b": ["a red house"]}, {"b": ["a red house"]})
    assert meteor.proc.poll() is not None
    fresh = M.get_meteor()  # the next call starts a new process
    assert fresh is not meteor and fresh.compute_score({"c": ["a dog"]}, {"c": ["a dog"]})[0] == pytest.approx(1.0)


@pytest.mark.slow
def test_meteor_dying_on_a_200000_character_line_names_the_prediction():
    """Without the cut: the jar dies on the line; the error names the prediction and nothing hangs."""
    with pytest.raises(DataError, match=r"METEOR \(Java\) .* the prediction for image 'long' \(200000 characters\)"):
        M.get_meteor().compute_score(
            {"ok": ["a red house"], "long": ["the sky is calm"]},
            {"ok": ["a red house"], "long": ["the sky is blue " * 12500]},
        )


def test_meteor_scorer_equals_pycocoevalcaps_meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {"a": ["the sky is calm", "a quiet blue sky"], "b": ["a red house by the sea"], "c": ["dark scary woods"]}
    res = {"a": ["the calm sky"], "b": ["a house near the sea"], "c": ["a bright sunny field"]}
    theirs = Meteor()
    try:
        expected = theirs.compute_score(gts, res)
    finally:
        theirs.meteor_p.kill()
        theirs.meteor_p.wait()
    got = M.get_meteor().compute_score(gts, res)
    assert got[0] == expected[0] and got[1] == expected[1]


def test_a_key_given_twice_in_a_prediction_line_is_an_error(tmp_path):
    path = tmp_path / "pred.jsonl"
    path.write_text(
        '{"image_id": "a", "emotion": "awe", "explanation": "x"}\n'
        '{"image_id": "b", "emotion": "awe", "emotion": "fear", "explanation": "y"}\n'
    )
    with pytest.raises(DataError, match=r"pred\.jsonl:2: key 'emotion' appears twice"):
        M.load_predictions(path)

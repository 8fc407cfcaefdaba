"""Dominant-emotion rules: ArtEmis's (>= half, unique maximum) and the SEVLM authors' (> half)."""

from __future__ import annotations

import itertools
import json

import pytest

from sevlm.emotions import dominant_emotion, dominant_from_distribution, emotion_distribution
from sevlm.errors import ConfigError
from sevlm.evaluation import metrics as M


@pytest.mark.parametrize(
    "emotions, artemis, strict",
    [
        (["fear", "fear", "awe"], "fear", "fear"),
        (["fear", "fear", "awe", "sadness"], "fear", None),  # exactly half: only ArtEmis's rule
        (["fear", "awe"], None, None),  # half each: a tie
        (["fear", "fear", "awe", "awe"], None, None),
        (["fear", "fear", "awe", "sadness", "anger"], None, None),
        (["awe"], "awe", "awe"),
        ([], None, None),
    ],
)
def test_rules(emotions, artemis, strict):
    assert dominant_emotion(emotions) == artemis
    assert dominant_emotion(emotions, rule="artemis") == artemis
    assert dominant_emotion(emotions, rule="strict-majority") == strict


def test_distribution_gives_the_same_answer_as_the_votes():
    # every multiset of up to 8 votes over 3 emotions: shares compare exactly with one half
    for n in range(1, 9):
        for votes in itertools.combinations_with_replacement(("awe", "fear", "something else"), n):
            dist = emotion_distribution(votes)
            for rule in ("artemis", "strict-majority"):
                assert dominant_from_distribution(dist, rule) == dominant_emotion(votes, rule), (votes, rule)


def test_unknown_rule_is_refused():
    with pytest.raises(ConfigError, match="'majority'.*artemis, strict-majority"):
        dominant_emotion(["awe"], rule="majority")


def _entry(kept: list[str], pool: list[str]) -> dict:
    """A `prepare`-style entry: `pool` is every vote, `kept` those with a long-enough utterance."""
    return {
        "emotions": kept,
        "explanations": [f"text {i} about it" for i in range(len(kept))],
        "emotion_distribution": emotion_distribution(pool),
        "dominant_emotion": dominant_emotion(pool),
    }


@pytest.fixture
def tie_refs(tmp_path):
    refs = {
        "half": _entry(["fear", "awe"], ["fear", "fear", "awe", "sadness"]),  # artemis fear, strict none
        "clear": _entry(["awe", "awe"], ["awe", "awe", "awe"]),
        "tie": _entry(["sadness", "fear"], ["sadness", "sadness", "fear", "fear"]),
        "wrong": _entry(["anger", "fear"], ["anger", "anger", "anger", "fear"]),
    }
    path = tmp_path / "test.json"
    path.write_text(json.dumps(refs))
    preds = [
        {"image_id": "half", "emotion": "fear", "explanation": "a dark figure"},
        {"image_id": "clear", "emotion": "awe", "explanation": "a vast sky"},
        {"image_id": "tie", "emotion": "sadness", "explanation": "a grey room"},
        {"image_id": "wrong", "emotion": "fear", "explanation": "a red face"},
    ]
    pred_path = tmp_path / "pred.jsonl"
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return path, pred_path


def test_dominance_is_recomputed_from_every_vote(tie_refs):
    refs_path, _ = tie_refs
    artemis = {k: r.dominant for k, r in M.load_references(refs_path).items()}
    strict = {k: r.dominant for k, r in M.load_references(refs_path, "strict-majority").items()}
    # "half" keeps only one fear explanation, but its votes (fear 2 of 4) decide
    assert artemis == {"half": "fear", "clear": "awe", "tie": None, "wrong": "anger"}
    assert strict == {"half": None, "clear": "awe", "tie": None, "wrong": "anger"}


@pytest.mark.slow
def test_artemis_rule_gives_todays_figures(dataset_dir, good_predictions, test_refs):
    # today's figures come from the stored dominant_emotion: the recomputed artemis rule agrees
    ev = M.evaluate(good_predictions, dataset_dir / "test.json", dominance="artemis")
    preds = [json.loads(line) for line in good_predictions.read_text().splitlines()]
    stored = [(M.normalise_emotion(p["emotion"]), test_refs[p["image_id"]]["dominant_emotion"]) for p in preds]
    hits = [p == d for p, d in stored if d is not None]
    assert ev.report["emotion_accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert ev.report["emotion_accuracy_n"] == len(hits) and ev.report["dominance"] == "artemis"


@pytest.mark.slow
def test_evaluate_command_records_the_rule(tmp_path, tie_refs):
    from tests.evaluation.test_report import evaluate_cli

    refs_path, pred_path = tie_refs
    reports = {}
    for rule in ("artemis", "strict-majority"):
        out = tmp_path / rule / "REPORT.json"
        assert (
            evaluate_cli(
                [
                    "--predictions",
                    str(pred_path),
                    "--references",
                    str(refs_path),
                    "--dominance",
                    rule,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        reports[rule] = json.loads(out.read_text())
        assert reports[rule]["dominance"] == rule
        assert f"(dominance rule: {rule})" in out.with_suffix(".md").read_text()
    # artemis: half, clear, wrong have a dominant emotion (2 of 3 right); strict: clear, wrong (1 of 2)
    assert (reports["artemis"]["emotion_accuracy"], reports["artemis"]["emotion_accuracy_n"]) == (
        pytest.approx(2 / 3),
        3,
    )
    assert (reports["strict-majority"]["emotion_accuracy"], reports["strict-majority"]["emotion_accuracy_n"]) == (
        0.5,
        2,
    )
    # the language scores do not depend on the rule
    assert reports["artemis"]["BLEU-4"] == reports["strict-majority"]["BLEU-4"]


@pytest.mark.slow
def test_significance_follows_the_rule(tie_refs):
    from sevlm.evaluation.significance import compare

    refs_path, pred_path = tie_refs
    for rule, accuracy in (("artemis", 2 / 3), ("strict-majority", 1 / 2)):
        out = compare(pred_path, pred_path, refs_path, n_resamples=20, dominance=rule)
        assert out["dominance"] == rule and "emo_classifier" not in out
        assert out["metrics"]["emotion_accuracy"]["a"] == pytest.approx(accuracy)

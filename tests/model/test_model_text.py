"""Tokenizer special tokens, sequence layout, pair sampling."""

from __future__ import annotations

import numpy as np
import pytest

from sevlm.errors import DataError
from sevlm.text import IGNORE_INDEX, SequenceBuilder, derangement


def test_special_tokens(tok, builder):
    ids = builder.ids
    assert ids.pad >= tok.vocab_size  # a new token, not a real word
    assert len({ids.pad, ids.eos, ids.emotion, ids.explanation}) == 4
    assert ids.vocab_size == len(tok) == 50260
    assert tok.decode(list(ids.prompt)) == "the emotion is"


def test_encode_layout(tok, builder):
    e = builder.encode("something else", "the dark sky")
    ids, n = e["input_ids"], int(e["attention_mask"].sum())
    text = tok.decode(ids[:n])
    assert text == "the emotion is something else because the dark sky<|endoftext|>"
    b = list(ids).index(builder.ids.because)
    assert b == 5  # prompt (3) + "something else" (2): found from the tokens
    assert (e["segment_ids"][:b] == builder.ids.emotion).all()
    assert (e["segment_ids"][b:n] == builder.ids.explanation).all()
    assert (e["labels"][:n] == ids[:n]).all() and (e["labels"][n:] == IGNORE_INDEX).all()
    assert (ids[n:] == builder.ids.pad).all() and ids[n - 1] == builder.ids.eos
    # VAD: "dark" and "sky" in the table, "the"/"because" not, EOS zero
    pieces = tok.convert_ids_to_tokens(ids[:n])
    assert e["vad_mask"][pieces.index("Ġdark")] and not e["vad_mask"][pieces.index("Ġbecause")]
    assert not e["vad_mask"][n - 1] and not e["vad"][n:].any()


def test_truncation_keeps_eos(builder):
    e = builder.encode("awe", " ".join(["sky"] * 50))
    assert e["attention_mask"].sum() == builder.max_len
    assert e["input_ids"][-1] == builder.ids.eos


def test_causal_vad_input_vs_whole_word_target(tok, lexicon):
    b = SequenceBuilder(tok, lexicon, max_len=20)
    e = b.encode("contentment", "calm")
    pieces = tok.convert_ids_to_tokens(e["input_ids"][:8])
    i = pieces.index("Ġcontent")
    assert pieces[i + 1] == "ment"
    np.testing.assert_allclose(e["vad"][i], lexicon.table["content"])  # word so far
    np.testing.assert_allclose(e["vad_target"][i], lexicon.table["contentment"])  # whole word
    np.testing.assert_allclose(e["vad"][i + 1], lexicon.table["contentment"])


def test_collate_pairs(builder, make_samples):
    samples = make_samples(3)
    samples[2]["emotions"] = ["awe", "awe", "awe"]
    rng = np.random.default_rng(0)
    batch = builder.collate(samples, rng)
    assert batch["input_ids"].shape == (6, builder.max_len)
    assert batch["vad"].shape == (6, builder.max_len, 3)
    assert batch["visual"].shape == (3, 5, 16)
    assert batch["seq_image"].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch["pair_valid"].tolist() == [True, True, False]
    for i in range(2):  # the two sequences of a valid image carry different emotions
        a, b = (builder.tok.decode(batch["input_ids"][2 * i + k][3:5]) for k in range(2))
        assert a.split(" because")[0] != b.split(" because")[0]
    neg = batch["visual_negative"].tolist()
    assert sorted(neg) == [0, 1, 2] and all(n != i for i, n in enumerate(neg))
    ev = builder.collate_eval(samples)
    assert ev["input_ids"].shape == (3, builder.max_len) and ev["seq_image"].tolist() == [0, 1, 2]


def test_collate_errors(builder, make_samples):
    bad = make_samples(1)
    bad[0]["explanations"] = []
    with pytest.raises(DataError, match="s/p0"):
        builder.collate(bad, np.random.default_rng(0))


def test_derangement():
    rng = np.random.default_rng(1)
    for n in range(2, 9):
        p = derangement(n, rng)
        assert sorted(p.tolist()) == list(range(n)) and (p != np.arange(n)).all()
    assert derangement(1, rng).tolist() == [-1]

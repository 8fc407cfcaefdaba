"""Tokenizer special tokens, sequence layout, pair sampling."""

from __future__ import annotations

import numpy as np
import pytest

from sevlm.data.vad import VADLexicon, vad_for_tokens
from sevlm.errors import DataError
from sevlm.text import IGNORE_INDEX, SequenceBuilder, derangement
from sevlm.vocab import prompt_ids, sequence_text


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


def test_truncation_adds_no_eos(tok, builder):
    """A cut explanation gets no end-of-text target: the model must not learn to stop mid-sentence."""
    e = builder.encode("awe", " ".join(["sky"] * 50))
    assert e["attention_mask"].sum() == builder.max_len
    assert builder.ids.eos not in e["input_ids"].tolist()
    assert tok.decode(e["labels"][-1:].tolist()) == " sky"  # the last target is a word of the text
    assert e["vad_mask"][-1] and e["vad_target_mask"][-1]  # the last token is a word, with its VAD
    # a sequence that fits exactly, EOS included, keeps its EOS
    n_text = len(tok(sequence_text("awe", "sky"), add_special_tokens=False)["input_ids"])
    words = builder.max_len - n_text  # n_text - 1 + words + EOS tokens = max_len
    fits = builder.encode("awe", " ".join(["sky"] * words))
    assert fits["attention_mask"].sum() == builder.max_len and fits["input_ids"][-1] == builder.ids.eos


def test_vad_targets_are_explanation_tokens_only(tok, builder):
    """The label ("sadness" is in the table) and the prompt are never VAD-head targets."""
    e = builder.encode("sadness", "a sad woman")
    n = int(e["attention_mask"].sum())
    pieces = tok.convert_ids_to_tokens(e["input_ids"][:n])
    b = pieces.index("Ġbecause")
    assert e["vad_mask"][pieces.index("Ġsadness")]  # the label keeps its VAD *input*
    assert not e["vad_target_mask"][: b + 1].any()
    assert e["vad_target_mask"][pieces.index("Ġsad")] and e["vad_target_mask"][pieces.index("Ġwoman")]


def test_bos_prompt(tok, lexicon, builder):
    bb = SequenceBuilder(tok, lexicon, max_len=20, bos_prompt=True)
    assert prompt_ids(tok, bos_prompt=True) == list(bb.ids.prompt) == [tok.bos_token_id] + list(builder.ids.prompt)
    plain, bos = builder.encode("awe", "the bright sky"), bb.encode("awe", "the bright sky")
    n = int(plain["attention_mask"].sum())
    assert bos["input_ids"][0] == tok.bos_token_id and bos["segment_ids"][0] == bb.ids.emotion
    assert not bos["vad"][0].any() and not bos["vad_mask"][0]
    for k in ("input_ids", "segment_ids", "vad", "vad_mask", "vad_target", "vad_target_mask"):
        np.testing.assert_array_equal(bos[k][1 : n + 1], plain[k][:n], err_msg=k)


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


@pytest.mark.slow
def test_words_in_progress_get_exact_lookups(nrc_vad_path, tok):
    """Real NRC-VAD and tokenizer: a piece that does not end its word gets the exact entry of
    the word so far or nothing; lemmatised, the prefix of 187 multi-piece words would borrow
    another word's vector ("abysmal" -> "abys" -> "aby")."""
    nrc = VADLexicon.from_file(nrc_vad_path)
    words = [w for w in nrc.table if w.isascii() and w.isalpha()]
    texts = [" " + w for w in words]
    enc = tok(texts, return_offsets_mapping=True, add_special_tokens=False)
    multi = 0
    for w, text, offsets in zip(words, texts, enc["offset_mapping"]):
        if len(offsets) < 2:
            continue
        multi += 1
        vad, mask = vad_for_tokens(text, offsets, nrc, causal=True)
        for (_, end), v, m in zip(offsets, vad, mask):
            exact = nrc.table.get(text[1:end])
            assert m == (exact is not None), (w, text[1:end])
            np.testing.assert_array_equal(v, exact if exact is not None else np.zeros(3))
        target, tmask = vad_for_tokens(text, offsets, nrc)  # the target stays the whole word's
        on_word = np.array([e > 1 for _, e in offsets])  # not a bare-space piece ("Ġ" of " urn")
        assert (tmask == on_word).all() and (target[on_word] == nrc.table[w]).all()
    assert multi > 9000
    text = " abysmal"
    offsets = tok(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    assert [text[1:e] for _, e in offsets][:2] == ["ab", "abys"] and nrc.lookup("abys") is not None
    vad, mask = vad_for_tokens(text, offsets, nrc, causal=True)
    assert not mask[1] and not vad[1].any()

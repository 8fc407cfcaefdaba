"""VAD lexicon loading, lemmatising lookups and word-level alignment to GPT-2 BPE tokens."""

from __future__ import annotations

import numpy as np
import pytest

from sevlm.data.vad import VADLexicon, vad_for_tokens
from sevlm.errors import DataError
from sevlm.vocab import load_tokenizer


@pytest.fixture(scope="module")
def nrc(nrc_vad_path):
    return VADLexicon.from_file(nrc_vad_path)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _write(tmp_path, text, name="lex.tsv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_from_file_bipolar_header_optional(tmp_path):
    with_header = VADLexicon.from_file(_write(tmp_path, "Word\tValence\tArousal\tDominance\nsad\t0.25\t0.5\t1.0\n"))
    without = VADLexicon.from_file(_write(tmp_path, "Sad\t0.25\t0.5\t1.0\n", "b.tsv"))
    for lex in (with_header, without):
        np.testing.assert_allclose(lex.lookup("sad"), [-0.5, 0.0, 1.0])
        assert len(lex) == 1
    raw = VADLexicon.from_file(tmp_path / "b.tsv", bipolar=False)
    np.testing.assert_allclose(raw.lookup("SAD"), [0.25, 0.5, 1.0])
    assert with_header.describe()["entries"] == 1


@pytest.mark.parametrize(
    "body, what",
    [
        ("sad\t0.2\t0.3\n", "line 2: expected 4"),
        ("sad\t0.2\tx\t0.3\n", "line 2: values are not numbers"),
        ("sad\t0.2\t1.5\t0.3\n", "line 2: values must lie in [0, 1]"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, body, what):
    p = _write(tmp_path, "happy\t0.9\t0.5\t0.5\n" + body)
    with pytest.raises(DataError) as e:
        VADLexicon.from_file(p)
    assert str(p) in str(e.value) and what in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        VADLexicon.from_file(tmp_path / "nope.tsv")


def test_real_lexicon_lemmas(nrc):
    assert len(nrc) == 20007
    np.testing.assert_allclose(nrc.lookup("saddened"), nrc.table["sad"])  # via "sadden" -> "sad"
    assert nrc.lookup("terrifying") is not None
    for inflected, lemma in (("saddest", "sad"), ("gloomier", "gloomy"), ("hated", "hate"), ("angrier", "angry")):
        assert inflected not in nrc.table
        np.testing.assert_allclose(nrc.lookup(inflected), nrc.table[lemma])
    np.testing.assert_allclose(nrc.lookup("Colours"), nrc.table["color"])
    np.testing.assert_allclose(nrc.lookup("painting's"), nrc.table["painting"])
    np.testing.assert_allclose(nrc.lookup("sad"), 2 * np.array([0.225, 0.333, 0.149]) - 1, atol=1e-6)
    assert nrc.lookup("xqzv") is None
    # NRC-VAD v1 lists no function words: "the" is genuinely absent (zeros, mask False).
    assert nrc.lookup("the") is None


def test_demo_table_loads():
    lex = VADLexicon.demo()
    assert len(lex) > 20 and lex.source == "demo"


def test_alignment_real_tokenizer(nrc, tok):
    text = "the saddened woman, terrifying xqzv contentment"
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    vad, mask = vad_for_tokens(text, enc["offset_mapping"], nrc)
    assert vad.shape == (len(pieces), 3) and vad.dtype == np.float32 and mask.dtype == bool
    by_piece = dict(zip(pieces, range(len(pieces))))
    assert not mask[by_piece["the"]] and not mask[by_piece[","]]
    np.testing.assert_allclose(vad[by_piece["Ġsaddened"]], nrc.table["sad"])
    assert mask[by_piece["Ġterrifying"]]
    # "xqzv" is 4 BPE pieces, none looked up on its own (e.g. "x" alone)
    x = [i for i, p in enumerate(pieces) if p in ("Ġx", "q", "z", "v")]
    assert len(x) == 4 and not mask[x].any() and not vad[x].any()
    # "contentment" is 2 pieces: both carry the whole word's vector
    c = [i for i, p in enumerate(pieces) if p in ("Ġcontent", "ment")]
    assert len(c) == 2 and mask[c].all()
    np.testing.assert_array_equal(vad[c[0]], vad[c[1]])
    np.testing.assert_allclose(vad[c[1]], nrc.table["contentment"])
    # causal: the first piece only knows "content" so far
    cvad, cmask = vad_for_tokens(text, enc["offset_mapping"], nrc, causal=True)
    np.testing.assert_allclose(cvad[c[0]], nrc.table["content"])
    np.testing.assert_allclose(cvad[c[1]], nrc.table["contentment"])
    # ... looked up exactly (the word may go on): "saddened" is not listed as is
    assert not cmask[by_piece["Ġsaddened"]] and not cvad[by_piece["Ġsaddened"]].any()


def test_a_word_listed_twice_with_other_values_is_an_error(tmp_path):
    path = tmp_path / "lex.tsv"
    path.write_text("Word\tValence\tArousal\tDominance\nsky\t0.5\t0.5\t0.5\nsea\t0.1\t0.2\t0.3\nsky\t0.5\t0.5\t0.5\n")
    assert VADLexicon.from_file(path).lookup("sky", exact=True) is not None  # the same values again: harmless
    path.write_text(path.read_text() + "Sky\t0.9\t0.5\t0.5\n")
    with pytest.raises(
        DataError, match=r"lex\.tsv, line 5: 'sky' is listed again with other values \(first at line 2\)"
    ):
        VADLexicon.from_file(path)

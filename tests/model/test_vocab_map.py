"""Corpus vocabulary (text.VocabMap): id mapping, compact sequences, training, generation, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.export import load_run, save_export
from sevlm.generate import DecodingConfig, generate
from sevlm.model import SEVLM, SEVLMConfig
from sevlm.text import IGNORE_INDEX, SequenceBuilder, model_inputs
from sevlm.vocab import TokenIds, VocabMap, sequence_text

PAIRS = [
    ("awe", "the bright sky is vast"),
    ("fear", "the dark storm is coming"),
    ("sadness", "a sad woman alone"),
    ("contentment", "a calm field at noon"),
    ("something else", "just shapes and lines"),
]


@pytest.fixture(scope="module")
def vocab(tok, make_samples):
    """The corpus vocabulary of the training samples (PAIRS, some with " again")."""
    pairs = [(e, x) for s in make_samples(5) for e, x in zip(s["emotions"], s["explanations"])]
    return VocabMap.from_annotations(tok, pairs)


@pytest.fixture(scope="module")
def cbuilder(tok, lexicon, vocab):
    return SequenceBuilder(tok, lexicon, max_len=20, vocab=vocab)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_round_trip_and_json(tok, vocab):
    texts = [sequence_text(e, x) for e, x in PAIRS]
    corpus = sorted({t for text in texts for t in _ids(tok, text)})
    assert set(corpus) <= set(vocab.gpt2_ids.tolist())
    assert set(tok.all_special_ids) <= set(vocab.gpt2_ids.tolist())
    assert len(vocab) == len(vocab.gpt2_ids) + 1 < 200  # + <unk>; tiny next to 50,260
    for text in texts:
        ids = _ids(tok, text)
        compact = vocab.to_compact(ids)
        assert compact.min() > vocab.unk_id and compact.max() < len(vocab)
        assert vocab.to_gpt2(compact) == ids
        assert vocab.decode(tok, compact) == text
    # compact ids follow the sorted GPT-2 ids, whatever the text order: deterministic
    assert VocabMap.from_annotations(tok, PAIRS[::-1] + [("fear", "again")]) == vocab
    assert list(vocab.to_compact(vocab.gpt2_ids)) == list(range(1, len(vocab)))
    assert VocabMap.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab
    assert VocabMap.from_json(vocab.gpt2_ids.tolist()) == vocab  # a bare list of GPT-2 ids
    with pytest.raises(DataError, match="sorted"):
        VocabMap.from_json([5, 3])
    with pytest.raises(DataError, match="not a corpus vocabulary"):
        VocabMap.from_json({"ids": [1]})
    # every label can be generated, even one no annotation uses
    for label in EMOTIONS:
        assert all(t in vocab for t in _ids(tok, f"the emotion is {label} because"))


def test_unknown_tokens_map_to_unk(tok, vocab):
    zebra = _ids(tok, " zebra xylophone")
    assert all(t not in vocab for t in zebra)
    assert vocab.to_compact(zebra).tolist() == [vocab.unk_id] * len(zebra)
    assert vocab.to_compact([-1, len(tok) + 7]).tolist() == [vocab.unk_id] * 2
    mixed = vocab.to_compact(_ids(tok, "the zebra sky"))
    assert vocab.unk_id in mixed.tolist()
    assert vocab.decode(tok, mixed) == "the sky"  # <unk> decodes to nothing
    with pytest.raises(DataError, match="outside the corpus vocabulary"):
        vocab.to_gpt2([len(vocab)])
    # min_count: tokens seen once fall back to <unk>; the special/prompt tokens always stay
    rare = VocabMap.from_texts(tok, ["the cat", "the dog"], min_count=2)
    assert rare.compact(_ids(tok, " cat")[0]) == rare.unk_id and _ids(tok, "the")[0] in rare
    assert TokenIds.from_tokenizer(tok, rare).vocab_size == len(rare)


def test_builder_compact_space(tok, builder, cbuilder, vocab, make_samples):
    ids, full = cbuilder.ids, builder.ids
    assert ids.vocab_size == len(vocab) and ids.unk == vocab.unk_id
    for name in ("pad", "eos", "emotion", "explanation", "because"):
        assert vocab.to_gpt2([getattr(ids, name)]) == [getattr(full, name)], name
    assert vocab.to_gpt2(ids.prompt) == list(full.prompt)
    a, b = cbuilder.encode_many(PAIRS), builder.encode_many(PAIRS)
    for (emo, exp), sc, sf in zip(PAIRS, a, b):
        n = int(sc["attention_mask"].sum())
        assert vocab.decode(tok, sc["input_ids"][:n]) == sequence_text(emo, exp) + "<|endoftext|>"
        assert vocab.to_compact(sf["input_ids"]).tolist() == sc["input_ids"].tolist()  # pad included
        assert vocab.to_compact(sf["segment_ids"]).tolist() == sc["segment_ids"].tolist()
        lab = sc["labels"]
        assert ((lab == IGNORE_INDEX) == (sf["labels"] == IGNORE_INDEX)).all()
        assert (lab[lab != IGNORE_INDEX] == sc["input_ids"][lab != IGNORE_INDEX]).all()
        for k in ("vad", "vad_mask", "vad_target", "vad_target_mask"):  # char offsets: id space irrelevant
            np.testing.assert_array_equal(sc[k], sf[k], err_msg=k)
    assert sum(int(sc["vad_mask"].sum()) for sc in a) >= 5  # the lexicon words were found
    batch = cbuilder.collate(make_samples(3), np.random.default_rng(0))
    assert int(batch["input_ids"].max()) < len(vocab)


def _corpus_model(cbuilder, seed=0):
    torch.manual_seed(seed)
    cfg = SEVLMConfig(
        n_layer=2, n_embd=32, n_head=2, visual_dim=16, contrastive_dim=16, max_len=20, n_positions=32, dropout=0.0
    )
    return SEVLM(cfg.with_token_ids(cbuilder.ids))


@pytest.fixture(scope="module")
def trained(cbuilder, vocab, make_samples):
    """A tiny corpus-vocabulary model after 200 steps on 5 images (~5 s): it learns the sequences
    (at a learning rate of 3e-2 whether the labels come out right was down to the seed)."""
    m = _corpus_model(cbuilder)
    assert m.decoder.transformer.wte.weight.shape[0] == len(vocab)
    samples = make_samples(5)
    opt = torch.optim.AdamW(m.param_groups(1e-2, 1e-2), lr=1e-2)
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    losses = []
    for _ in range(200):
        out = m(**model_inputs(cbuilder.collate(samples, rng)))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.lm_loss.detach()))
    return m.eval(), samples, losses


@pytest.mark.slow
def test_train_and_generate(tok, lexicon, trained, vocab):
    m, samples, losses = trained
    assert np.mean(losses[-10:]) < 0.5 * losses[0]
    visual = torch.stack([s["tokens"] for s in samples])
    for beams in (1, 2):
        d = DecodingConfig(max_new_tokens=12).updated(num_beams=beams)
        a = generate(m, tok, lexicon, visual, d, vocab=vocab)
        b = generate(m, tok, lexicon, visual, d, use_cache=False, vocab=vocab)
        assert [h.tokens for h in a] == [h.tokens for h in b]
    for h in a:
        assert h.tokens and max(h.tokens) < len(vocab)
        assert h.text == vocab.decode(tok, h.tokens, skip_special_tokens=True)
        assert " because " in f" {h.text} " and h.text.isascii()  # real words, not id soup
    assert sum(h.emotion is not None for h in a) >= 3
    # the map is an argument: a corpus model without it, or a map that does not fit, is refused
    with pytest.raises(DataError, match="no VocabMap"):
        generate(m, tok, lexicon, visual[:1], DecodingConfig(max_new_tokens=2))
    with pytest.raises(DataError, match="ids but the model"):
        generate(m, tok, lexicon, visual[:1], DecodingConfig(max_new_tokens=2), vocab=VocabMap([1, 2, 3]))


@pytest.mark.slow
def test_export_round_trip(tmp_path, tok, lexicon, trained, cbuilder, vocab):
    m, samples, _ = trained
    save_export(tmp_path / "run" / "export", m, tok, {"data": {"lexicon": str(lexicon.source)}}, vocab=vocab)
    export = tmp_path / "run" / "export"
    assert (export / "vocab.json").is_file()
    assert json.loads((export / "config.json").read_text())["vocab"] == "vocab.json"
    run = load_run(tmp_path / "run")
    assert run.vocab == vocab and run.builder.vocab == vocab and run.builder.ids == cbuilder.ids
    batch = cbuilder.collate_eval(samples)
    with torch.no_grad():
        torch.testing.assert_close(
            run.model(**model_inputs(batch)).logits, m(**model_inputs(batch)).logits, atol=0, rtol=0
        )
    visual = batch["visual"]
    d = DecodingConfig(max_new_tokens=12)
    assert [h.text for h in generate(run.model, run.tokenizer, run.lexicon, visual, d, vocab=run.vocab)] == [
        h.text for h in generate(m, tok, lexicon, visual, d, vocab=vocab)
    ]
    # a corpus model cannot be exported without its map
    with pytest.raises(DataError, match="no VocabMap"):
        save_export(tmp_path / "bare", m, tok, {})
    (export / "vocab.json").unlink()
    with pytest.raises(DataError, match="vocab.json is missing"):
        load_run(export)


def test_trainer_refuses_corpus_vocab_with_pretrained_decoder():
    from sevlm.errors import ConfigError
    from sevlm.train.config import as_train_config

    assert as_train_config({"data": {"corpus_vocab": True}}).data.corpus_vocab
    with pytest.raises(ConfigError, match="pretrained model.decoder='gpt2'"):
        as_train_config({"data": {"corpus_vocab": True}, "model": {"decoder": "gpt2"}})
    assert as_train_config({"model": {"decoder": "gpt2"}}).model.decoder == "gpt2"  # full vocabulary: fine


def test_words_are_recorded_piece_by_piece_and_round_trip(tok, vocab):
    from sevlm.words import WordTrie

    words = {tok.decode(list(w)) for w in vocab.words}
    expl = {" " + w for _, x in PAIRS for w in x.split()}
    assert expl <= words and " emotion" not in words  # the explanations' words, not the prompt's
    assert VocabMap.from_json(json.loads(json.dumps(vocab.to_json()))).words == vocab.words
    assert VocabMap.from_json(vocab.gpt2_ids.tolist()).words is None  # an older map: no words
    with pytest.raises(DataError, match="words must be lists of the vocabulary's GPT-2 ids"):
        VocabMap.from_json({**vocab.to_json(), "words": [[10**6]]})
    # the tree: a word's pieces in order, then (once whole) any word's first piece or the end
    trie = WordTrie(vocab, tok, eos=vocab.compact(tok.eos_token_id))
    c = [vocab.compact(t) for t in _ids(tok, " the bright")]
    assert set(trie.allowed([])) == trie.first and c[0] in trie.first
    after_the = set(trie.allowed(c[:1]))
    assert trie.first <= after_the and trie.eos in after_the
    assert trie.allowed(c + [vocab.compact(_ids(tok, " sky")[0])]) is not None
    with pytest.raises(DataError, match="records no words"):
        WordTrie(VocabMap(vocab.gpt2_ids.tolist()), tok, eos=1)


@pytest.mark.parametrize(
    "decoding",
    [
        DecodingConfig(max_new_tokens=14, corpus_words=True),
        DecodingConfig(strategy="beam", num_beams=2, max_new_tokens=14, corpus_words=True),
        DecodingConfig(strategy="sample", temperature=3.0, max_new_tokens=14, corpus_words=True, seed=3),
    ],
)
def test_corpus_words_spell_only_training_words(tok, lexicon, cbuilder, vocab, make_model, decoding):
    """An untrained corpus model glues pieces at random; with decoding.corpus_words every
    explanation word is one the training explanations have (cached and uncached alike)."""
    from sevlm.generate import parse_output

    torch.manual_seed(0)
    m = SEVLM(
        SEVLMConfig(
            n_layer=1, n_embd=32, n_head=2, visual_dim=16, contrastive_dim=16, max_len=20, n_positions=32
        ).with_token_ids(cbuilder.ids)
    ).eval()
    bias = torch.zeros(len(vocab))
    bias[cbuilder.ids.because] = 4.0  # reach the explanation within a few tokens
    m.decoder.lm_head.bias = torch.nn.Parameter(bias)
    visual = torch.randn(6, 5, 16)
    corpus = {w for _, x in PAIRS for w in x.split()} | {"again"}
    free = generate(m, tok, lexicon, visual, dataclasses_replace(decoding, corpus_words=False), vocab=vocab)
    hyps = generate(m, tok, lexicon, visual, decoding, vocab=vocab)
    assert [h.tokens for h in hyps] == [
        h.tokens for h in generate(m, tok, lexicon, visual, decoding, use_cache=False, vocab=vocab)
    ]
    said = [w for h in hyps for w in parse_output(h.text)[1].split()]
    assert len(said) >= 6 and set(said) <= corpus
    assert not {w for h in free for w in parse_output(h.text)[1].split()} <= corpus  # it had work to do
    with pytest.raises(DataError, match="corpus_words needs a model trained on a corpus vocabulary"):
        generate(make_model().eval(), tok, lexicon, visual[:1], decoding)  # GPT-2 ids: no words to keep to


def dataclasses_replace(d, **kw):
    import dataclasses

    return dataclasses.replace(d, **kw)

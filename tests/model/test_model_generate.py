"""Generation: cached == uncached with every decoding option, repetition controls, sampling,
byte-correct text for the causal VAD, parsing, overfitting a handful of samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sevlm.data.vad import VADLexicon
from sevlm.generate import (
    DecodingConfig,
    _explanation_history,
    _full_features,
    _Pieces,
    _TextState,
    generate,
    parse_output,
)
from sevlm.text import SequenceBuilder, model_inputs
from sevlm.vocab import sequence_text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the emotion is sadness because the sky is dark", ("sadness", "the sky is dark", "sadness")),
        (" something else because lines", ("something else", "lines", "something else")),
        (" Awe  because it is vast", ("awe", "it is vast", "Awe")),
        (" melancholy because rain", (None, "rain", "melancholy")),
        (" fear", ("fear", "", "fear")),
        ("", (None, "", "")),
        (" because", (None, "", "")),
    ],
)
def test_parse_output(text, expected):
    assert parse_output(text) == expected


CHATTY_WORDS = (" the", " dark", " sky", " and", " is")


def chatty(model, tok, strength: float = 6.0):
    """A tiny random model pushed (an LM-head bias, used by both the cached and uncached paths)
    towards " because" and five words: it reaches the explanation at once and loops there."""
    bias = torch.zeros(model.config.vocab_size)
    bias[model.config.because_id] = strength
    for w in CHATTY_WORDS:
        bias[tok.encode(w)[0]] = strength - 1
    model.decoder.lm_head.bias = torch.nn.Parameter(bias)
    return model


def explanation_tokens(h, because: int) -> list[int]:
    return h.tokens[h.tokens.index(because) + 1 :] if because in h.tokens else []


def ngrams(seq, n):
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def has_repeat(seq, n) -> bool:
    grams = ngrams(seq, n)
    return len(set(grams)) < len(grams)


DECODINGS = {
    "greedy": DecodingConfig(),
    "greedy-plain": DecodingConfig(no_repeat_ngram=0, repetition_penalty=1.0),
    "greedy-3gram-penalty": DecodingConfig(no_repeat_ngram=3, repetition_penalty=1.5),
    "beam3": DecodingConfig(strategy="beam", num_beams=3),
    "beam2-lp0-penalty": DecodingConfig(strategy="beam", num_beams=2, length_penalty=0.0, repetition_penalty=2.0),
    "sample": DecodingConfig(strategy="sample", top_k=20, top_p=0.9, temperature=0.8, seed=4),
}


@pytest.mark.parametrize("name", list(DECODINGS))
@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_cached_equals_uncached(make_model, tok, lexicon, mode, name):
    m = chatty(make_model(mode=mode, seed=3).eval(), tok)
    visual = torch.randn(3, 5, 16)
    d = DECODINGS[name]
    a = generate(m, tok, lexicon, visual, d)
    b = generate(m, tok, lexicon, visual, d, use_cache=False)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert all(len(explanation_tokens(h, m.config.because_id)) > 3 for h in a)  # the controls had work to do
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4)
    if d.num_beams == 1 and d.strategy == "greedy":  # batched == one image at a time
        single = [generate(m, tok, lexicon, visual[i : i + 1], d)[0].tokens for i in range(3)]
        assert single == [h.tokens for h in a]


@pytest.mark.parametrize("mode, beams", [("cross", 1), ("cross", 3), ("prefix", 2), ("none", 1)])
def test_cached_equals_uncached_random_model(make_model, tok, lexicon, mode, beams):
    m = make_model(mode=mode, seed=3).eval()
    visual = torch.randn(3, 5, 16)
    d = DecodingConfig(max_new_tokens=12).updated(num_beams=beams)
    a = generate(m, tok, lexicon, visual, d)
    b = generate(m, tok, lexicon, visual, d, use_cache=False)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert all(len(h.tokens) > 0 for h in a)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_no_repeat_ngram_blocks_every_repeat(make_model, tok, lexicon, strategy, n):
    m = chatty(make_model(seed=3).eval(), tok, strength=9.0)
    visual = torch.randn(4, 5, 16)
    base = DecodingConfig(
        strategy=strategy,
        num_beams=3 if strategy == "beam" else 1,
        no_repeat_ngram=0,
        repetition_penalty=1.0,
        top_k=8 if strategy == "sample" else 0,
    )
    because = m.config.because_id
    loose = [explanation_tokens(h, because) for h in generate(m, tok, lexicon, visual, base)]
    assert any(has_repeat(e, n) for e in loose)  # without blocking this model repeats itself
    hyps = generate(m, tok, lexicon, visual, base.updated(no_repeat_ngram=n))
    for h in hyps:
        exp = explanation_tokens(h, because)
        assert len(exp) >= 5 and not has_repeat(exp, n), tok.decode(exp)
        words = h.explanation.split()
        assert not has_repeat(words, n), h.explanation  # the words a reader sees, too


def test_repetition_penalty_reduces_repeated_tokens(make_model, tok, lexicon):
    m = chatty(make_model(seed=3).eval(), tok)
    visual = torch.randn(4, 5, 16)
    because = m.config.because_id

    def repeated_share(d):
        exps = [explanation_tokens(h, because) for h in generate(m, tok, lexicon, visual, d)]
        return np.mean([1 - len(set(e)) / len(e) for e in exps])

    plain = repeated_share(DecodingConfig(no_repeat_ngram=0, repetition_penalty=1.0))
    assert plain > 0.5
    assert repeated_share(DecodingConfig(no_repeat_ngram=0, repetition_penalty=3.0)) < plain - 0.2


def test_blocking_ignores_prompt_and_label(make_model, tok, lexicon, builder):
    """Only explanation tokens are counted: the prompt's and the label's positions are hidden
    from the processors, so the label's " because" + an explanation starting with " because"
    is not a bigram that blocks a later "because because"."""
    m = chatty(make_model(seed=3).eval(), tok)
    because = m.config.because_id
    d = DecodingConfig(no_repeat_ngram=2, repetition_penalty=1.0)
    state = _TextState(_Pieces(tok), lexicon, list(builder.ids.prompt), because)
    state.push(because)  # empty label, then the explanation
    fresh = _TextState(_Pieces(tok), lexicon, list(builder.ids.prompt), because)
    ids = torch.tensor([state.ids + [because, 7], fresh.ids + [5, 7, 9]])
    hist = _explanation_history(ids[:, :6], [state, fresh], 100)
    assert hist.tolist() == [[100] * 4 + [because, 7], [100] * 6]
    h = generate(m, tok, lexicon, torch.randn(1, 5, 16), d)[0]
    assert h.tokens[:3] == [because] * 3  # label end + "because because": counted once only


def test_sampling_seeded_and_filtered(make_model, tok, lexicon):
    m = chatty(make_model(seed=2).eval(), tok, strength=2.0)  # reaches the explanation, where sampling acts
    visual = torch.randn(3, 5, 16)
    d = DecodingConfig(strategy="sample", seed=7, max_new_tokens=10)
    first = [h.tokens for h in generate(m, tok, lexicon, visual, d)]
    assert first == [h.tokens for h in generate(m, tok, lexicon, visual, d)]
    assert first != [h.tokens for h in generate(m, tok, lexicon, visual, d.updated(seed=8))]
    greedy = [h.tokens for h in generate(m, tok, lexicon, visual, DecodingConfig(max_new_tokens=10))]
    assert first != greedy
    # top-k 1 (or a tiny nucleus) leaves only the argmax: sampling equals greedy
    assert [h.tokens for h in generate(m, tok, lexicon, visual, d.updated(top_k=1))] == greedy
    assert [h.tokens for h in generate(m, tok, lexicon, visual, d.updated(top_p=1e-6))] == greedy


def test_sampling_keeps_the_greedy_label(make_model, tok, lexicon):
    """The label is a classification: sampling draws explanation tokens only, so every image keeps
    the greedy label whatever the seed, while the explanations differ."""
    m = make_model(seed=5).eval()
    because = m.config.because_id
    bias = torch.zeros(m.config.vocab_size)
    bias[because] = 3.0  # " because" within the first few tokens, after a model-chosen label
    m.decoder.lm_head.bias = torch.nn.Parameter(bias)
    visual = torch.randn(4, 5, 16)

    def labels(hyps):
        return [h.tokens[: h.tokens.index(because)] if because in h.tokens else None for h in hyps]

    greedy = generate(
        m, tok, lexicon, visual, DecodingConfig(max_new_tokens=12, no_repeat_ngram=0, repetition_penalty=1.0)
    )
    assert all(lab is not None for lab in labels(greedy))
    for seed in range(3):
        d = DecodingConfig(
            strategy="sample", temperature=2.0, seed=seed, max_new_tokens=12, no_repeat_ngram=0, repetition_penalty=1.0
        )
        sampled = generate(m, tok, lexicon, visual, d)
        assert labels(sampled) == labels(greedy)
        assert [explanation_tokens(h, because) for h in sampled] != [explanation_tokens(h, because) for h in greedy]


def test_length_penalty_favours_longer_beams(make_model, tok, lexicon):
    """A model that ends early (EOS pushed up) keeps short outputs with no normalisation, and
    longer ones as the length penalty grows."""
    m = chatty(make_model(seed=3).eval(), tok)
    m.decoder.lm_head.bias.data[m.config.eos_id] = 6.0
    visual = torch.randn(4, 5, 16)

    def mean_len(lp):
        d = DecodingConfig(strategy="beam", num_beams=4, length_penalty=lp, repetition_penalty=1.0)
        return np.mean([len(h.tokens) for h in generate(m, tok, lexicon, visual, d)])

    assert mean_len(0.0) < mean_len(1.0) < mean_len(2.0)


VAD_WORDS = """Word\tValence\tArousal\tDominance
woman\t0.7\t0.4\t0.5
café\t0.8\t0.5\t0.5
dalí\t0.6\t0.7\t0.6
naïve\t0.5\t0.3\t0.2
sadness\t0.05\t0.3\t0.15
"""


def test_text_is_rebuilt_from_bytes(tok, tmp_path):
    """Curly apostrophes (two GPT-2 tokens), "café", "Dalí", "naïve", an emoji and CJK: the text
    generation sees is the training text, and so are the VAD inputs (both paths)."""
    path = tmp_path / "vad.tsv"
    path.write_text(VAD_WORDS, encoding="utf-8")
    lex = VADLexicon.from_file(path)
    builder = SequenceBuilder(tok, lex, max_len=40)
    emotion, explanation = "sadness", "the woman’s café by Dalí is naïve 😀 日本"
    seq = builder.encode(emotion, explanation)
    n = int(seq["attention_mask"].sum()) - 1  # without EOS
    ids = seq["input_ids"][:n].tolist()
    n_prompt = len(builder.ids.prompt)
    pieces = _Pieces(tok)
    state = _TextState(pieces, lex, ids[:n_prompt], builder.ids.because)
    cached = np.stack(state.prompt_vad + [state.push(i)[0] for i in ids[n_prompt:]])  # (T, 3)
    assert state.text == sequence_text(emotion, explanation)
    uncached, _ = _full_features(pieces, lex, ids, n_prompt, builder.ids.because, 0, 1)
    np.testing.assert_array_equal(cached, uncached)
    # "’" is two tokens; training's offsets give both the whole character (and the letter after
    # it, which makes "woman’s" one word); generation cannot know it yet: only they may differ
    apostrophe = set(tok.encode("’"))
    same = [t not in apostrophe for t in ids]
    assert sum(same) == len(ids) - 2
    np.testing.assert_array_equal(cached[same], seq["vad"][:n][same])
    woman = lex.lookup("woman")
    s_pos = ids.index(tok.encode("s")[0], n_prompt)  # the "s" of "woman’s": still the word "woman’s"
    np.testing.assert_array_equal(cached[s_pos], woman)
    for word in ("café", "dalí", "naïve"):
        assert any(np.array_equal(v, lex.lookup(word)) for v in cached)


@pytest.mark.slow
def test_overfits_a_handful(make_model, tok, lexicon, make_samples):
    """~100 Adam steps on 4 images with one annotation each: loss near zero, exact text back."""
    builder = SequenceBuilder(tok, lexicon, max_len=16)
    samples = make_samples(4)
    for s in samples:
        s["emotions"], s["explanations"] = s["emotions"][:1], s["explanations"][:1]
        s["tokens"] = s["tokens"] * 3
    m = make_model(n_embd=64, dropout=0.0, vad_dropout=0.0, seed=1, max_len=16, use_contrastive=False)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    batch = builder.collate_eval(samples)
    m.train()
    for _ in range(110):
        out = m(**model_inputs(batch))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.lm_loss) < 0.1
    for d in (DecodingConfig(max_new_tokens=13), DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=13)):
        hyps = generate(m.eval(), tok, lexicon, batch["visual"], d)
        for s, h in zip(samples, hyps):
            assert (h.emotion, h.explanation) == (s["emotions"][0], s["explanations"][0])
            assert 0.5 < h.emotion_prob <= 1.0


def test_sampling_is_per_image(make_model, tok, lexicon):
    """Each image samples from its own stream, seeded by (seed, image id): its explanation is the
    same at batch sizes 1, 3 and 32 and beside any batch-mates (generate_for_features, as
    `sevlm generate` and validation call it); another seed or another id changes it."""
    from types import SimpleNamespace

    from sevlm.generate import generate_for_features

    m = chatty(make_model(seed=2).eval(), tok, strength=2.0)
    visual = torch.randn(32, 5, 16)
    ids = [f"Style/painting-{i:02d}" for i in range(32)]
    run = SimpleNamespace(model=m, tokenizer=tok, lexicon=lexicon, vocab=None)
    d = DecodingConfig(strategy="sample", seed=7, max_new_tokens=10, top_p=0.95, temperature=1.5)

    def texts(batch_size, order=range(32)):
        order = list(order)
        out = generate_for_features(
            run, visual[order], [ids[i] for i in order], batch_size=batch_size, decoding=d, progress=False
        )
        return {p["image_id"]: p["raw"] for p in out}

    by32 = texts(32)
    assert len(set(by32.values())) > 4  # sampled: the images differ
    assert texts(1) == by32
    assert texts(3) == by32
    assert texts(3, order=reversed(range(32))) == by32  # other batch-mates
    other_seed = {
        p["image_id"]: p["raw"]
        for p in generate_for_features(run, visual, ids, batch_size=32, decoding=d.updated(seed=8), progress=False)
    }
    assert sum(other_seed[k] != by32[k] for k in ids) > 4
    # the stream follows the id, not the position: image 0 under image 1's id draws image 1's stream
    same_visual = torch.stack([visual[0], visual[0]])
    a, b = generate(m, tok, lexicon, same_visual, d, image_keys=["x", "y"])
    assert generate(m, tok, lexicon, same_visual[:1], d, image_keys=["y"])[0].tokens == b.tokens
    assert a.tokens != b.tokens or a.tokens != generate(m, tok, lexicon, same_visual[:1], d, image_keys=["z"])[0].tokens


def test_greedy_and_beam_ignore_image_keys(make_model, tok, lexicon):
    m = chatty(make_model(seed=2).eval(), tok, strength=2.0)
    visual = torch.randn(3, 5, 16)
    for d in (DecodingConfig(max_new_tokens=8), DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=8)):
        plain = [h.tokens for h in generate(m, tok, lexicon, visual, d)]
        assert [h.tokens for h in generate(m, tok, lexicon, visual, d, image_keys=["a", "b", "c"])] == plain

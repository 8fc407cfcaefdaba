"""Generation: cached == uncached (greedy and beam), parsing, overfitting a handful of samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sevlm.generate import generate, parse_output
from sevlm.text import SequenceBuilder


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


@pytest.mark.parametrize("mode, beams", [("cross", 1), ("cross", 3), ("prefix", 2), ("none", 1)])
def test_cached_equals_uncached(make_model, tok, lexicon, mode, beams):
    m = make_model(mode=mode, seed=3).eval()
    visual = torch.randn(3, 5, 16)
    a = generate(m, tok, lexicon, visual, num_beams=beams, max_new_tokens=12)
    b = generate(m, tok, lexicon, visual, num_beams=beams, max_new_tokens=12, use_cache=False)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert all(len(h.tokens) > 0 for h in a)
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4)
    if beams == 1:  # batched == one image at a time
        single = [generate(m, tok, lexicon, visual[i : i + 1], max_new_tokens=12)[0].tokens for i in range(3)]
        assert single == [h.tokens for h in a]


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
        out = m(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.lm_loss) < 0.1
    hyps = generate(m.eval(), tok, lexicon, batch["visual"], max_new_tokens=13)
    for s, h in zip(samples, hyps):
        assert (h.emotion, h.explanation) == (s["emotions"][0], s["explanations"][0])
        assert 0.5 < h.emotion_prob <= 1.0

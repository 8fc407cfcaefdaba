"""The authors' model switches (docs/METHOD.md rows 6, 7, 15, 16): each changes what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sevlm.data.vad import VADLexicon
from sevlm.generate import generate
from sevlm.model import SEVLMConfig
from sevlm.model.contrastive import ContrastiveHead
from sevlm.model.emotion_encoder import EmotionEncoder
from sevlm.text import SequenceBuilder


# ---- row 7: the bidirectional VAD encoder ---------------------------------------------------------
def test_bidirectional_encoder_sees_later_tokens_and_the_causal_one_does_not():
    vad = torch.randn(2, 8, 3)
    later = vad.clone()
    later[:, 6] += torch.tensor([1.0, -1.0, 0.5])  # a later token's VAD changes (not uniformly: LayerNorm)
    for bidirectional in (False, True):
        torch.manual_seed(0)
        enc = EmotionEncoder(8, n_layers=2, ffn=16, dropout=0.0, bidirectional=bidirectional).eval()
        a, _ = enc(vad)
        b, _ = enc(later)
        assert torch.allclose(a[:, :6], b[:, :6]) != bidirectional  # positions before 6 see it only when bidirectional
    with pytest.raises(ValueError, match="bidirectional VAD encoder keeps no cache"):
        enc(vad[:, :1], cache=(0, []))


def test_bidirectional_model_leaks_the_next_token_vad_and_generates_without_cache(
    make_model, builder, tok, lexicon, monkeypatch
):
    batch = builder._stack([builder.encode("fear", "the dark storm is coming")])
    later = {**batch, "vad": batch["vad"].clone()}
    later["vad"][0, 9] = torch.tensor([1.0, -1.0, 1.0])  # one explanation token's VAD input
    for bidirectional in (False, True):
        m = make_model(seed=1, dropout=0.0, vad_dropout=0.0, vad_bidirectional=bidirectional).eval()
        with torch.no_grad():
            a = m(input_ids=batch["input_ids"], segment_ids=batch["segment_ids"], vad=batch["vad"]).logits
            b = m(input_ids=batch["input_ids"], segment_ids=batch["segment_ids"], vad=later["vad"]).logits
        # the logits before position 9 predict tokens up to 9: the bidirectional model sees token 9's VAD
        assert torch.allclose(a[0, :9], b[0, :9], atol=1e-6) != bidirectional
    visual = torch.randn(2, 5, 16)
    want = generate(m, tok, lexicon, visual, use_cache=False)
    monkeypatch.setattr(type(m), "decode_step", lambda *a, **k: pytest.fail("a bidirectional model used the cache"))
    got = generate(m, tok, lexicon, visual)  # the cache is off for it
    assert [h.tokens for h in got] == [h.tokens for h in want] and all(h.tokens for h in got)


# ---- row 6: per-piece lemmatised VAD ----------------------------------------------------------------
PIECE_TABLE = {
    "heart": [0.9, 0.5, 0.5],
    "broken": [0.1, 0.6, 0.3],
    "heartbroken": [0.05, 0.7, 0.2],
    "sad": [0.2, 0.3, 0.1],
    "dark": [0.2, 0.4, 0.4],
}


def _piece_lexicon():
    return VADLexicon({w: 2.0 * np.asarray(v, dtype=np.float32) - 1.0 for w, v in PIECE_TABLE.items()})


def test_vad_input_piece_looks_each_piece_up_lemmatised_as_input_and_target(tok):
    lex = _piece_lexicon()
    ours = SequenceBuilder(tok, lex, max_len=24)
    authors = SequenceBuilder(tok, lex, max_len=24, vad_input="piece")
    text = ("sadness", "a heartbroken man saddened")
    o, a = ours.encode(*text), authors.encode(*text)
    ids = list(o["input_ids"])
    pieces = tok.convert_ids_to_tokens([int(i) for i in ids[: int(o["attention_mask"].sum())]])
    h = pieces.index("Ġheart")
    assert pieces[h + 1] == "broken"
    vec = {w: lex.lookup(w) for w in PIECE_TABLE}
    # ours: the word so far as input ("heart", then "heartbroken"), the whole word as target
    np.testing.assert_allclose(o["vad"][h : h + 2], [vec["heart"], vec["heartbroken"]])
    np.testing.assert_allclose(o["vad_target"][h : h + 2], [vec["heartbroken"]] * 2)
    # the authors': each piece on its own, the same values as input and target
    np.testing.assert_allclose(a["vad"][h : h + 2], [vec["heart"], vec["broken"]])
    np.testing.assert_allclose(a["vad_target"][h : h + 2], a["vad"][h : h + 2])
    # "saddened" (one piece) is lemmatised for the authors' input; ours reads the input exactly
    sad = pieces.index("Ġsaddened")
    assert not o["vad_mask"][sad] and a["vad_mask"][sad] and o["vad_target_mask"][sad]
    np.testing.assert_allclose(a["vad"][sad], vec["sad"])
    lab = pieces.index("Ġbecause")
    assert not a["vad_target_mask"][: lab + 1].any()  # still no VAD target on prompt, label, " because"
    np.testing.assert_array_equal(o["input_ids"], a["input_ids"])


def test_generation_feeds_the_piece_vad_training_feeds(tok):
    from sevlm.generate import _full_features, _Pieces

    lex = _piece_lexicon()
    authors = SequenceBuilder(tok, lex, max_len=24, vad_input="piece")
    seq = authors.encode("sadness", "a heartbroken man in the dark")
    n = int(seq["attention_mask"].sum()) - 1  # without EOS
    ids = [int(i) for i in seq["input_ids"][:n]]
    ids_ = authors.ids
    for pieces, want in (
        (True, seq["vad"][:n]),
        (False, SequenceBuilder(tok, lex, max_len=24).encode("sadness", "a heartbroken man in the dark")["vad"][:n]),
    ):
        vad, _ = _full_features(
            _Pieces(tok), lex, ids, len(ids_.prompt), ids_.because, ids_.explanation, ids_.emotion, vad_pieces=pieces
        )
        np.testing.assert_allclose(vad, want)


# ---- row 15: the authors' visual negative -----------------------------------------------------------
def test_visual_negative_explanation_swaps_the_text_not_the_image():
    torch.manual_seed(0)
    I, E = 3, 4
    img = torch.nn.functional.normalize(torch.randn(I, E), dim=-1)
    emo = torch.nn.functional.normalize(torch.randn(2 * I, E), dim=-1)
    exp = torch.nn.functional.normalize(torch.randn(2 * I, E), dim=-1)
    seq_image = torch.arange(I).repeat_interleave(2)
    valid = torch.tensor([True, True, True])
    neg = torch.tensor([2, 0, 1])  # image i's visual negative is image neg[i]
    losses = {}
    for kind in ("image", "explanation"):
        head = ContrastiveHead(E, E, E, visual_negative=kind)
        losses[kind] = head.loss(img, emo, exp, seq_image, valid, neg)
        rows = []
        for s in range(2 * I):
            i, j = s // 2, int(neg[s // 2])
            third = (
                head.score(img[j], emo[s], exp[s])
                if kind == "image"
                else head.score(img[i], emo[s], exp[2 * j + s % 2])
            )
            rows.append(
                torch.stack([head.score(img[i], emo[s], exp[s]), head.score(img[i], emo[s], exp[s ^ 1]), third])
            )
        want = torch.nn.functional.cross_entropy(torch.stack(rows), torch.zeros(2 * I, dtype=torch.long))
        torch.testing.assert_close(losses[kind], want)
    assert not torch.allclose(losses["image"], losses["explanation"])


def test_visual_negative_reaches_the_model_head(make_model):
    assert make_model(visual_negative="explanation").contrastive.visual_negative == "explanation"
    assert make_model().contrastive.visual_negative == "image"
    with pytest.raises(ValueError, match="visual_negative must be 'image' or 'explanation'"):
        SEVLMConfig(visual_negative="text")


# ---- row 16: no visual projection -------------------------------------------------------------------
def test_no_visual_projection_feeds_the_tokens_as_they_are(make_model):
    m = make_model(visual_projection=False, visual_dim=32, n_embd=32).eval()
    assert not any(n.startswith("visual_proj.") for n, _ in m.named_parameters())
    visual = torch.randn(2, 5, 32)
    ctx = m.visual_context(visual, torch.tensor([1, 0, 1]))
    torch.testing.assert_close(ctx["encoder_hidden_states"], visual[[1, 0, 1]])
    ours = make_model(visual_dim=32, n_embd=32).eval().visual_context(visual)["encoder_hidden_states"]
    assert not torch.allclose(ours, visual)  # ours projects (linear + layer norm)
    with pytest.raises(
        ValueError,
        match=r"visual tokens \(16 wide\) go to cross-attention as they are, which "
        r"needs the decoder's width 32",
    ):
        make_model(visual_projection=False, visual_dim=16, n_embd=32)
    with pytest.raises(ValueError, match="visual_projection=False is for mode='cross'"):
        SEVLMConfig(visual_projection=False, mode="prefix", visual_dim=256)


def test_model_configs_without_the_new_keys_load_as_ours():
    from sevlm.config import from_dict

    cfg = from_dict(SEVLMConfig, {"n_layer": 1})
    assert (cfg.vad_bidirectional, cfg.vad_input, cfg.visual_negative, cfg.visual_projection) == (
        False,
        "word",
        "image",
        True,
    )


def test_a_training_step_runs_with_every_authors_model_switch(make_model, tok, lexicon, make_samples):
    import numpy as np

    m = make_model(
        vad_bidirectional=True,
        vad_input="piece",
        visual_negative="explanation",
        visual_projection=False,
        visual_dim=32,
        n_embd=32,
        contrastive_scorer="mlp",
        mlp_scorer_inputs="raw",
        vad_residual=True,
        vad_fuse="explanation+position",
        bos_prompt=True,
    )
    builder = SequenceBuilder(tok, lexicon, max_len=20, bos_prompt=True, anchor="last", vad_input="piece")
    batch = builder.collate(make_samples(4, dim=32), np.random.default_rng(0))
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    out = m(**batch)
    assert torch.isfinite(out.loss) and out.cl_loss is not None and out.cl_loss > 0 and out.vad_loss is not None
    out.loss.backward()
    assert m.emotion_encoder.pos.weight.grad.abs().sum() > 0 and m.contrastive.mlp[0].weight.grad.abs().sum() > 0

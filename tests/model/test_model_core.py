"""SEVLM forward: equivalence with plain GPT-2, causality, each loss by hand, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sevlm.model import SEVLMConfig
from sevlm.model.contrastive import ContrastiveHead, cosine_score
from sevlm.text import model_inputs


def test_plain_gpt2_equivalence(make_model, builder):
    m = make_model(use_vad_input=False, use_vad_head=False, use_contrastive=False, use_segments=False).eval()
    dc = m.decoder.config
    plain = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=dc.vocab_size, n_positions=dc.n_positions, n_embd=dc.n_embd, n_layer=dc.n_layer, n_head=dc.n_head
        )
    ).eval()
    missing, unexpected = plain.load_state_dict(
        {
            k[len("decoder.") :]: v
            for k, v in m.state_dict().items()
            if k.startswith("decoder.") and "crossattention" not in k and "ln_cross_attn" not in k
        },
        strict=False,
    )
    assert not missing and not unexpected
    ids = torch.tensor([builder.encode("awe", "the bright sky")["input_ids"]])
    with torch.no_grad():
        ours = m(input_ids=ids).logits
        ref = plain(input_ids=ids).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_causal_with_vad(make_model, builder, mode, make_samples):
    m = make_model(mode=mode, vad_fuse="all").eval()
    batch = builder.collate_eval(make_samples(1))
    batch2 = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    t = 6
    batch2["input_ids"][0, t + 1] = 1234
    batch2["vad"][0, t + 1] = torch.tensor([0.9, -0.9, 0.5])
    batch2["segment_ids"][0, t + 1] = builder.ids.emotion
    with torch.no_grad():
        a, b = m(**model_inputs(batch)).logits, m(**model_inputs(batch2)).logits
    torch.testing.assert_close(a[0, : t + 1], b[0, : t + 1], atol=1e-6, rtol=0)
    assert (a[0, t + 1] - b[0, t + 1]).abs().max() > 1e-4  # the change is visible where it should be


def test_emotion_encoder_causal_and_incremental(make_model):
    enc = make_model().emotion_encoder.eval()
    vad = torch.randn(2, 7, 3)
    full, _ = enc(vad)
    vad2 = vad.clone()
    vad2[:, 4:] = 5.0
    torch.testing.assert_close(enc(vad2)[0][:, :4], full[:, :4])
    out, cache = enc(vad[:, :3])
    steps = [out]
    for t in range(3, 7):
        o, cache = enc(vad[:, t : t + 1], cache)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=0)


def test_lm_and_vad_loss_by_hand(make_model, builder, make_samples):
    m = make_model(use_contrastive=False).eval()
    batch = builder.collate(make_samples(2), np.random.default_rng(0))
    with torch.no_grad():
        m.vad_head.weight.zero_()
        m.vad_head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        out = m(**model_inputs(batch))
    # LM: mean next-token NLL over non-padding targets
    logp = torch.log_softmax(out.logits, -1)
    nll, count = 0.0, 0
    for i in range(batch["labels"].shape[0]):
        for t in range(batch["labels"].shape[1] - 1):
            y = int(batch["labels"][i, t + 1])
            if y != -100:
                nll -= float(logp[i, t, y])
                count += 1
    assert math.isclose(float(out.lm_loss), nll / count, rel_tol=1e-5)
    # VAD: prediction (0.1,-0.2,0.3) everywhere; MSE over in-lexicon next tokens
    tgt, msk = batch["vad_target"][:, 1:], batch["vad_target_mask"][:, 1:]
    errs = [
        float(((torch.tensor([0.1, -0.2, 0.3]) - tgt[i, t]) ** 2).mean())
        for i, t in zip(*torch.nonzero(msk, as_tuple=True))
    ]
    assert len(errs) > 3
    assert math.isclose(float(out.vad_loss), sum(errs) / len(errs), rel_tol=1e-5)
    assert math.isclose(float(out.loss), float(out.lm_loss) + float(out.vad_loss), rel_tol=1e-6)
    assert out.cl_loss is None


def test_ternary_contrastive_loss_by_hand():
    head = ContrastiveHead(visual_dim=2, text_dim=2, dim=2, temperature=0.5)
    s = 1 / math.sqrt(2)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emo = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [0.0, 1.0]])
    exp = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0], [1.0, 0.0]])
    seq_image = torch.tensor([0, 0, 1, 1])
    pair_valid = torch.tensor([True, False])  # only image 0's two sequences are anchors
    loss = head.loss(img, emo, exp, seq_image, pair_valid, torch.tensor([1, 0]))

    def cos3(i, e, x):
        return (
            sum(a * b for a, b in zip(i, x)) + sum(a * b for a, b in zip(i, e)) + sum(a * b for a, b in zip(e, x))
        ) / 0.5

    I, E, X = img.tolist(), emo.tolist(), exp.tolist()
    terms = []
    for a, partner in ((0, 1), (1, 0)):
        pos = cos3(I[0], E[a], X[a])
        emo_neg = cos3(I[0], E[a], X[partner])
        vis_neg = cos3(I[1], E[a], X[a])
        terms.append(-pos + math.log(math.exp(pos) + math.exp(emo_neg) + math.exp(vis_neg)))
    assert math.isclose(float(loss), sum(terms) / 2, rel_tol=1e-5)
    assert math.isclose(float(cosine_score(img[0], emo[0], exp[0])), 3.0, rel_tol=1e-6)
    # no valid pair: zero, but still differentiable
    z = head.loss(img, emo.requires_grad_(), exp, seq_image, torch.tensor([False, False]))
    assert float(z) == 0.0 and z.requires_grad


@pytest.mark.parametrize("kw", [dict(mode="cross"), dict(mode="prefix", contrastive_scorer="mlp")])
def test_gradients_reach_every_part(make_model, builder, make_samples, kw):
    m = make_model(**kw).train()
    out = m(**model_inputs(builder.collate(make_samples(3), np.random.default_rng(0))))
    assert all(x is not None and torch.isfinite(x) for x in (out.lm_loss, out.cl_loss, out.vad_loss))
    out.loss.backward()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    # the MLP scorer's output bias shifts every candidate's score alike: softmax cancels it
    assert not [n for n in dead if n != "contrastive.mlp.8.bias"]


def test_param_groups_partition(make_model):
    m = make_model()
    groups = m.param_groups(decoder_lr=2e-5, emotion_lr=4e-5, weight_decay=0.01)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len([p for p in m.parameters() if p.requires_grad])
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["emotion"] == 4e-5 and lrs["decoder"] == 2e-5
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))
    names = {id(p): n for n, p in m.named_parameters()}
    emo = next(g for g in groups if g["name"] == "emotion")
    assert all(names[id(p)].startswith(("emotion_encoder", "fusion", "vad_head", "contrastive")) for p in emo["params"])


def _scored_text(m, batch):
    """The (emotion, explanation) inputs the training forward hands the contrastive scorer."""
    seen = []
    real = m.contrastive.loss
    m.contrastive.loss = lambda img, emo, exp, *a, **kw: seen.append((emo, exp)) or real(img, emo, exp, *a, **kw)
    with torch.no_grad():
        m(**model_inputs(batch))
    del m.contrastive.loss
    return seen[0]


@pytest.mark.parametrize("features", ["text", "image"])
def test_retrieval_embeddings_text_only(make_model, builder, make_samples, features):
    m = make_model(contrastive_features=features).eval()
    batch = builder.collate(make_samples(2), np.random.default_rng(0))
    emo, exp = m.embed_texts(**batch)
    assert emo.shape == exp.shape == (4, 16)
    torch.testing.assert_close(emo.norm(dim=-1), torch.ones(4))
    assert m.embed_images(batch["visual"]).shape == (2, 16)
    # Training scores what retrieval embeds, whatever the image, with text features; with
    # image-conditioned ones (the authors') it scores something else.
    other = dict(batch, visual=torch.randn_like(batch["visual"]))
    for b in (batch, other):
        e, x = _scored_text(m, b)
        if features == "text":
            torch.testing.assert_close((e, x), (emo, exp))
        else:
            assert (x - exp).abs().max() > 1e-3
    if features == "image":
        assert (_scored_text(m, batch)[1] - _scored_text(m, other)[1]).abs().max() > 1e-4
    # retrieval embeds text alike in both settings (same weights: the switch adds none)
    torch.testing.assert_close(make_model(contrastive_features="text").eval().embed_texts(**batch)[1], exp)


def test_explanation_features_ignore_the_label(make_model, builder):
    """Defect: the emotional negative was solvable from the label alone. The same explanation
    written under two labels must give identical features (and the emotional negative's score
    then equals the positive's: the loss cannot fall by reading the label)."""
    m = make_model().eval()
    batch = builder._stack(
        builder.encode_many(
            [
                ("awe", "the dark storm"),
                ("fear", "the dark storm"),
                ("something else", "the dark storm"),
                ("fear", "a calm sky"),
            ]
        )
    )
    _, exp = m.embed_texts(**batch)
    torch.testing.assert_close(exp[1], exp[0], atol=1e-6, rtol=0)
    with torch.no_grad():
        emo_f, exp_f = m.text_features(batch["input_ids"], batch["attention_mask"], batch["segment_ids"], batch["vad"])
    torch.testing.assert_close(exp_f[1], exp_f[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(exp_f[2], exp_f[0], atol=1e-6, rtol=0)
    assert (exp_f[3] - exp_f[1]).abs().max() > 1e-3  # another text: another feature
    assert (emo_f[1] - emo_f[0]).abs().max() > 1e-3  # the emotion feature does see the label
    assert (emo_f[3] - emo_f[1]).abs().max() < 1e-6  # ... and only the label


@pytest.mark.parametrize("features", ["text", "image"])
def test_contrastive_features_reach_cross_attention(make_model, builder, make_samples, features):
    """With image-conditioned features the contrastive loss alone trains cross-attention and
    the visual projection; with text-only features it never reaches them."""
    m = make_model(contrastive_features=features, dropout=0.0).train()
    out = m(**model_inputs(builder.collate(make_samples(3), np.random.default_rng(0))))
    out.cl_loss.backward()
    grads = {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in m.named_parameters()}
    reached = {n for n, g in grads.items() if g > 0}
    cross = {n for n in grads if "crossattention" in n or n.startswith("visual_proj.")}
    assert cross
    if features == "image":
        assert cross <= reached
    else:
        assert not cross & reached
        assert "contrastive.exp_proj.weight" in reached


def test_mlp_scorer_inputs(make_model, builder, make_samples):
    batch = builder.collate(make_samples(3), np.random.default_rng(0))
    raw = make_model(contrastive_scorer="mlp", mlp_scorer_inputs="raw").eval()
    assert raw.contrastive.mlp[0].in_features == 16 + 2 * 32  # mean visual token + two hidden means
    img, emo, exp = raw.contrastive.scorer_inputs(batch["visual"], torch.ones(6, 32), torch.zeros(6, 32))
    torch.testing.assert_close(img, batch["visual"].mean(1))
    assert (emo == 1).all() and (exp == 0).all()
    proj = make_model(contrastive_scorer="mlp").eval()
    assert proj.contrastive.mlp[0].in_features == 3 * 16
    for m, trained in ((raw, False), (proj, True)):
        m(**model_inputs(batch)).cl_loss.backward()
        g = m.contrastive.img_proj.weight.grad
        assert (g is not None and g.abs().sum() > 0) == trained
    with pytest.raises(ValueError, match="needs contrastive_scorer"):
        make_model(mlp_scorer_inputs="raw")


def test_vad_residual(make_model):
    plain, res = make_model().emotion_encoder.eval(), make_model(vad_residual=True).emotion_encoder.eval()
    res.load_state_dict(plain.state_dict())  # the switch adds no weights
    vad = torch.randn(2, 6, 3)
    x = res.ln(vad + res.pos(torch.arange(6)))
    for layer in res.layers:
        x = x + layer(x)[0]
    torch.testing.assert_close(res(vad)[0], x)
    assert (res(vad)[0] - plain(vad)[0]).abs().max() > 1e-3
    out, cache = res(vad[:, :2])  # the cache still gives the full pass
    steps = [out]
    for t in range(2, 6):
        o, cache = res(vad[:, t : t + 1], cache)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, 1), x, atol=1e-6, rtol=0)


def test_fusion_init(make_model):
    E = 32
    ident = make_model().fusion
    torch.testing.assert_close(ident.weight[:, :E], torch.eye(E))
    normal = make_model(fusion_init="normal").fusion
    w = normal.weight[:, :E]
    assert (w - torch.eye(E)).abs().max() > 0.5 and 0.015 < float(w.std()) < 0.025
    assert not ident.bias.any() and not normal.bias.any()


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_vad_fuse_with_position(make_model, builder, make_samples, mode):
    """The authors' placement fuses W_f [x + p; v] + b at explanation positions: with the
    identity start that is the same input as ours; with another fusion it is not."""
    batch = builder.collate_eval(make_samples(2))
    ours = make_model(mode=mode).eval()
    theirs = make_model(mode=mode, vad_fuse="explanation+position").eval()
    with torch.no_grad():
        a, b = ours(**model_inputs(batch)).logits, theirs(**model_inputs(batch)).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        for m in (ours, theirs):
            m.fusion.weight[:, :32].mul_(0.5)
        a, b = ours(**model_inputs(batch)).logits, theirs(**model_inputs(batch)).logits
    exp = batch["segment_ids"] == builder.ids.explanation
    assert (a - b).abs().amax(-1)[exp].min() > 1e-4  # every explanation position differs
    torch.testing.assert_close(a[~exp], b[~exp])  # the others are untouched


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        SEVLMConfig(mode="bogus")
    with pytest.raises(ValueError, match="n_positions"):
        SEVLMConfig(max_len=100, n_positions=64)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_authors_switches_decode(make_model, tok, lexicon, make_samples, mode):
    """The authors' switches together: cached decoding equals full recompute (positions of the
    fused input and the VAD encoder's outer residual survive the caches), and generation is
    primed with the BOS prompt that training sequences start with."""
    from sevlm.decoding import DecodingConfig
    from sevlm.generate import generate
    from sevlm.vocab import prompt_ids

    m = make_model(
        mode=mode, vad_fuse="explanation+position", fusion_init="normal", vad_residual=True, bos_prompt=True
    ).eval()
    visual = torch.stack([s["tokens"] for s in make_samples(2)])
    a = generate(m, tok, lexicon, visual, DecodingConfig(max_new_tokens=8))
    b = generate(m, tok, lexicon, visual, DecodingConfig(max_new_tokens=8), use_cache=False)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    first = generate(m, tok, lexicon, visual, DecodingConfig(max_new_tokens=1, no_repeat_ngram=0))
    for bos, expect in ((True, True), (False, False)):
        prompt = torch.tensor([prompt_ids(tok, bos_prompt=bos)] * 2)
        seg = torch.full_like(prompt, m.config.emotion_id)
        with torch.no_grad():
            logp = torch.log_softmax(
                m(input_ids=prompt, segment_ids=seg, vad=torch.zeros(*prompt.shape, 3), visual=visual).logits[:, -1], -1
            )
        scores = [float(logp[i, h.tokens[0]]) for i, h in enumerate(first)]
        assert all(math.isclose(s, h.score, abs_tol=1e-5) for s, h in zip(scores, first)) == expect

"""SEVLM forward: equivalence with plain GPT-2, causality, each loss by hand, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from sevlm.model import SEVLMConfig
from sevlm.model.contrastive import ContrastiveHead, cosine_score


def test_plain_gpt2_equivalence(make_model, builder):
    m = make_model(use_vad_input=False, use_vad_head=False, use_contrastive=False, use_segments=False).eval()
    dc = m.decoder.config
    plain = GPT2LMHeadModel(
        GPT2Config(vocab_size=dc.vocab_size, n_positions=dc.n_positions, n_embd=dc.n_embd, n_layer=dc.n_layer, n_head=dc.n_head)
    ).eval()
    missing, unexpected = plain.load_state_dict(
        {k[len("decoder."):]: v for k, v in m.state_dict().items() if k.startswith("decoder.") and "crossattention" not in k and "ln_cross_attn" not in k},
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
        a, b = m(**batch).logits, m(**batch2).logits
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
        out = m(**batch)
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
    errs = [float(((torch.tensor([0.1, -0.2, 0.3]) - tgt[i, t]) ** 2).mean()) for i, t in zip(*torch.nonzero(msk, as_tuple=True))]
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
        return (sum(a * b for a, b in zip(i, x)) + sum(a * b for a, b in zip(i, e)) + sum(a * b for a, b in zip(e, x))) / 0.5

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
    out = m(**builder.collate(make_samples(3), np.random.default_rng(0)))
    assert all(x is not None and torch.isfinite(x) for x in (out.lm_loss, out.cl_loss, out.vad_loss))
    out.loss.backward()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead


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


def test_retrieval_embeddings_text_only(make_model, builder, make_samples):
    m = make_model().eval()
    batch = builder.collate_eval(make_samples(2))
    emo, exp = m.embed_texts(**batch)
    assert emo.shape == exp.shape == (2, 16)
    torch.testing.assert_close(emo.norm(dim=-1), torch.ones(2))
    img = m.embed_images(batch["visual"])
    assert img.shape == (2, 16)
    # same text, another image: identical text embedding (no image in the text pass)
    batch2 = dict(batch, visual=torch.randn_like(batch["visual"]))
    torch.testing.assert_close(m.embed_texts(**batch2)[1], exp)


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        SEVLMConfig(mode="bogus")
    with pytest.raises(ValueError, match="n_positions"):
        SEVLMConfig(max_len=100, n_positions=64)

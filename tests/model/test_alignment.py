"""The alignment head: the retrieval space, trained CLIP-style on detached features (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sevlm.emotions import EMOTIONS
from sevlm.evaluation.embedding import FILLER
from sevlm.evaluation.retrieval import retrieval_metrics
from sevlm.model.contrastive import AlignmentHead
from sevlm.text import model_inputs

# words that give each emotion's explanations away, so text features can carry the emotion
CUES = {
    "amusement": "funny clown",
    "awe": "vast sky",
    "contentment": "calm field",
    "excitement": "bright party",
    "anger": "red rage",
    "disgust": "rotten meat",
    "fear": "dark storm",
    "sadness": "lonely grey",
    "something else": "odd lines",
}


def test_alignment_loss_by_hand():
    torch.manual_seed(0)
    head = AlignmentHead(4, 6, 3, temperature=0.5)
    emotions = head.embed_emotions()
    torch.testing.assert_close(emotions, F.normalize(head.emotions, dim=-1))
    img = F.normalize(torch.randn(2, 3), dim=-1)
    exp = F.normalize(torch.randn(4, 3), dim=-1)
    seq_image = torch.tensor([0, 0, 1, 1])
    votes = torch.zeros(2, 9)
    votes[0, 1], votes[0, 6], votes[1, 7] = 0.75, 0.25, 1.0
    i2e = 0.0
    for i in range(2):
        logp = torch.log_softmax(img[i] @ emotions.T / 0.5, dim=0)
        i2e -= (votes[i] * logp).sum() / 2
    s = img @ exp.T / 0.5  # (2, 4)
    i2x = -(torch.log_softmax(s[0], 0)[:2].mean() + torch.log_softmax(s[1], 0)[2:].mean()) / 2
    x2i = -sum(torch.log_softmax(s[:, j], 0)[seq_image[j]] for j in range(4)) / 4
    torch.testing.assert_close(head.loss(img, exp, seq_image, votes), i2e + (i2x + x2i) / 2)


def test_collate_carries_each_images_vote_shares(builder, make_samples):
    samples = make_samples(3)
    votes = builder.collate(samples, np.random.default_rng(0))["image_votes"]
    assert votes.shape == (3, 9) and votes.dtype == torch.float32
    for k, s in enumerate(samples):  # every annotation counts, not only the sampled pair
        expected = np.bincount([EMOTIONS.index(e) for e in s["emotions"]], minlength=9) / len(s["emotions"])
        np.testing.assert_allclose(votes[k].numpy(), expected, rtol=1e-6)
    bad = [dict(samples[0], emotions=["awe", "joy", "awe"])]
    with pytest.raises(Exception, match="'joy' is not one of the 9"):
        builder.collate(bad, np.random.default_rng(0))


def test_alignment_trains_its_head_and_nothing_else(make_model, builder, make_samples):
    m = make_model(dropout=0.0).train()
    out = m(**model_inputs(builder.collate(make_samples(4), np.random.default_rng(0))))
    assert out.align_loss is not None and torch.isfinite(out.align_loss)
    torch.testing.assert_close(out.loss, out.lm_loss + out.cl_loss + out.vad_loss + out.align_loss)
    out.align_loss.backward()
    reached = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {f"contrastive.align.{p}_proj.{w}" for p in ("img", "exp") for w in ("weight", "bias")}
    assert reached == expected | {"contrastive.align.emotions"}


def test_w_align_zero_is_the_authors_layout(make_model, builder, make_samples):
    m = make_model(w_align=0.0).eval()
    assert m.contrastive.align is None
    assert not [n for n, _ in m.named_parameters() if ".align." in n]
    with torch.no_grad():
        out = m(**model_inputs(builder.collate(make_samples(3), np.random.default_rng(0))))
    assert out.align_loss is None
    torch.testing.assert_close(out.loss, out.lm_loss + out.cl_loss + out.vad_loss)


def test_retrieval_embeds_with_the_alignment_head(make_model, builder, make_samples):
    """What the alignment loss scores is what retrieval indexes (eval mode: no dropout)."""
    m = make_model().eval()
    batch = builder.collate(make_samples(3), np.random.default_rng(0))
    seen = {}
    real = m.contrastive.align.loss
    m.contrastive.align.loss = lambda img, exp, *a: seen.update(img=img, exp=exp) or real(img, exp, *a)
    with torch.no_grad():
        m(**model_inputs(batch))
    torch.testing.assert_close(seen["img"], m.embed_images(batch["visual"]))
    torch.testing.assert_close(seen["exp"], m.embed_explanations(**batch))
    torch.testing.assert_close(m.embed_emotions(**batch), m.contrastive.align.embed_emotions())
    assert not torch.allclose(m.embed_images(batch["visual"]), m.contrastive.embed_image(batch["visual"]))
    # without the head, retrieval embeds with the ternary head's projections
    plain = make_model(w_align=0.0).eval()
    torch.testing.assert_close(plain.embed_explanations(**batch), plain.embed_texts(**batch)[1])
    torch.testing.assert_close(plain.embed_images(batch["visual"]), plain.contrastive.embed_image(batch["visual"]))


def test_the_no_image_control_trains_no_image_signal(make_model, builder, make_samples):
    m = make_model(mode="none", dropout=0.0).train()
    assert m.contrastive.align is None  # nothing to align without the image
    before = m.contrastive.img_proj.weight.detach().clone()
    out = m(**model_inputs(builder.collate(make_samples(4), np.random.default_rng(0))))
    out.loss.backward()
    assert m.contrastive.img_proj.weight.grad is None or not m.contrastive.img_proj.weight.grad.any()
    assert m.contrastive.emo_proj.weight.grad.abs().sum() > 0  # the text side still learns
    # retrieval from the control embeds images with the untouched initial projection
    torch.testing.assert_close(m.contrastive.img_proj.weight, before)


def test_each_model_says_which_space_it_retrieves_in(make_model):
    from sevlm.evaluation.gallery import retrieval_space

    assert retrieval_space(make_model()) == {"head": "alignment", "image_side_trained": True}
    assert retrieval_space(make_model(w_align=0.0)) == {"head": "ternary", "image_side_trained": True}
    control = retrieval_space(make_model(mode="none"))
    assert control["head"] == "ternary" and control["image_side_trained"] is False and "untrained" in control["note"]


def _emotion_data(n_per_emotion: int, seed: int, prototypes: torch.Tensor) -> list[dict]:
    """Images whose 5 visual tokens are their emotion's prototype plus noise, 3 annotations each,
    the explanations giving the emotion away with cue words."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, emotion in enumerate(EMOTIONS):
        for i in range(n_per_emotion):
            other = EMOTIONS[(k + 1 + i) % 9]
            out.append(
                {
                    "image_id": f"s/{emotion}-{seed}-{i}",
                    "tokens": prototypes[k] + 0.5 * torch.randn(prototypes.shape[1:], generator=g),
                    "emotions": [emotion, emotion, other],
                    "explanations": [f"the {CUES[emotion]} here", f"so {CUES[emotion]}", f"the {CUES[other]} here"],
                }
            )
    return out


def _train_and_retrieve(make_model, builder, seed: int, steps: int = 60, **kw) -> tuple[dict, torch.Tensor]:
    prototypes = torch.randn(9, 5, 16, generator=torch.Generator().manual_seed(123))
    train, test = _emotion_data(8, 0, prototypes), _emotion_data(4, 1, prototypes)
    m = make_model(seed=seed, dropout=0.0, **kw).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = builder.collate([train[i] for i in rng.choice(len(train), 18, replace=False)], rng)
        loss = m(**model_inputs(batch)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    batch = builder.collate_eval(test)
    nine = builder._stack(builder.encode_many([(e, FILLER) for e in EMOTIONS]))
    texts = builder._stack(
        builder.encode_many([(e, x) for s in test for e, x in zip(s["emotions"], s["explanations"])])
    )
    images = m.embed_images(batch["visual"])
    figures = retrieval_metrics(
        images.numpy(),
        m.embed_explanations(**texts).numpy(),
        np.repeat(np.arange(len(test)), 3),
        m.embed_emotions(**nine).numpy(),
        np.repeat(np.arange(9), 4),
    )
    return figures, images


@pytest.mark.slow
def test_an_image_that_carries_the_emotion_is_retrieved_from_the_image(make_model, builder):
    figures, _ = _train_and_retrieve(make_model, builder, seed=0, steps=80)
    # 36 test images, 4 per emotion: chance 1/9
    assert figures["image_to_emotion"]["accuracy"] >= 0.75, figures["image_to_emotion"]
    # No image -> explanation figure: these 108 explanations are 18 sentences, each written for
    # ~6 paintings, and the tiny decoder's text features are barely trained in 80 steps. Ranks
    # that counted ties in the query's favour put this at 1.5x its chance (a painting's sentence
    # tied with its copies); counted against it (retrieval.exact_ranks) it is at chance, as the
    # share of an image's 10 nearest explanations naming its emotion's cue is (0.07 vs 0.11).
    # The figures still exist and lie in [0, 1]:
    assert 0 <= figures["image_to_explanation"]["R@10"] <= 1 and figures["image_to_explanation"]["n_queries"] == 36


@pytest.mark.slow
def test_equal_seeds_give_equal_retrieval_figures(make_model, builder):
    a, img_a = _train_and_retrieve(make_model, builder, seed=3, steps=30)
    b, img_b = _train_and_retrieve(make_model, builder, seed=3, steps=30)
    c, img_c = _train_and_retrieve(make_model, builder, seed=4, steps=30)
    assert torch.equal(img_a, img_b)
    drop = lambda f: {k: v for k, v in f.items() if k != "index"}  # noqa: E731
    assert drop(a) == drop(b)
    assert not torch.equal(img_a, img_c)  # the seed does reach the figures

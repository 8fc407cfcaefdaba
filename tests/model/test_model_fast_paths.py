"""The training step's shortcuts agree with the plain computations they replace."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sevlm.model.losses import target_cross_entropy
from sevlm.text import model_inputs


def test_target_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(7, 50, generator=g) * 3).requires_grad_()
    y = torch.randint(0, 50, (7,), generator=g)
    ours = target_cross_entropy(z, y)
    (g_ours,) = torch.autograd.grad(ours * 2.5, z)
    ref = F.cross_entropy(z, y)
    (g_ref,) = torch.autograd.grad(ref * 2.5, z)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_lm_loss_is_full_logits_cross_entropy(make_model, builder, make_samples):
    m = make_model().eval()
    batch = builder.collate(make_samples(3), np.random.default_rng(0))
    batch["labels"][0, 5:9] = -100  # holes inside a sequence too
    out = m(**model_inputs(batch))
    logits = out.logits  # computed on demand from the same hidden states
    assert logits.shape == (*batch["input_ids"].shape, m.config.vocab_size)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, ref)
    # gradients reach the tied LM head / embedding through the gathered rows
    m.zero_grad()
    out.lm_loss.backward()
    w = m.decoder.lm_head.weight.grad
    assert w is not None and float(w.abs().sum()) > 0


def test_batched_collate_equals_per_sequence_encode(builder, make_samples):
    samples = make_samples(3)
    batch = builder.collate_eval(samples, annotation=1)
    for i, s in enumerate(samples):
        one = builder.encode(s["emotions"][1], s["explanations"][1])
        for k, v in one.items():
            np.testing.assert_array_equal(batch[k][i].numpy(), v, err_msg=k)
    assert batch["visual"].dtype == torch.float32 and batch["visual"].shape == (3, 5, 16)

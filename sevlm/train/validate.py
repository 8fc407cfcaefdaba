"""Validation during training: loss on the val split, plus a generation-based emotion accuracy
(dominant emotion recomputed from each image's votes under the chosen rule) and BLEU-4 on its
first `gen_images` images (all of them when None), decoded with the run's DecodingConfig."""

from __future__ import annotations

import torch
import torch.distributed as dist

from sevlm import generate as generation  # `generation.generate`: looked up per call (tests wrap it)
from sevlm.evaluation.inputs import entry_dominant
from sevlm.train.data import split_inputs
from sevlm.train.distributed import mean_across
from sevlm.train.metrics import bleu4, emotion_accuracy
from sevlm.train.order import val_batches


def validate_run(model, builder, val_set, resolved, device) -> dict:
    """`validate` with a run's settings (a `sevlm.train.resolve.Resolved`)."""
    cfg, schedule = resolved.config, resolved.config.schedule
    return validate(
        model, builder, val_set, micro=resolved.micro, rank=resolved.rank, world=resolved.world, seed=cfg.seed,
        max_batches=schedule.val_batches, gen_images=schedule.val_gen_images, dominance=schedule.val_dominance,
        decoding=cfg.decoding, device=device, dtype=resolved.dtype,
    )  # fmt: skip


@torch.no_grad()
def validate(
    model,
    builder,
    val_set,
    *,
    micro: int,
    rank: int,
    world: int,
    seed: int,
    max_batches: int | None,
    gen_images: int | None,
    dominance: str = "artemis",
    decoding=None,
    device,
    dtype,
) -> dict:
    """Metrics (the same dict on every rank): loss, lm_loss, accuracy, bleu4, n_generated."""
    was_training = model.training
    model.eval()
    sums = {"loss": 0.0, "lm_loss": 0.0}
    n = 0
    for batch in val_batches(val_set, builder.collate, micro, rank, world, seed, max_batches):
        inputs, _ = split_inputs(batch, device, dtype)
        out = model(**inputs)
        for k in sums:
            v = getattr(out, k)
            if v is not None:
                sums[k] += float(v) * len(batch["image_ids"])
        n += len(batch["image_ids"])
    totals = mean_across([sums["loss"], sums["lm_loss"], float(n)])  # means of per-rank sums
    count = max(totals[2], 1e-9)
    metrics = {"loss": totals[0] / count, "lm_loss": totals[1] / count}

    # Generation runs on rank 0 only (ZeRO-2 keeps full weights on every rank); the others wait.
    gen = [None]
    n_gen = len(val_set) if gen_images is None else min(gen_images, len(val_set))
    if rank == 0 and n_gen > 0:
        gen[0] = _generation_metrics(model, builder, val_set, micro, n_gen, dominance, decoding, device, dtype)
    if world > 1:
        dist.broadcast_object_list(gen, src=0)
    if gen[0]:
        metrics.update(gen[0])
    model.train(was_training)
    return metrics


def _generation_metrics(model, builder, val_set, micro: int, n: int, dominance: str, decoding, device, dtype) -> dict:
    references, hypotheses, dominant, predicted = {}, {}, {}, {}
    for start in range(0, n, max(micro, 1)):
        samples = [val_set[i] for i in range(start, min(n, start + micro))]
        visual = torch.stack([torch.as_tensor(s["tokens"]) for s in samples]).to(device, dtype)  # (I, N, D)
        if model.config.mode == "none":  # the text-only control model never sees the image
            visual = None
        hyps = generation.generate(
            model,
            builder.tok,
            builder.lexicon,
            visual,
            decoding=decoding,
            n_images=len(samples),
            vocab=builder.vocab,
            image_keys=[s["image_id"] for s in samples],
        )
        for s, h in zip(samples, hyps):
            key = s["image_id"]
            references[key] = list(s["explanations"])
            hypotheses[key] = h.explanation
            # the same rule over the same votes as `sevlm evaluate` (all of them, via emotion_distribution)
            dominant[key] = entry_dominant(s, f"validation sample {key!r}", dominance)
            predicted[key] = h.emotion
    return {
        "accuracy": emotion_accuracy(dominant, predicted),
        "bleu4": bleu4(references, hypotheses),
        "n_generated": n,
    }

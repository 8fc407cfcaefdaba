"""The DeepSpeed engine over the model, with the recipe's AdamW (one param group per learning
rate) and LambdaLR. The benchmarks build their engines through these too, so they measure what
training runs."""

from __future__ import annotations

import torch

from sevlm.train.config import OptimConfig


def linear_schedule(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up, then linear decay to 0 at `total_steps` (the paper: no warm-up)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def build_optimizer(model, optim: OptimConfig, total_steps: int):
    """(AdamW over the model's param groups, LambdaLR) as the recipe trains with."""
    heads_lr = optim.decoder_lr if optim.heads_lr is None else optim.heads_lr
    groups = model.param_groups(optim.decoder_lr, optim.emotion_lr, optim.weight_decay, heads_lr=heads_lr)
    optimizer = torch.optim.AdamW(groups, betas=tuple(optim.betas), eps=optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, optim.warmup_steps))
    return optimizer, scheduler


def build_engine(model, optim: OptimConfig, total_steps: int, ds_config: dict):
    """The DeepSpeed engine (plus its optimizer and scheduler) over `model`."""
    import deepspeed  # imported once the accelerator env is set (sevlm.train.distributed.set_env_defaults)

    optimizer, scheduler = build_optimizer(model, optim, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, optimizer, scheduler

"""The training engine: where a process trains (`Runtime`: device, precision, rank, batch sizes)
and the DeepSpeed engine over the model with the recipe's AdamW and LambdaLR. The benchmarks
build their engines through these too, so they measure what training runs."""

from __future__ import annotations

from dataclasses import dataclass

from sevlm.errors import ConfigError
from sevlm.train.config import OptimConfig, TrainConfig, resolve_batch, resolve_ds_config
from sevlm.train.distributed import init_distributed, pick_device, set_env_defaults


@dataclass
class Runtime:
    """Where and how this process trains: device, precision, its rank, the batch sizes."""

    device: str
    precision: str
    rank: int
    world: int
    micro: int
    accum: int
    global_batch: int
    ds_config: dict

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)


def linear_schedule(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up, then linear decay to 0 at `total_steps` (the paper: no warm-up)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def build_optimizer(model, optim: OptimConfig, total_steps: int):
    """(AdamW over the model's param groups, LambdaLR) as the recipe trains with."""
    import torch

    heads_lr = optim.decoder_lr if optim.heads_lr is None else optim.heads_lr
    groups = model.param_groups(optim.decoder_lr, optim.emotion_lr, optim.weight_decay, heads_lr=heads_lr)
    optimizer = torch.optim.AdamW(groups, betas=tuple(optim.betas), eps=optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, optim.warmup_steps))
    return optimizer, scheduler


def build_engine(model, optim: OptimConfig, total_steps: int, ds_config: dict):
    """The DeepSpeed engine (plus its optimizer and scheduler) over `model`."""
    import deepspeed

    optimizer, scheduler = build_optimizer(model, optim, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, optimizer, scheduler


def auto_precision(device: str) -> str:
    """fp16 on GPUs (the paper's 2080 Ti has no bf16); on CPUs bf16 only where the CPU has native
    bf16 (AVX512-BF16 / AMX): emulated bf16 is several times slower than fp32."""
    if device == "cuda":
        return "fp16"
    try:
        import torch

        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def start_runtime(cfg: TrainConfig) -> Runtime:
    """Pick device and precision, join the process group, resolve batch sizes and the ds_config."""
    device = pick_device(cfg.device)
    precision = cfg.precision if cfg.precision != "auto" else auto_precision(device)
    if precision == "fp16" and device == "cpu":
        raise ConfigError("precision fp16 needs a GPU; on a CPU use bf16 or fp32")
    set_env_defaults(device)  # before deepspeed is imported: DS_ACCELERATOR, single-process env
    rank, world = init_distributed(device)
    micro, accum, global_batch = resolve_batch(cfg.schedule, world)
    ds_config = resolve_ds_config(cfg.ds_config, precision, micro, accum, world, cfg.optim.clip_grad)
    return Runtime(device, precision, rank, world, micro, accum, global_batch, ds_config)

"""A run's settings resolved once (`resolve`): every value the run derives from its config and
from the facts of its data and its process group, in one frozen `Resolved`, so that nothing
after set-up derives, checks or edits a setting again.

    config        data paths absolute and the lexicon as recorded (a new run's config.json)
    device, precision, rank, world
    micro, accum, global_batch   global = micro x world x accum, checked
    ds_config     the DeepSpeed config with those batch sizes, the precision and the clipping
    model         the model config with the features' visual width and the tokenizer's ids
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from sevlm.data.vad import lexicon_spec
from sevlm.errors import ConfigError
from sevlm.features.shards import is_path
from sevlm.model.config import SEVLMConfig
from sevlm.train.checks import FeatureInfo
from sevlm.train.config import TrainConfig, resolve_batch, resolve_ds_config
from sevlm.train.distributed import join_process_group
from sevlm.vocab import TokenIds

DATA_PATHS = ("dataset_dir", "features", "shards", "tokenizer")  # made absolute for a new run


@dataclass(frozen=True)
class Resolved:
    """Where and how this process trains, and with what settings; see the module docstring."""

    config: TrainConfig
    device: str
    precision: str
    rank: int
    world: int
    micro: int
    accum: int
    global_batch: int
    ds_config: dict
    model: SEVLMConfig

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def dtype(self) -> torch.dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)


def resolve(
    cfg: TrainConfig,
    device: str,
    rank: int,
    world: int,
    visual: FeatureInfo | None = None,
    token_ids: TokenIds | None = None,
    lexicon: str | None = None,
    new_run_dir: Path | None = None,
) -> Resolved:
    """`cfg` resolved against the facts: the device and process group, the features (`visual`),
    the tokenizer's ids and the lexicon setting `checks.resolve_lexicon` chose. `new_run_dir`:
    the folder of a new run, whose config records absolute paths; a resumed run's config (None)
    stays as it was recorded."""
    precision = cfg.precision if cfg.precision != "auto" else auto_precision(device)
    if precision == "fp16" and device == "cpu":
        raise ConfigError("precision fp16 needs a GPU; on a CPU use bf16 or fp32")
    micro, accum, global_batch = resolve_batch(cfg.schedule, world)
    ds_config = resolve_ds_config(cfg.ds_config, precision, micro, accum, world, cfg.optim.clip_grad)
    model = cfg.model if visual is None else build_model_config(cfg.model, visual, token_ids)
    config = cfg if new_run_dir is None else _absolute_paths(cfg, new_run_dir)
    if lexicon is not None:
        data = dataclasses.replace(config.data, lexicon=lexicon_spec(lexicon) if new_run_dir else lexicon)
        config = dataclasses.replace(config, data=data)
    return Resolved(config, device, precision, rank, world, micro, accum, global_batch, ds_config, model)


def start_runtime(cfg: TrainConfig) -> Resolved:
    """Join the process group and resolve `cfg` without data (the model config as it is): the
    benchmarks set up their engines through this, so they measure what training runs."""
    device, rank, world = join_process_group(cfg.device)
    return resolve(cfg, device, rank, world)


def build_model_config(model: SEVLMConfig, info: FeatureInfo, token_ids: TokenIds | None = None) -> SEVLMConfig:
    """`model` with the visual width of the features (the one source of truth for it) and, given
    them, the tokenizer's ids."""
    if info.dim is not None:
        default = next(f.default for f in dataclasses.fields(model) if f.name == "visual_dim")
        if model.visual_dim not in (default, info.dim):
            raise ConfigError(
                f"model.visual_dim={model.visual_dim} but {info.path} holds {info.dim}-d visual tokens "
                f"(encoder {info.encoder}); drop model.visual_dim to take it from the features"
            )
        if not model.visual_projection and model.decoder is None and info.dim != model.n_embd:
            raise ConfigError(
                f"model.visual_projection=false feeds the visual tokens to cross-attention as they are, but "
                f"{info.path} holds {info.dim}-d tokens and the decoder is {model.n_embd} wide (model.n_embd)"
            )
        model = dataclasses.replace(model, visual_dim=info.dim)
    return model if token_ids is None else model.with_token_ids(token_ids)


def auto_precision(device: str) -> str:
    """fp16 on GPUs (the paper's 2080 Ti has no bf16); on CPUs bf16 only where the CPU has native
    bf16 (AVX512-BF16 / AMX): emulated bf16 is several times slower than fp32."""
    if device == "cuda":
        return "fp16"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def _absolute_paths(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """A new run's paths made absolute: the run folder (and its export) must work from anywhere."""
    data = cfg.data
    paths = {
        name: str(Path(getattr(data, name)).resolve())
        for name in DATA_PATHS
        if getattr(data, name) and (name != "shards" or is_path(data.shards))  # shards may be a URL
    }
    return dataclasses.replace(cfg, out_dir=str(Path(run_dir).resolve()), data=dataclasses.replace(data, **paths))

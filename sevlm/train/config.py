"""Training configuration: small dataclasses with working defaults.

The paper's setting is `sevlm/configs/paper.json`, and only there. A config file is JSON with the
sections below (see sevlm/configs/*.json); `key=value`
overrides use dotted keys (`schedule.max_steps=100`, `model.n_layer=2`). The DeepSpeed
engine settings live in ds_configs/*.json; batch sizes are set here only and written into
the resolved DeepSpeed config by `resolve_ds_config`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sevlm.config import from_dict, load_config
from sevlm.decoding import DecodingConfig
from sevlm.emotions import DOMINANCE_RULES
from sevlm.encoders.base import IMAGE_PREPROCESSING
from sevlm.errors import ConfigError
from sevlm.model.config import SEVLMConfig
from sevlm.text import ANCHORS


def _ds_config_dir() -> Path:
    """ds_configs/ of a source checkout (editable install), else the copy setup.py installs."""
    checkout = Path(__file__).resolve().parents[2] / "ds_configs"
    installed = Path(sys.prefix) / "share" / "sevlm" / "ds_configs"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


DS_CONFIG_DIR = _ds_config_dir()
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
# Keys the trainer owns: a ds_config that sets them would be a second source of truth.
TRAINER_DS_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "optimizer",
    "scheduler",
    "gradient_clipping",
)


ASSIST_MODES = ("auto", "never", "always")  # data.main_assist
DATA_SOURCES = ("features", "shards")  # data.source


@dataclass
class DataConfig:
    dataset_dir: str = ""
    # One source per run, training and validation alike: the HDF5 feature cache (sevlm extract)
    # or WebDataset shards of both splits (sevlm shard --split train val). Both set is an error
    # unless `source` says which to read ("features" or "shards").
    features: str | None = None
    shards: str | None = None
    source: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    encoder: str | None = None  # encoder the features must come from (checked against the cache)
    # NRC-VAD lexicon file, or "demo" (the shipped demo table), or "demo-data" (the demo table on the
    # synthetic demo data only: the demo and tiny configs); required
    lexicon: str | None = None
    tokenizer: str | None = None  # tokenizer folder; None = the shipped GPT-2 BPE files
    # Decoders trained from scratch: keep only the GPT-2 ids of the training annotations
    # (vocab.VocabMap), so the embedding and LM head shrink from 50,260 rows to the corpus size.
    corpus_vocab: bool = False
    vocab_min_count: int = 1
    num_workers: int = 0
    # with workers, the main process collates a batch whenever none is ready as it comes to take
    # one (auto), never, or always (tests); see sevlm.train.data.Assist
    main_assist: str = "auto"
    # The authors' training data (docs/METHOD.md): only training images whose annotations hold at
    # least this many distinct emotions (2 = their artEmisX_cl_train.json; 1 = every image), and
    # the annotation that anchors each image's pair: "uniform" or "last" (their code as it ran).
    min_train_emotions: int = 1
    anchor: str = "uniform"
    # The image preprocessing the features must have been extracted with (checked against the
    # cache): "encoder" or "imagenet-squash" (the authors'); None = whatever the cache holds.
    image_preprocess: str | None = None
    # seconds a shard or manifest read over the network (http(s), pipe:) may wait without a byte
    # before it fails naming the URL (a stalled server would otherwise block training forever)
    read_timeout: float = 60.0


@dataclass
class OptimConfig:
    decoder_lr: float = 2e-5
    emotion_lr: float = 4e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0 at the last step
    clip_grad: float = 1.0  # gradient-norm clipping (DeepSpeed's gradient_clipping); 0 = none (the authors')
    heads_lr: float | None = None  # fusion, VAD and contrastive heads; None = decoder_lr (the authors')


@dataclass
class ScheduleConfig:
    micro_batch: int = 32  # images per rank per forward/backward
    grad_accum: int | None = None  # None: derived from global_batch (or 1)
    global_batch: int | None = None  # images per optimizer step; checked = micro x world x accum
    epochs: int = 35
    max_steps: int | None = None  # caps epochs when set
    val_every: int = 2000  # optimizer steps between validations; 0 = once per epoch
    val_batches: int | None = None  # cap on validation-loss batches (None: the whole split)
    val_gen_images: int | None = 200  # images decoded for accuracy / BLEU-4; None = the whole split (the authors')
    val_dominance: str = "artemis"  # dominant-emotion rule of validation accuracy: artemis | strict-majority
    patience: int = 10  # validations without improvement before stopping; 0 = never stop early
    checkpoint_every: int = 500  # optimizer steps between "last" checkpoints (and at validation)
    log_every: int = 10
    max_nonfinite: int = 20  # consecutive skipped (non-finite) steps before giving up


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: SEVLMConfig = field(default_factory=SEVLMConfig)  # visual_dim is taken from the features
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)  # validation generation
    ds_config: str = "auto"  # name in ds_configs/ or a path; auto: zero2_<precision>
    precision: str = "auto"  # auto: fp16 on GPU; bf16 on CPUs with native bf16, else fp32
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 2021
    out_dir: str = "runs/sevlm"
    max_memory_gb: float | None = None  # memory budget for the up-front estimate; None: detected

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        s = self.schedule
        for name in ("micro_batch", "epochs", "log_every", "max_nonfinite"):
            if getattr(s, name) < 1:
                raise ConfigError(f"schedule.{name}: must be >= 1, got {getattr(s, name)}")
        if self.data.corpus_vocab and self.model.decoder:
            raise ConfigError(
                f"data.corpus_vocab=true with the pretrained model.decoder={self.model.decoder!r}: its embeddings "
                "are indexed by GPT-2 ids; use the corpus vocabulary only for decoders trained from scratch"
            )
        o = self.optim
        for name in ("decoder_lr", "emotion_lr", "heads_lr", "weight_decay", "clip_grad", "eps"):
            if getattr(o, name) is not None and getattr(o, name) < 0:
                raise ConfigError(f"optim.{name}: must be >= 0, got {getattr(o, name)}")
        if s.checkpoint_every < 1:
            raise ConfigError(f"schedule.checkpoint_every: must be >= 1 (optimizer steps), got {s.checkpoint_every}")
        if s.val_gen_images is not None and s.val_gen_images < 0:
            raise ConfigError(
                f"schedule.val_gen_images: must be >= 0 or null (the whole split), got {s.val_gen_images}"
            )
        if s.val_dominance not in DOMINANCE_RULES:
            raise ConfigError(
                f"schedule.val_dominance: expected one of {', '.join(DOMINANCE_RULES)}, got {s.val_dominance!r}"
            )
        if self.data.source not in (None, *DATA_SOURCES):
            raise ConfigError(f"data.source: expected one of {', '.join(DATA_SOURCES)}, got {self.data.source!r}")
        if self.data.main_assist not in ASSIST_MODES:
            raise ConfigError(
                f"data.main_assist: expected one of {', '.join(ASSIST_MODES)}, got {self.data.main_assist!r}"
            )
        if self.data.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.data.num_workers}")
        if self.data.anchor not in ANCHORS:
            raise ConfigError(f"data.anchor: expected one of {', '.join(ANCHORS)}, got {self.data.anchor!r}")
        if self.data.image_preprocess is not None and self.data.image_preprocess not in IMAGE_PREPROCESSING:
            raise ConfigError(
                f"data.image_preprocess: expected one of {', '.join(IMAGE_PREPROCESSING)} or null, "
                f"got {self.data.image_preprocess!r}"
            )
        if not 1 <= self.data.min_train_emotions <= 9:
            raise ConfigError(
                f"data.min_train_emotions: must be 1..9 (distinct emotions of an image), "
                f"got {self.data.min_train_emotions}"
            )
        if not self.data.read_timeout > 0:
            raise ConfigError(f"data.read_timeout: must be > 0 seconds, got {self.data.read_timeout}")
        if self.data.vocab_min_count < 1:
            raise ConfigError(f"data.vocab_min_count: must be >= 1, got {self.data.vocab_min_count}")


def load_train_config(path_or_name: str | None, overrides: list[str] | None = None) -> TrainConfig:
    return from_dict(TrainConfig, load_config(path_or_name, overrides), where=str(path_or_name or "config"))


def as_train_config(config: TrainConfig | dict) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return from_dict(TrainConfig, config)
    raise ConfigError(f"expected a TrainConfig or a dict, got {type(config).__name__}")


def resolve_batch(schedule: ScheduleConfig, world_size: int) -> tuple[int, int, int]:
    """(micro, accum, global) with global = micro x world x accum, or a ConfigError saying why not."""
    micro = schedule.micro_batch
    if schedule.grad_accum is not None and schedule.grad_accum < 1:
        raise ConfigError(f"schedule.grad_accum: must be >= 1, got {schedule.grad_accum}")
    if schedule.global_batch is None:
        accum = schedule.grad_accum or 1
        return micro, accum, micro * world_size * accum
    per_step = micro * world_size
    if schedule.grad_accum is None:
        if schedule.global_batch % per_step:
            raise ConfigError(
                f"schedule.global_batch={schedule.global_batch} is not a multiple of "
                f"micro_batch x world_size = {micro} x {world_size} = {per_step}"
            )
        return micro, schedule.global_batch // per_step, schedule.global_batch
    if per_step * schedule.grad_accum != schedule.global_batch:
        raise ConfigError(
            f"schedule.global_batch={schedule.global_batch} != micro_batch x world_size x grad_accum = "
            f"{micro} x {world_size} x {schedule.grad_accum} = {per_step * schedule.grad_accum}"
        )
    return micro, schedule.grad_accum, schedule.global_batch


def ds_config_path(name: str, precision: str) -> Path:
    if name == "auto":
        name = f"zero2_{precision}"
    path = Path(name)
    if path.suffix != ".json" or not path.exists():
        candidate = DS_CONFIG_DIR / f"{name}.json"
        if candidate.exists():
            path = candidate
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json")))
        raise ConfigError(f"ds_config {name!r} not found (a file path, or one of: {shipped})")
    return path


def resolve_ds_config(
    name: str, precision: str, micro: int, accum: int, world_size: int, clip_grad: float = 1.0
) -> dict:
    """The engine settings of `name` plus the trainer's batch sizes, precision and clipping, checked."""
    path = ds_config_path(name, precision)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    owned = [k for k in TRAINER_DS_KEYS if k in cfg]
    if owned:
        raise ConfigError(
            f"{path}: sets {', '.join(owned)}; ds_configs hold engine settings only "
            "(batch sizes come from schedule.*, the optimizer, scheduler and clipping from optim.*)"
        )
    # precision is a trainer setting too: keep the file's fp16 loss-scale settings, set the switches
    cfg.setdefault("fp16", {})["enabled"] = precision == "fp16"
    cfg.setdefault("bf16", {})["enabled"] = precision == "bf16"
    if precision == "bf16":  # bf16 has no loss scaler: ask ZeRO to skip steps with non-finite gradients
        cfg["bf16"]["check_grad_overflow"] = True
    cfg["gradient_clipping"] = clip_grad
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = accum
    cfg["train_batch_size"] = micro * accum * world_size
    return cfg


def config_to_dict(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))

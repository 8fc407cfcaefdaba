"""`train(config, resume=None) -> run_dir`: the SEVLM training recipe on DeepSpeed.

The DeepSpeed delta is small on purpose: `deepspeed.initialize` with our own AdamW (one
param group per learning rate) and LambdaLR, `engine.backward`, `engine.step`, and
`engine.save_checkpoint` / `load_checkpoint` called on every rank with a client_state that
holds the step, the data position and the best metrics. Everything else is plain PyTorch.

Run folder:
    config.json        the resolved TrainConfig (what --resume reads back)
    ds_config.json     the resolved DeepSpeed config (batch sizes filled in)
    run.json           derived quantities, world size, versions, git hash
    done.json          written when training has finished (stop reason, step, best metrics)
    checkpoints/       DeepSpeed checkpoints, tags last / best_accuracy / best_bleu4 (+ per-rank RNG)
    ranks/             per-rank facts (optimizer state elements: ZeRO partitioning at a glance)
    export/            safetensors + config + tokenizer of the best-accuracy model (or the last)
    export_best_bleu/  the same for the best-BLEU-4 model
    log.jsonl          every metric, one JSON object per line
    tb/                TensorBoard event files
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sevlm.errors import ConfigError, SevlmError
from sevlm.io import read_json, write_json
from sevlm.train import checks
from sevlm.train.config import (
    TrainConfig,
    as_train_config,
    config_to_dict,
    resolve_batch,
    resolve_ds_config,
)
from sevlm.train.distributed import all_true, barrier, init_distributed, pick_device, set_env_defaults

CKPT_DIR = "checkpoints"
DONE_FILE = "done.json"
LAST, BEST_ACC, BEST_BLEU = "last", "best_accuracy", "best_bleu4"


class TrainingError(SevlmError):
    """Training cannot go on (e.g. a run of non-finite losses)."""


@dataclass
class TrainState:
    """What a checkpoint carries besides the engine: enough to continue the same run."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # micro-batches of `epoch` consumed on each rank
    best_acc: float | None = None
    best_bleu: float | None = None
    best_acc_step: int | None = None
    best_bleu_step: int | None = None
    bad_validations: int = 0
    nonfinite_run: int = 0
    samples_seen: int = 0
    history: list = field(default_factory=list)  # validation results


# ---- hooks tests use to simulate a crash ----------------------------------------------------
def _after_step(state: TrainState) -> None:
    """Called after every optimizer step (tests monkeypatch it to kill a run mid-way)."""


# ---- small helpers -----------------------------------------------------------------------------
def _git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _rng_state() -> dict:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


@contextlib.contextmanager
def weights_only_loads():
    """Make DeepSpeed's checkpoint loading use torch.load(weights_only=True).

    DeepSpeed calls torch.load(weights_only=False); torch honours TORCH_FORCE_WEIGHTS_ONLY_LOAD
    on every call, and the only non-tensor objects in its ZeRO checkpoints are these few plain
    classes, so they are allowlisted instead of unpickling arbitrary code.
    """
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def linear_schedule(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up, then linear decay to 0 at `total_steps` (the paper: no warm-up)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class RunLog:
    """JSONL + TensorBoard on rank 0; silent elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop what the interrupted run logged after its last checkpoint: it will be redone
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if row.get("step", 0) <= resume_step:
                    kept.append(line)
            from sevlm.io import write_text

            write_text(self.path, "".join(k + "\n" for k in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboard is optional at runtime
            self.tb = None
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.tb is not None and "step" in row:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self.tb is not None:
            self.tb.close()


def optimizer_state_elements(optimizer) -> int:
    """Elements of optimizer state held by this rank (ZeRO partitions it across ranks)."""
    import torch

    base = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed wraps the torch optimizer
    return sum(v.numel() for st in base.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)


def _say(msg: str, main: bool) -> None:
    if main:
        print(msg, file=sys.stderr, flush=True)


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


# ---- run folder --------------------------------------------------------------------------------
def _prepare_run_dir(config: TrainConfig | dict | None, resume: str | None, out_dir: str | None):
    if resume:
        run_dir = Path(resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise ConfigError(f"{cfg_path}: not found; --resume needs a run folder written by `sevlm train`")
        saved = as_train_config(read_json(cfg_path))
        if config is not None and config_to_dict(as_train_config(config)) != config_to_dict(saved):
            raise ConfigError(
                f"--resume {run_dir}: the given config differs from the run's {cfg_path}; "
                "resume with the saved config (pass no --config) or start a new run"
            )
        latest = run_dir / CKPT_DIR / LAST
        if not latest.is_dir():
            raise ConfigError(f"{run_dir}: no checkpoint to resume from ({latest} missing)")
        return saved, run_dir, True
    if config is None:
        raise ConfigError("a training config is required (or --resume RUN_DIR)")
    cfg = as_train_config(config)
    run_dir = Path(out_dir or cfg.out_dir)
    if (run_dir / CKPT_DIR).exists():
        raise ConfigError(
            f"{run_dir}: already holds a training run; continue it with --resume {run_dir} or pick another --out"
        )
    cfg.out_dir = str(run_dir.resolve())
    d = cfg.data  # absolute paths: the run folder (and its export) must work from anywhere
    for name in ("dataset_dir", "features", "shards", "lexicon", "tokenizer"):
        value = getattr(d, name)
        if value and not (name == "lexicon" and value == "demo"):
            setattr(d, name, str(Path(value).resolve()))
    return cfg, run_dir, False


# ---- the recipe --------------------------------------------------------------------------------
def train(config: TrainConfig | dict | None = None, resume: str | os.PathLike | None = None,
          out_dir: str | os.PathLike | None = None) -> Path:
    """Train (or continue with `resume=RUN_DIR`) and return the run folder."""
    cfg, run_dir, resuming = _prepare_run_dir(config, str(resume) if resume else None,
                                              str(out_dir) if out_dir else None)
    device = pick_device(cfg.device)
    precision = cfg.precision if cfg.precision != "auto" else auto_precision(device)
    if precision == "fp16" and device == "cpu":
        raise ConfigError("precision fp16 needs a GPU; on a CPU use bf16 or fp32")
    set_env_defaults(device)  # before deepspeed is imported: DS_ACCELERATOR, single-process env

    # -- up-front checks: before any model, process group or data loading work --------------------
    d = cfg.data
    checks.check_splits(d.dataset_dir, [d.train_split, d.val_split])
    info = checks.feature_info(d.features, d.shards)
    checks.check_encoder(info, d.encoder)
    if info.source == "shards":
        checks.check_shards(d.shards, d.dataset_dir, [d.train_split, d.val_split])

    rank, world, local_rank = init_distributed(device)
    main = rank == 0
    micro, accum, global_batch = resolve_batch(cfg.schedule, world)
    ds_cfg = resolve_ds_config(cfg.ds_config, precision, micro, accum, world)
    return _train(cfg, run_dir, resuming, device, precision, info, rank, world, local_rank, main,
                  micro, accum, global_batch, ds_cfg)


def _model_config(cfg: TrainConfig, info, token_ids):
    from sevlm.config import from_dict
    from sevlm.model import SEVLMConfig

    model_dict = dict(cfg.model)
    # the feature artifact is the one source of truth for the visual width
    if info.dim is not None:
        if "visual_dim" in model_dict and model_dict["visual_dim"] != info.dim:
            raise ConfigError(
                f"model.visual_dim={model_dict['visual_dim']} but {info.path} holds {info.dim}-d visual tokens "
                f"(encoder {info.encoder}); drop model.visual_dim to take it from the features"
            )
        model_dict["visual_dim"] = info.dim
    return from_dict(SEVLMConfig, model_dict, where="model").with_token_ids(token_ids)


def _corpus_vocab(cfg: TrainConfig, tokenizer, run_dir: Path, resuming: bool):
    """The training split's corpus vocabulary; saved in the run folder so a resume reuses it."""
    from sevlm.features.common import load_split_records
    from sevlm.text import VocabMap

    path = run_dir / "vocab.json"
    if resuming and path.exists():
        return VocabMap.load(path)
    records = load_split_records(cfg.data.dataset_dir, cfg.data.train_split)
    pairs = [(e, x) for rec in records.values() for e, x in zip(rec.get("emotions", []), rec.get("explanations", []))]
    return VocabMap.from_annotations(tokenizer, pairs, min_count=cfg.data.vocab_min_count)


class TrainData:
    """The training split as per-epoch, per-rank micro-batch iterators (HDF5 cache or shards)."""

    def __init__(self, cfg: TrainConfig, info, collate, micro: int, rank: int, world: int):
        self.cfg, self.info, self.collate, self.micro, self.rank, self.world = cfg, info, collate, micro, rank, world
        split = cfg.data.train_split
        if info.source == "features":
            from sevlm.features.hdf5 import H5FeatureDataset
            from sevlm.train.data import batches_per_epoch

            self.dataset = H5FeatureDataset(str(info.path), cfg.data.dataset_dir, split)
            checks.check_split_features(self.dataset, split, str(info.path))
            self.num_images = len(self.dataset)
            self.n_batches = batches_per_epoch(self.num_images, micro, world)
        else:
            from sevlm.features.shards import shard_pipeline

            probe = shard_pipeline(str(info.path), split, world_size=world, rank=rank)
            self.num_images = int(probe.entry["num_samples"])
            # every rank yields samples_per_rank samples per epoch (the reader pads short ranks)
            self.n_batches = probe.samples_per_rank // micro

    def first_sample(self) -> dict:
        if self.info.source == "features":
            return self.dataset[0]
        from sevlm.features.shards import shard_pipeline

        return next(iter(shard_pipeline(str(self.info.path), self.cfg.data.train_split, shuffle=False,
                                         world_size=1, rank=0)))

    def epoch(self, epoch: int, start: int):
        """Micro-batches `start`, `start + 1`, ... of `epoch` on this rank."""
        from sevlm.train.data import loader_generator, shard_batches, train_loader

        seed, workers = self.cfg.seed, self.cfg.data.num_workers
        if self.info.source == "features":
            return iter(train_loader(self.dataset, self.collate, self.micro, self.rank, self.world, seed, epoch,
                                     start, workers))
        from torch.utils.data import DataLoader

        from sevlm.features.shards import shard_pipeline

        pipe = shard_pipeline(str(self.info.path), self.cfg.data.train_split, shuffle=True, seed=seed,
                              epoch=epoch, world_size=self.world, rank=self.rank)
        samples = iter(DataLoader(pipe, batch_size=None, num_workers=workers, generator=loader_generator(seed, epoch)))
        # the stream is a pure function of (seed, epoch, rank): skipping `start` batches resumes it
        return shard_batches(samples, self.collate, self.micro, seed, epoch, start)


def _val_data(cfg: TrainConfig, info) -> list | object:
    split = cfg.data.val_split
    if info.source == "features":
        from sevlm.features.hdf5 import H5FeatureDataset

        ds = H5FeatureDataset(str(info.path), cfg.data.dataset_dir, split)
        checks.check_split_features(ds, split, str(info.path))
        return ds
    from sevlm.features.shards import shard_pipeline

    # the validation split is small: read it once, in file order, on every rank
    return list(shard_pipeline(str(info.path), split, shuffle=False, world_size=1, rank=0))


def _train(cfg, run_dir, resuming, device, precision, info, rank, world, local_rank, main,
           micro, accum, global_batch, ds_cfg) -> Path:
    import deepspeed
    import torch
    from tqdm import tqdm

    from sevlm.data.vad import VADLexicon
    from sevlm.model import SEVLM
    from sevlm.text import SequenceBuilder, TokenIds, load_tokenizer
    from sevlm.train.data import split_inputs

    s, o = cfg.schedule, cfg.optim
    _seed_everything(cfg.seed + rank)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    lexicon = VADLexicon.load(cfg.data.lexicon or "demo")
    vocab = _corpus_vocab(cfg, tokenizer, run_dir, resuming) if cfg.data.corpus_vocab else None
    model_cfg = _model_config(cfg, info, TokenIds.from_tokenizer(tokenizer, vocab))
    builder = SequenceBuilder(tokenizer, lexicon, max_len=model_cfg.max_len, vocab=vocab, bos_prompt=model_cfg.bos_prompt)
    train_data = TrainData(cfg, info, builder.collate, micro, rank, world)
    val_set = _val_data(cfg, info)

    steps_per_epoch = train_data.n_batches // accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{cfg.data.train_split} split has {train_data.num_images} images, fewer than one optimizer step "
            f"(global batch {global_batch}); lower schedule.micro_batch / grad_accum"
        )
    total_steps = steps_per_epoch * s.epochs
    if s.max_steps is not None:
        total_steps = min(total_steps, s.max_steps)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = SEVLM(model_cfg)
    model.vocab_map = vocab  # generation and the export map compact ids through it
    _seed_everything(cfg.seed + rank)
    n_params = sum(p.numel() for p in model.parameters())
    if info.num_tokens is None:
        info.num_tokens = int(torch.as_tensor(train_data.first_sample()["tokens"]).shape[0])
    estimate = checks.estimate_memory_bytes(
        n_params, micro, model_cfg.max_len, model.decoder.config.n_layer, model.n_embd,
        model.decoder.config.n_head, model_cfg.vocab_size, info.num_tokens, model_cfg.visual_dim,
        precision, world, ds_cfg.get("zero_optimization", {}).get("stage", 0),
    )
    checks.check_memory(estimate, device, cfg.max_memory_gb, micro)

    groups = model.param_groups(o.decoder_lr, o.emotion_lr, o.weight_decay)
    optimizer = torch.optim.AdamW(groups, betas=tuple(o.betas), eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, o.warmup_steps))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
    )
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    dev = engine.device

    # -- resume ---------------------------------------------------------------------------------
    state = TrainState()
    ckpt_root = run_dir / CKPT_DIR
    if resuming:
        with weights_only_loads():
            _, client = engine.load_checkpoint(str(ckpt_root), tag=LAST)
        if client is None:
            raise TrainingError(f"{ckpt_root / LAST}: DeepSpeed could not load the checkpoint")
        state = TrainState(**client["train_state"])
        rng_file = ckpt_root / LAST / f"rng_rank{rank}.json"
        if rng_file.exists():
            _set_rng_state(read_json(rng_file))
    resolved = config_to_dict(cfg)
    tokens_per_step = global_batch * 2 * model_cfg.max_len
    derived = {
        "world_size": world, "device": device, "precision": precision, "micro_batch": micro,
        "grad_accum": accum, "global_batch": global_batch, "sequences_per_step": 2 * global_batch,
        "max_tokens_per_step": tokens_per_step, "train_images": train_data.num_images, "val_images": len(val_set),
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "parameters": n_params,
        "vocab_size": model_cfg.vocab_size,
        "memory_estimate_gib": round(estimate / 2**30, 2), "encoder": info.encoder,
        "visual_tokens": [info.num_tokens, info.dim], "data_source": f"{info.source}: {info.path}",
    }
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            write_json(run_dir / "config.json", resolved)
            write_json(run_dir / "ds_config.json", ds_cfg)
            if vocab is not None:
                vocab.save(run_dir / "vocab.json")
        write_json(run_dir / "run.json", {
            **derived, "model_config": model_cfg.__dict__, "git": _git_hash(),
            "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__},
            "resumed_at_step": state.step if resuming else None,
        })
        print("sevlm train: " + ", ".join(f"{k}={v}" for k, v in derived.items()), file=sys.stderr, flush=True)
    log = RunLog(run_dir, main, state.step if resuming else None)

    # the export's "train" entry: the resolved TrainConfig (data paths, lexicon, tokenizer) + encoder
    export_meta = {**resolved, "encoder": info.encoder, "visual_tokens": [info.num_tokens, info.dim]}

    def save(tag: str) -> None:
        client = {"train_state": state.__dict__}
        # every rank writes its own ZeRO partition; only "last" moves the `latest` pointer
        engine.save_checkpoint(str(ckpt_root), tag=tag, client_state=client, save_latest=(tag == LAST))
        write_json(ckpt_root / tag / f"rng_rank{rank}.json", _rng_state())
        barrier()

    def export(name: str, metrics: dict) -> None:
        if main:
            _export(run_dir / name, engine.module, tokenizer, model_cfg, export_meta, state.step, metrics)
        barrier()

    def validate() -> dict:
        from sevlm.train.validate import validate as run_validation

        return run_validation(engine.module, builder, val_set, micro, rank, world, cfg.seed, s.val_batches,
                              s.val_gen_images, dev, dtype, main)

    # -- the loop ---------------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=state.step, desc="train", disable=not main, file=sys.stderr,
               dynamic_ncols=True)
    stop_reason = None
    rank_info_written = False
    t_last, samples_last = time.perf_counter(), state.samples_seen
    engine.train()
    while state.step < total_steps and stop_reason is None and state.epoch < s.epochs:
        usable = steps_per_epoch * accum  # leftover micro-batches would straddle epochs: dropped
        loader = train_data.epoch(state.epoch, state.position)
        parts: dict[str, list[float]] = {}
        for batch in loader:
            if state.position >= usable:
                break
            inputs, meta = split_inputs(batch, dev, dtype)
            out = engine(**inputs)
            loss = out.loss
            state.position += 1
            if not all_true(bool(torch.isfinite(loss.detach()).item())):
                # every rank skips together, or ZeRO's gradient reduction would hang
                state.nonfinite_run += 1
                _report_nonfinite(log, state, meta, float(loss.detach()), main)
                if state.nonfinite_run >= s.max_nonfinite:
                    raise TrainingError(_nonfinite_message(state, s.max_nonfinite, precision))
                continue
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            for name in ("loss", "lm_loss", "cl_loss", "vad_loss"):
                v = getattr(out, name)
                if v is not None:
                    parts.setdefault(name, []).append(float(v.detach()))
            if not boundary:
                continue
            state.step += 1
            state.samples_seen += global_batch
            applied = engine.was_step_applied()
            if not rank_info_written and applied:  # optimizer state exists after the first real step
                write_json(run_dir / "ranks" / f"rank{rank}.json", {
                    "rank": rank, "world_size": world, "zero_stage": ds_cfg.get("zero_optimization", {}).get("stage", 0),
                    "optimizer_state_elements": optimizer_state_elements(optimizer),
                    "trainable_parameters": sum(p.numel() for p in engine.module.parameters() if p.requires_grad),
                })
                rank_info_written = True
            state.nonfinite_run = 0 if applied else state.nonfinite_run + 1
            row = {"step": state.step, "epoch": state.epoch}
            row.update({k: sum(v) / len(v) for k, v in parts.items()})
            parts = {}
            for g in optimizer.param_groups if hasattr(optimizer, "param_groups") else []:
                row[f"lr_{g.get('name', 'group')}"] = g["lr"]
            scale = getattr(optimizer, "loss_scale", None)
            if precision == "fp16" and scale is not None:
                row["loss_scale"] = float(scale)
            if not applied:
                row["skipped"] = True
                _say(f"sevlm train: step {state.step}: gradient overflow, step skipped"
                     + (f" (loss scale now {float(scale):g})" if scale is not None else ""), main)
                if state.nonfinite_run >= s.max_nonfinite:
                    raise TrainingError(_nonfinite_message(state, s.max_nonfinite, precision))
            now = time.perf_counter()
            if state.step % s.log_every == 0 or state.step == total_steps:
                row["samples_per_s"] = (state.samples_seen - samples_last) / max(now - t_last, 1e-9)
                t_last, samples_last = now, state.samples_seen
            log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}", epoch=state.epoch)

            last_step = state.step >= total_steps
            end_of_epoch = state.position >= usable
            do_val = (s.val_every and state.step % s.val_every == 0) or (not s.val_every and end_of_epoch) or last_step
            if end_of_epoch:
                state.epoch, state.position = state.epoch + 1, 0
            if do_val:
                stop_reason = _validate_and_keep(validate, state, log, save, export, s.patience, main)
                save(LAST)
            elif state.step % s.checkpoint_every == 0:
                save(LAST)
            _after_step(state)
            if last_step or stop_reason or end_of_epoch:
                break
        if state.position >= usable:  # skipped micro-batches ran the epoch out between boundaries
            state.epoch, state.position = state.epoch + 1, 0
    bar.close()
    if stop_reason is None:
        stop_reason = "max_steps" if s.max_steps is not None and state.step >= s.max_steps else "epochs"
    if state.best_acc is None:  # never validated: the last weights are the export
        export("export", {})
    summary = {"step": state.step, "event": "done", "reason": stop_reason, "best_acc": state.best_acc,
               "best_bleu4": state.best_bleu}
    log.write(summary)
    log.close()
    if main:  # written last: its presence means training finished (export/ exists from the first validation on)
        write_json(run_dir / DONE_FILE, summary)
    _say(f"sevlm train: done ({stop_reason}) at step {state.step}; best accuracy {state.best_acc} "
         f"(step {state.best_acc_step}), best BLEU-4 {state.best_bleu} (step {state.best_bleu_step}); "
         f"run folder {run_dir}", main)
    return run_dir


def _validate_and_keep(validate, state: TrainState, log: RunLog, save, export, patience: int, main: bool):
    metrics = validate()
    acc, bleu = metrics.get("accuracy"), metrics.get("bleu4")
    improved = False
    if acc is not None and (state.best_acc is None or acc > state.best_acc):
        state.best_acc, state.best_acc_step, improved = acc, state.step, True
        save(BEST_ACC)
        export("export", metrics)
    if bleu is not None and (state.best_bleu is None or bleu > state.best_bleu):
        state.best_bleu, state.best_bleu_step, improved = bleu, state.step, True
        save(BEST_BLEU)
        export("export_best_bleu", metrics)
    state.bad_validations = 0 if improved else state.bad_validations + 1
    state.history.append({"step": state.step, **metrics})
    log.write({"step": state.step, **{f"val_{k}": v for k, v in metrics.items()},
               "bad_validations": state.bad_validations}, prefix="val")
    _say(f"sevlm train: step {state.step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items()
                                                         if isinstance(v, float)), main)
    if patience and state.bad_validations >= patience:
        return f"early stop: no improvement in {patience} validations"
    return None


def _report_nonfinite(log: RunLog, state: TrainState, meta: dict, loss: float, main: bool) -> None:
    keys = meta.get("image_ids", [])
    log.write({"step": state.step + 1, "epoch": state.epoch, "event": "nonfinite_loss", "loss": str(loss),
               "micro_batch": state.position - 1, "batch_keys": keys})
    _say(f"sevlm train: non-finite loss {loss} at step {state.step + 1} (epoch {state.epoch}, micro-batch "
         f"{state.position - 1}); batch skipped; images: {', '.join(map(str, keys[:8]))}"
         + (" ..." if len(keys) > 8 else ""), main)


def _nonfinite_message(state: TrainState, limit: int, precision: str) -> str:
    hint = " or switch precision to fp32/bf16" if precision == "fp16" else ""
    return (f"stopped at step {state.step} (epoch {state.epoch}): {limit} non-finite losses or gradient "
            f"overflows in a row; lower optim.decoder_lr / optim.emotion_lr{hint}, and check the features "
            "for NaN/inf (see log.jsonl for the batch keys)")


def _export(out_dir: Path, module, tokenizer, model_cfg, meta: dict, step: int, metrics: dict) -> None:
    import copy

    import torch

    from sevlm.export import save_export

    first = next(module.parameters())
    if first.dtype != torch.float32:  # exports are fp32 whatever the training precision
        module = copy.deepcopy(module).float()
    was_training = module.training
    config_dict = {**meta, "model": dict(model_cfg.__dict__), "step": step, "metrics": metrics}
    save_export(out_dir, module, tokenizer, config_dict)
    module.train(was_training)

"""The SEVLM training recipe on DeepSpeed: `train(config, resume=None, out_dir=None) -> run_dir`.

`TrainRecipe` follows torchtune's recipes: `setup()` builds everything once, then `train()`
runs `train_step(batch)` per micro-batch, `validate()` and `save(...)` on schedule, and
`load()` continues a run from its last checkpoint. The DeepSpeed delta is small on purpose
(as in HelloDeepSpeed): `deepspeed.initialize` with our own AdamW (one param group per learning
rate) and LambdaLR, `engine.backward`, `engine.step`, and `engine.save_checkpoint` /
`load_checkpoint` (in checkpoint.py). Non-finite steps are caught by DeepSpeed's own overflow
check at the accumulation boundary (fp16 loss scaling; ZeRO's gradient-norm check in fp32
and bf16), so no micro-batch waits on the host. Everything else is plain PyTorch.
The run folder's layout is in `sevlm.train.records`.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sevlm.export import RUN_EXPORT
from sevlm.io import sha256_file
from sevlm.model import SEVLM
from sevlm.train import checkpoint, checks, records, steps
from sevlm.train import data as train_data  # `train_data.split_inputs`: looked up per step (tests wrap it)
from sevlm.train import validate as validation
from sevlm.train.best import early_stop, keep_best
from sevlm.train.checkpoint import BEST_ACC, BEST_BLEU, CKPT_DIR, LAST, TrainState
from sevlm.train.config import TrainConfig, config_to_dict
from sevlm.train.distributed import barrier, join_process_group
from sevlm.train.engine import build_engine
from sevlm.train.resolve import Resolved, resolve
from sevlm.train.run_folder import CONFIG_FILE, DONE_FILE, claim_run_folder, run_config, run_folder, sigterm_exits
from sevlm.train.runlog import RunLog
from sevlm.train.steps import StepLosses, say
from sevlm.train.telemetry import StartupClock, StepTelemetry, peak_flops
from sevlm.vocab import VOCAB_FILE, TokenIds, VocabMap, load_tokenizer

EXPORT, EXPORT_BEST_BLEU = RUN_EXPORT, "export_best_bleu"


def _after_step(state: TrainState) -> None:
    """Called after every optimizer step (tests monkeypatch it to kill a run mid-way)."""


class TrainRecipe:
    """One training run: `setup()`, then `train()`; see the module docstring."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resuming: bool = False):
        self.cfg, self.run_dir, self.resuming = cfg, Path(run_dir), resuming
        self.state = TrainState()
        self.losses = StepLosses()  # this optimizer step's loss terms, on the device until its end
        self._rank_info_written = self._started = self._first_batch = False

    @property
    def rt(self) -> Resolved:
        """`resolved` under its older name (tools and tests use it)."""
        return self.resolved

    @rt.setter
    def rt(self, value) -> None:
        self.resolved = value

    @property
    def model_config(self):  # tests and tools read it
        return self.resolved.model

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Checks, the process group and the settings resolved once, then data, model and engine,
        the checkpoint (when resuming) and the run folder's records."""
        self.startup = StartupClock()  # the time to the first step, by phase (run.json "startup")
        self.info, lexicon = checks.check_run(self.cfg)
        if self.resuming:  # before any model: an edited config could not even load the checkpoint
            recorded = checkpoint.recorded_fingerprint(self.run_dir / CKPT_DIR)
            checks.check_unchanged(recorded, self.fingerprint(), self.run_dir)
        self.startup.lap("checks")
        device, rank, world = join_process_group(self.cfg.device)
        self.startup.lap("process_group")
        self.tokenizer = load_tokenizer(self.cfg.data.tokenizer)
        self.vocab = self._corpus_vocab() if self.cfg.data.corpus_vocab else None
        token_ids = TokenIds.from_tokenizer(self.tokenizer, self.vocab)
        new_run_dir = None if self.resuming else self.run_dir
        self.resolved = resolve(self.cfg, device, rank, world, self.info, token_ids, lexicon, new_run_dir)
        self.cfg = self.resolved.config  # from here on, the resolved config
        self.startup.lap("data_setup")
        if not self.resuming and self.resolved.main:  # reads the whole cache through its checksums: damage is named now
            self._data_fingerprint = checks.data_fingerprint(self.cfg.data)
        self.startup.lap("checks")
        self.setup_data()
        self.startup.lap("data_setup")
        self.setup_model()  # laps model_build and engine_build
        self.peak = peak_flops(device, self.resolved.precision, self.resolved.dtype)  # MFU's denominator
        self.telemetry = StepTelemetry(
            device, self.resolved.model, self.resolved.global_batch, world, self.peak["flops_per_s"]
        )
        self.startup.lap("peak_flops")
        if self.resuming:
            self.load()
            self.startup.lap("checkpoint_load")
        self.setup_logging()
        self.startup.lap("run_folder")

    def setup_data(self) -> None:
        """Lexicon, sequence builder, the data source and the step counts (`data.open_training_data`)."""
        self.data = train_data.open_training_data(self.resolved, self.info, self.tokenizer, self.vocab)
        self.builder, self.source, self.info = self.data.builder, self.data.source, self.data.info
        self.steps_per_epoch, self.total_steps = self.data.steps_per_epoch, self.data.total_steps

    def _corpus_vocab(self) -> VocabMap:
        """The training split's corpus vocabulary; saved in the run folder so a resume reuses it."""
        saved = self.run_dir / VOCAB_FILE
        if self.resuming and saved.exists():
            return VocabMap.load(saved)
        return train_data.corpus_vocab(self.tokenizer, self.cfg.data)

    def setup_model(self) -> None:
        """The model (same initial weights on every rank), the memory check, and the engine."""
        torch.manual_seed(self.cfg.seed)
        try:
            model = SEVLM(self.resolved.model)
        except OSError as e:  # the weights of a hub decoder whose config was cached
            raise checks.decoder_error(self.cfg.model.decoder, e) from None
        _seed_everything(self.cfg.seed + self.resolved.rank)  # dropout differs per rank
        budget = self.cfg.max_memory_gb
        self.memory_estimate = checks.check_model_memory(model, self.resolved, self.info.num_tokens, budget)
        self._lap("model_build")
        ds_config = self.resolved.ds_config
        self.engine, self.optimizer, self.scheduler = build_engine(model, self.cfg.optim, self.total_steps, ds_config)
        self._lap("engine_build")

    def _lap(self, name: str) -> None:
        if hasattr(self, "startup"):  # a benchmark may set up the parts without setup()
            self.startup.lap(name)

    def setup_logging(self) -> None:
        """The run folder's config / ds_config / run.json (rank 0) and the metric log."""
        info, resumed_at = self.info, self.state.step if self.resuming else None
        self.export_meta = {
            **config_to_dict(self.cfg),
            "encoder": info.encoder,
            "visual_tokens": [info.num_tokens, info.dim],
        }
        parameters = sum(p.numel() for p in self.engine.module.parameters())
        args = (self.data, self.vocab, parameters, self.memory_estimate, self.peak, resumed_at)
        records.start(self.run_dir, self.resolved, self.resuming, *args)
        self.log = RunLog(self.run_dir, self.resolved.main, resumed_at)

    # -- one micro-batch ------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict | None:
        """Forward and backward of one micro-batch; at the accumulation boundary, the optimizer
        step's log row (else None). Loss terms stay on the device until the boundary."""
        inputs, meta = train_data.split_inputs(batch, self.engine.device, self.resolved.dtype)
        self.telemetry.forward_start(batch)
        out = self.engine(**inputs)
        self.engine.backward(out.loss)
        self.telemetry.backward_end()
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()  # at the boundary: skipped by DeepSpeed if the gradients are not finite
        self.telemetry.step_end(boundary)
        self.state.position += 1
        self.losses.add(out, meta)
        return self._end_step() if boundary else None

    def _end_step(self) -> dict:
        """The optimizer step's log row (`steps.end_step`); ranks/rank<r>.json after the first applied one."""
        row = steps.end_step(self.state, self.losses, self.engine, self.optimizer, self.resolved, self.log)
        if not row.get("skipped") and not self._rank_info_written:  # optimizer state exists now
            records.write_rank_info(self.run_dir, self.resolved, self.optimizer, self.engine.module)
            self._rank_info_written = True
        return row

    # -- validation, checkpoints, exports ------------------------------------------------------------
    def validate(self) -> dict:
        """Validation metrics (the same dict on every rank)."""
        module, val_set = self.engine.module, self.source.val_samples()
        return validation.validate_run(module, self.builder, val_set, self.resolved, self.engine.device)

    def save(self, *names: str) -> None:
        """Checkpoint the current step and point `names` (LAST, BEST_ACC, BEST_BLEU) at it."""
        main = self.resolved.main
        fingerprint = self.fingerprint() if main else {}  # rank 0 writes it
        self.log.flush()  # what was logged up to this step is on disk before a checkpoint names the step
        checkpoint.save(self.engine, self.run_dir / CKPT_DIR, self.state.step, names, self.state, fingerprint, main)

    def fingerprint(self) -> dict[str, str]:
        """Hashes of the run's config.json and data, saved with every checkpoint."""
        if not hasattr(self, "_fingerprint"):
            # keyed by role, not by the run folder's path: a run resumed through another spelling of
            # its folder, or copied/moved elsewhere, is the same run
            data = getattr(self, "_data_fingerprint", None) or checks.data_fingerprint(self.cfg.data)
            self._fingerprint = {checks.RUN_CONFIG_KEY: sha256_file(self.run_dir / CONFIG_FILE), **data}
        return self._fingerprint

    def load(self) -> None:
        """Continue from the last finished checkpoint (none finished: start over)."""
        main = self.resolved.main
        client = checkpoint.load(
            self.engine, self.run_dir / CKPT_DIR, self.resolved.rank, main, say=lambda msg: say(msg, main)
        )
        if client is None:
            say(f"sevlm train: {self.run_dir}: no finished checkpoint; starting from step 0", main)
            return
        self.state = TrainState(**client["train_state"])

    def export(self, name: str, metrics: dict) -> None:
        """Write the export folder `name` (fp32 safetensors + config + tokenizer) on rank 0."""
        if self.resolved.main:
            module, step = self.engine.module, self.state.step
            meta, model_config = self.export_meta, self.resolved.model
            records.export_model(
                self.run_dir / name, module, self.tokenizer, self.vocab, model_config, meta, step, metrics
            )
        barrier()

    def _validate_and_keep(self) -> tuple[str | None, list[str]]:
        """Validate; export and name the best models. -> (stop reason or None, checkpoint names)."""
        state, metrics = self.state, self.validate()
        names = keep_best(state, metrics)
        if BEST_ACC in names:
            self.export(EXPORT, metrics)
        if BEST_BLEU in names:
            self.export(EXPORT_BEST_BLEU, metrics)
        val_row = {f"val_{k}": v for k, v in metrics.items()}
        self.log.write({"step": state.step, **val_row, "bad_validations": state.bad_validations}, prefix="val")
        figures = ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        say(f"sevlm train: step {state.step}: {figures}", self.resolved.main)
        return early_stop(state, self.cfg.schedule.patience), names

    # -- the loop ----------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Train to the end (epochs, max_steps or early stop) and return the run folder."""
        state, schedule = self.state, self.cfg.schedule
        micro_batches_per_epoch = self.steps_per_epoch * self.resolved.accum  # the rest would straddle epochs
        bar = dict(desc="train", disable=not self.resolved.main, file=sys.stderr, dynamic_ncols=True)
        self.progress = tqdm(total=self.total_steps, initial=state.step, **bar)
        self.engine.train()
        stop = None
        while stop is None and state.step < self.total_steps and state.epoch < schedule.epochs:
            with self._epoch_batches() as batches:  # this epoch's, from the saved position
                epoch_done = False
                while not epoch_done and stop is None and state.step < self.total_steps:
                    row = self._run_to_optimizer_step(batches)  # None: the source ran out first
                    epoch_done = row is None or state.position >= micro_batches_per_epoch
                    if epoch_done:  # the one rollover, before the checkpoint: a resume starts the next epoch
                        state.epoch, state.position = state.epoch + 1, 0
                    if row is None:
                        break
                    self._log_step(row)
                    every = schedule.val_every  # 0: at the end of each epoch
                    validate = (state.step % every == 0 if every else epoch_done) or state.step >= self.total_steps
                    with self.telemetry.paused():  # validation and checkpoints are not a step's time
                        if validate:
                            stop, names = self._validate_and_keep()
                            self.save(*names)
                        elif state.step % schedule.checkpoint_every == 0:
                            self.save(LAST)
                    _after_step(state)
        self.progress.close()
        return self._finish(stop)

    @contextlib.contextmanager
    def _epoch_batches(self):
        """The current epoch's micro-batches from the saved position; stopping its loader (its
        workers) is timed as the next batch's wait."""
        self.telemetry.wait_start()
        batches = iter(self.source.epoch(self.state.epoch, self.state.position))
        try:
            yield batches
        finally:
            self.telemetry.wait_start()
            getattr(batches, "close", lambda: None)()

    def _run_to_optimizer_step(self, batches) -> dict | None:
        """Micro-batches up to the next optimizer step -> its log row; None when `batches` end first."""
        while True:
            self.telemetry.wait_start()
            batch = next(batches, None)
            if batch is None:
                return None
            if not self._first_batch:
                self._first_batch = True
                self._lap("first_batch")
            row = self.train_step(batch)
            if row is not None:
                return row

    def _log_step(self, row: dict) -> None:
        """The step's row (with the telemetry every `log_every` steps) to the log and the progress bar;
        after the first step, the start-up line and run.json's "startup" (the time to it, by phase)."""
        if not self._started:
            self._started = True
            self._lap("first_step")
            if self.resolved.main and hasattr(self, "startup"):
                records.add_startup(self.run_dir, self.startup.summary())
                self.progress.write("sevlm train: " + self.startup.line(), file=sys.stderr)  # above the bar
        if row["step"] % self.cfg.schedule.log_every == 0 or row["step"] == self.total_steps:
            row.update(self.telemetry.report())
            norm = self.engine.get_global_grad_norm()  # computed by clipping at this step (None without)
            if norm is not None:
                row["grad_norm"] = float(norm)
        self.log.write(row)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}", epoch=row["epoch"])

    def _finish(self, stop: str | None) -> Path:
        """The end: the export of a run never validated, the done row and done.json."""
        state, schedule = self.state, self.cfg.schedule
        if stop is None:
            stop = "max_steps" if schedule.max_steps is not None and state.step >= schedule.max_steps else "epochs"
        if state.best_acc is None:  # never validated: the last weights are the export
            self.export(EXPORT, {})
        main, device = self.resolved.main, self.resolved.device
        records.finish(self.run_dir, state, stop, self.log, main, self.memory_estimate, device)
        return self.run_dir


def train(
    config: TrainConfig | dict | None = None,
    resume: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Train (or continue with `resume=RUN_DIR`) and return the run folder."""
    run_dir, resuming = run_folder(config, resume, out_dir), bool(resume)  # --resume's rules checked here
    with sigterm_exits(run_dir), claim_run_folder(run_dir):
        cfg = run_config(config, run_dir, resuming)
        if resuming and (run_dir / DONE_FILE).exists():  # written last: nothing is left to do
            main = os.environ.get("RANK", "0") == "0"
            say(f"sevlm train: {run_dir}: finished already ({run_dir / DONE_FILE}); nothing to resume", main)
            return run_dir
        recipe = TrainRecipe(cfg, run_dir, resuming)
        recipe.setup()
        return recipe.train()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

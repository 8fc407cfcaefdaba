"""The SEVLM training recipe on DeepSpeed: `train(config, resume=None, out_dir=None) -> run_dir`.

`TrainRecipe` follows torchtune's recipes: `setup()` builds everything once, then `train()`
runs `train_step(batch)` per micro-batch, `validate()` and `save(...)` on schedule, and
`load()` continues a run from its last checkpoint. The DeepSpeed delta is small on purpose
(as in HelloDeepSpeed): `deepspeed.initialize` with our own AdamW (one param group per
learning rate) and LambdaLR, `engine.backward`, `engine.step`, and `engine.save_checkpoint` /
`load_checkpoint` (in checkpoint.py). Non-finite steps are caught by DeepSpeed's own overflow
check at the accumulation boundary (fp16 loss scaling; ZeRO's gradient-norm check in fp32
and bf16), so no micro-batch waits on the host. Everything else is plain PyTorch.

Run folder:
    config.json        the resolved TrainConfig (what --resume reads back)
    ds_config.json     the resolved DeepSpeed config (batch sizes filled in)
    run.json           derived quantities, world size, versions, git hash
    done.json          written when training has finished (stop reason, step, best metrics)
    checkpoints/       DeepSpeed checkpoints and their pointers (see checkpoint.py)
    ranks/             per-rank facts (optimizer state elements: ZeRO partitioning at a glance)
    export/            safetensors + config + tokenizer of the best-accuracy model (ties: the lower
                       validation loss; never validated: the last)
    export_best_bleu/  the same for the best-BLEU-4 model
    log.jsonl          every metric, one JSON object per line
    tb/                TensorBoard event files
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

from sevlm.errors import ConfigError
from sevlm.export import RUN_EXPORT
from sevlm.io import read_json, write_json
from sevlm.train import checkpoint, checks
from sevlm.train.checkpoint import BEST_ACC, BEST_BLEU, CKPT_DIR, LAST, TrainingError, TrainState
from sevlm.train.config import (
    TrainConfig,
    config_to_dict,
)
from sevlm.train.distributed import barrier
from sevlm.train.engine import build_engine, start_runtime
from sevlm.train.run_folder import (
    CONFIG_FILE,
    DONE_FILE,
    claim_run_folder,
    prepare_run,
    run_folder,
    sigterm_exits,
    sweep_temporaries,
)
from sevlm.train.runlog import RunLog
from sevlm.vocab import VOCAB_FILE

EXPORT, EXPORT_BEST_BLEU = RUN_EXPORT, "export_best_bleu"


def _after_step(state: TrainState) -> None:
    """Called after every optimizer step (tests monkeypatch it to kill a run mid-way)."""


# ---- the recipe ------------------------------------------------------------------------------------
class TrainRecipe:
    """One training run: `setup()`, then `train()`; see the module docstring."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resuming: bool = False):
        self.cfg, self.run_dir, self.resuming = cfg, Path(run_dir), resuming
        self.state = TrainState()
        self._parts: dict[str, list] = {}  # this step's loss terms, kept on the device until its end
        self._keys: list = []  # this step's image ids (named when the step is not finite)
        self._rank_info_written = False
        self._started = self._first_batch = False  # this process's first optimizer step / micro-batch

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Checks, process group, data, model and engine, then the checkpoint (when resuming) and logs."""
        from sevlm.train.telemetry import StartupClock

        self.startup = StartupClock()  # the time to the first step, by phase (run.json "startup")
        d = self.cfg.data
        checks.check_lexicon(d.lexicon)
        checks.check_splits(d.dataset_dir, [d.train_split, d.val_split])
        d.lexicon = checks.resolve_lexicon(d.lexicon, d.dataset_dir, d.train_split)  # recorded as resolved
        self.info = checks.check_features(d)  # before any model, process group or data loading work
        checks.check_decoder(self.cfg.model.decoder)
        if self.resuming:  # before any model: an edited config could not even load the checkpoint
            checks.check_unchanged(
                checkpoint.recorded_fingerprint(self.run_dir / CKPT_DIR), self.fingerprint(), self.run_dir
            )
        elif os.environ.get("RANK", "0") == "0":  # reads the whole cache through its checksums: damage is named now
            self._data_fingerprint = checks.data_fingerprint(self.cfg.data)
        self.startup.lap("checks")
        self.rt = start_runtime(self.cfg)
        self.startup.lap("process_group")
        self.setup_data()
        self.startup.lap("data_setup")
        self.setup_model()  # laps model_build and engine_build
        self.setup_telemetry()
        self.startup.lap("peak_flops")
        if self.resuming:
            self.load()
            self.startup.lap("checkpoint_load")
        self.setup_logging()
        self.startup.lap("run_folder")

    def setup_data(self) -> None:
        """Tokenizer, lexicon, corpus vocabulary, sequence builder and the data source."""
        from sevlm.data.vad import VADLexicon
        from sevlm.text import SequenceBuilder
        from sevlm.train.data import open_source
        from sevlm.vocab import load_tokenizer

        cfg, rt = self.cfg, self.rt
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.vocab = self._corpus_vocab() if cfg.data.corpus_vocab else None
        lexicon = VADLexicon.load(cfg.data.lexicon)
        known, total = lexicon.coverage(checks.train_texts(cfg.data.dataset_dir, cfg.data.train_split))
        self.lexicon_info = {
            "lexicon": cfg.data.lexicon,
            "entries": len(lexicon),
            "train_words": total,
            "train_words_known": known,
            "coverage": round(known / max(total, 1), 4),
        }
        self.builder = SequenceBuilder(
            self.tokenizer,
            lexicon,
            max_len=cfg.model.max_len,
            vocab=self.vocab,
            bos_prompt=cfg.model.bos_prompt,
            anchor=cfg.data.anchor,
            vad_input=cfg.model.vad_input,
        )
        self.source = open_source(self.info, cfg.data, self.builder.collate, rt.micro, rt.rank, rt.world, cfg.seed)
        self.steps_per_epoch = self.source.batches_per_epoch // rt.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{cfg.data.train_split} split has {self.source.num_images} images, fewer than one optimizer step "
                f"(global batch {rt.global_batch}); lower schedule.micro_batch / grad_accum"
            )
        self.total_steps = self.steps_per_epoch * cfg.schedule.epochs
        if cfg.schedule.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.schedule.max_steps)

    def _corpus_vocab(self):
        """The training split's corpus vocabulary; saved in the run folder so a resume reuses it."""
        from sevlm.data.folder import load_split_records
        from sevlm.vocab import VocabMap

        path = self.run_dir / VOCAB_FILE
        if self.resuming and path.exists():
            return VocabMap.load(path)
        records = load_split_records(self.cfg.data.dataset_dir, self.cfg.data.train_split)
        pairs = [(e, x) for r in records.values() for e, x in zip(r.get("emotions", []), r.get("explanations", []))]
        return VocabMap.from_annotations(self.tokenizer, pairs, min_count=self.cfg.data.vocab_min_count)

    def setup_model(self) -> None:
        """The model (same initial weights on every rank), the memory check, and the engine."""
        import torch

        from sevlm.model import SEVLM
        from sevlm.vocab import TokenIds

        cfg, rt, info = self.cfg, self.rt, self.info
        self.model_config = checks.model_config(cfg.model, info).with_token_ids(
            TokenIds.from_tokenizer(self.tokenizer, self.vocab)
        )
        torch.manual_seed(cfg.seed)
        try:
            model = SEVLM(self.model_config)
        except OSError as e:  # the weights of a hub decoder whose config was cached
            raise checks.decoder_error(cfg.model.decoder, e) from None
        _seed_everything(cfg.seed + rt.rank)  # dropout differs per rank
        if info.num_tokens is None:
            info.num_tokens = int(torch.as_tensor(self.source.val_samples()[0]["tokens"]).shape[0])
        added = checks.estimate_model_memory(model, rt, info)  # what training adds to this process
        checks.check_memory(added, rt.device, cfg.max_memory_gb, rt.micro)
        # the process's expected peak: on a CPU what it holds already (torch, the data, the model) plus
        # what training adds; on a GPU the device memory training takes
        self.memory_estimate = added + (checks.resident_bytes() if rt.device == "cpu" else 0)
        self._lap("model_build")
        self.engine, self.optimizer, self.scheduler = build_engine(model, cfg.optim, self.total_steps, rt.ds_config)
        self._lap("engine_build")

    def _lap(self, name: str) -> None:
        if hasattr(self, "startup"):  # a benchmark may set up the parts without setup()
            self.startup.lap(name)

    def setup_telemetry(self) -> None:
        """The step timer, with the peak FLOP/s MFU is taken against (on a CPU: measured now, once)."""
        from sevlm.train.telemetry import StepTelemetry, peak_flops

        rt = self.rt
        self.peak = peak_flops(rt.device, rt.precision, rt.dtype)
        self.telemetry = StepTelemetry(
            rt.device, self.model_config, rt.global_batch, rt.world, self.peak["flops_per_s"]
        )

    def setup_logging(self) -> None:
        """The run folder's config / ds_config / run.json (rank 0) and the metric log."""
        import deepspeed
        import torch

        rt, mc = self.rt, self.model_config
        resolved = config_to_dict(self.cfg)
        self.export_meta = {
            **resolved,
            "encoder": self.info.encoder,
            "visual_tokens": [self.info.num_tokens, self.info.dim],
        }
        derived = {
            "world_size": rt.world,
            "device": rt.device,
            "precision": rt.precision,
            "micro_batch": rt.micro,
            "grad_accum": rt.accum,
            "global_batch": rt.global_batch,
            "sequences_per_step": 2 * rt.global_batch,
            "max_tokens_per_step": rt.global_batch * 2 * mc.max_len,
            "train_images": self.source.num_images,
            "val_images": len(self.source.val_samples()),
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "parameters": sum(p.numel() for p in self.engine.module.parameters()),
            "vocab_size": mc.vocab_size,
            "memory_estimate_gib": round(self.memory_estimate / 2**30, 2),
            "encoder": self.info.encoder,
            "visual_tokens": [self.info.num_tokens, self.info.dim],
            "data_source": f"{self.info.source}: {self.info.path}",
            "lexicon": (
                f"{self.lexicon_info['lexicon']} ({self.lexicon_info['entries']} words; knows "
                f"{self.lexicon_info['train_words_known']} of the {self.lexicon_info['train_words']} distinct "
                f"words of the training text, {100 * self.lexicon_info['coverage']:.0f}%)"
            ),
        }
        left_out = getattr(getattr(self.source, "train_set", None), "n_few_emotions", 0)
        if left_out:  # data.min_train_emotions
            derived["train_images_left_out_few_emotions"] = left_out
        if rt.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(self.run_dir)
            if not self.resuming:  # config.json last: a folder without one is started afresh
                write_json(self.run_dir / "ds_config.json", rt.ds_config)
                if self.vocab is not None:
                    self.vocab.save(self.run_dir / VOCAB_FILE)
                write_json(self.run_dir / CONFIG_FILE, resolved)
            write_json(
                self.run_dir / "run.json",
                {
                    **derived,
                    "lexicon_coverage": self.lexicon_info,
                    "model_config": mc.__dict__,
                    "git": _git_hash(),
                    "peak_flops_per_s": self.peak,
                    "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__},
                    "resumed_at_step": self.state.step if self.resuming else None,
                },
            )
            print("sevlm train: " + ", ".join(f"{k}={v}" for k, v in derived.items()), file=sys.stderr, flush=True)
            peak = self.peak["flops_per_s"]
            print(
                f"sevlm train: MFU is taken against {f'{peak / 1e12:.3g} TFLOP/s' if peak else 'no peak (no MFU)'} "
                f"({self.peak['source']})",
                file=sys.stderr,
                flush=True,
            )
        self.log = RunLog(self.run_dir, rt.main, self.state.step if self.resuming else None)

    # -- one micro-batch ------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict | None:
        """Forward and backward of one micro-batch; at the accumulation boundary, the optimizer
        step's log row (else None). Loss terms stay on the device until the boundary."""
        from sevlm.train.data import split_inputs

        inputs, meta = split_inputs(batch, self.engine.device, self.rt.dtype)
        self.telemetry.forward_start(batch)
        out = self.engine(**inputs)
        self.engine.backward(out.loss)
        self.telemetry.backward_end()
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()  # at the boundary: skipped by DeepSpeed if the gradients are not finite
        self.telemetry.step_end(boundary)
        self.state.position += 1
        for name in ("loss", "lm_loss", "cl_loss", "vad_loss", "align_loss"):
            if getattr(out, name) is not None:
                self._parts.setdefault(name, []).append(getattr(out, name).detach())
        self._keys.extend(meta.get("image_ids", []))
        return self._end_step() if boundary else None

    def _end_step(self) -> dict:
        import torch

        st, rt = self.state, self.rt
        st.step += 1
        st.samples_seen += rt.global_batch
        row = {"step": st.step, "epoch": st.epoch}
        for name, values in self._parts.items():  # one host sync per optimizer step
            values = torch.stack(values).tolist()
            row[name] = sum(values) / len(values)
        keys, self._parts, self._keys = self._keys, {}, []
        for g in getattr(self.optimizer, "param_groups", []):
            row[f"lr_{g.get('name', 'group')}"] = g["lr"]
        scale = getattr(self.optimizer, "loss_scale", None)
        if rt.precision == "fp16" and scale is not None:
            row["loss_scale"] = float(scale)
        if self.engine.was_step_applied():
            if not math.isfinite(row.get("loss", 0.0)):  # only ZeRO-0 without fp16 has no overflow check
                raise TrainingError(
                    f"step {st.step}: a non-finite loss was applied to the weights; ds_config "
                    f"{self.cfg.ds_config!r} does not skip such steps: use a ZeRO-2 ds_config"
                )
            st.nonfinite_run = 0
            self._write_rank_info()
        else:
            row["skipped"] = True
            self._report_skipped(row, keys, scale)
        return row

    def _report_skipped(self, row: dict, keys: list, scale) -> None:
        st, main = self.state, self.rt.main
        st.nonfinite_run += 1
        loss = row.get("loss", float("nan"))
        if loss == loss and abs(loss) != float("inf"):
            _say(
                f"sevlm train: step {st.step}: gradient overflow, step skipped"
                + (f" (loss scale now {float(scale):g})" if scale is not None else ""),
                main,
            )
        else:
            self.log.write(
                {"step": st.step, "epoch": st.epoch, "event": "nonfinite_loss", "loss": str(loss), "batch_keys": keys}
            )
            _say(
                f"sevlm train: non-finite loss {loss} at step {st.step} (epoch {st.epoch}); step skipped; "
                f"images: {', '.join(map(str, keys[:8]))}" + (" ..." if len(keys) > 8 else ""),
                main,
            )
        if st.nonfinite_run >= self.cfg.schedule.max_nonfinite:
            hint = " or switch precision to fp32/bf16" if self.rt.precision == "fp16" else ""
            raise TrainingError(
                f"stopped at step {st.step} (epoch {st.epoch}): {st.nonfinite_run} non-finite losses or gradient "
                f"overflows in a row; lower optim.decoder_lr / optim.emotion_lr{hint}, and check the features "
                "for NaN/inf (see log.jsonl for the batch keys)"
            )

    def _write_rank_info(self) -> None:
        """ranks/rank<r>.json, once: optimizer state exists after the first applied step."""
        import torch

        if self._rank_info_written:
            return
        base = getattr(self.optimizer, "optimizer", self.optimizer)  # DeepSpeed wraps the torch optimizer
        elements = sum(v.numel() for s in base.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
        write_json(
            self.run_dir / "ranks" / f"rank{self.rt.rank}.json",
            {
                "rank": self.rt.rank,
                "world_size": self.rt.world,
                "zero_stage": self.rt.ds_config.get("zero_optimization", {}).get("stage", 0),
                "optimizer_state_elements": elements,
                "trainable_parameters": sum(p.numel() for p in self.engine.module.parameters() if p.requires_grad),
            },
        )
        self._rank_info_written = True

    # -- validation, checkpoints, exports ------------------------------------------------------------
    def validate(self) -> dict:
        """Validation metrics (the same dict on every rank)."""
        from sevlm.train.validate import validate

        s, rt = self.cfg.schedule, self.rt
        return validate(
            self.engine.module,
            self.builder,
            self.source.val_samples(),
            micro=rt.micro,
            rank=rt.rank,
            world=rt.world,
            seed=self.cfg.seed,
            max_batches=s.val_batches,
            gen_images=s.val_gen_images,
            dominance=s.val_dominance,
            decoding=self.cfg.decoding,
            device=self.engine.device,
            dtype=rt.dtype,
        )

    def save(self, *names: str) -> None:
        """Checkpoint the current step and point `names` (LAST, BEST_ACC, BEST_BLEU) at it."""
        fingerprint = self.fingerprint() if self.rt.main else {}  # rank 0 writes it
        self.log.flush()  # what was logged up to this step is on disk before a checkpoint names the step
        checkpoint.save(
            self.engine, self.run_dir / CKPT_DIR, self.state.step, names, self.state, fingerprint, self.rt.main
        )

    def fingerprint(self) -> dict[str, str]:
        """Hashes of the run's config.json and data, saved with every checkpoint."""
        if not hasattr(self, "_fingerprint"):
            from sevlm.io import sha256_file

            # keyed by role, not by the run folder's path: a run resumed through another spelling of
            # its folder, or copied/moved elsewhere, is the same run
            data = getattr(self, "_data_fingerprint", None) or checks.data_fingerprint(self.cfg.data)
            self._fingerprint = {checks.RUN_CONFIG_KEY: sha256_file(self.run_dir / CONFIG_FILE), **data}
        return self._fingerprint

    def load(self) -> None:
        """Continue from the last finished checkpoint (none finished: start over)."""
        client = checkpoint.load(
            self.engine, self.run_dir / CKPT_DIR, self.rt.rank, self.rt.main, say=lambda msg: _say(msg, self.rt.main)
        )
        if client is None:
            _say(f"sevlm train: {self.run_dir}: no finished checkpoint; starting from step 0", self.rt.main)
            return
        self.state = TrainState(**client["train_state"])

    def export(self, name: str, metrics: dict) -> None:
        """Write the export folder `name` (fp32 safetensors + config + tokenizer) on rank 0."""
        if self.rt.main:
            _export(
                self.run_dir / name,
                self.engine.module,
                self.tokenizer,
                self.vocab,
                self.model_config,
                self.export_meta,
                self.state.step,
                metrics,
            )
        barrier()

    def _validate_and_keep(self) -> tuple[str | None, list[str]]:
        """Validate; export and name the best models. -> (stop reason or None, checkpoint names)."""
        st, s = self.state, self.cfg.schedule
        metrics = self.validate()
        acc, bleu, names = metrics.get("accuracy"), metrics.get("bleu4"), [LAST]
        loss = metrics.get("loss")
        # accuracy on a small validation split saturates (the demo's: 1.0 from mid-training on), so a
        # tie goes to the lower validation loss: the export is then the better-trained model, not the
        # first to reach the top accuracy
        tie_better = (
            acc == st.best_acc and loss is not None and st.best_acc_loss is not None and loss < st.best_acc_loss
        )
        if acc is not None and (st.best_acc is None or acc > st.best_acc or tie_better):
            st.best_acc, st.best_acc_step, st.best_acc_loss = acc, st.step, loss
            names.append(BEST_ACC)
            self.export(EXPORT, metrics)
        if bleu is not None and (st.best_bleu is None or bleu > st.best_bleu):
            st.best_bleu, st.best_bleu_step = bleu, st.step
            names.append(BEST_BLEU)
            self.export(EXPORT_BEST_BLEU, metrics)
        st.bad_validations = 0 if len(names) > 1 else st.bad_validations + 1
        self.log.write(
            {"step": st.step, **{f"val_{k}": v for k, v in metrics.items()}, "bad_validations": st.bad_validations},
            prefix="val",
        )
        _say(
            f"sevlm train: step {st.step}: "
            + ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
            self.rt.main,
        )
        if s.patience and st.bad_validations >= s.patience:
            return f"early stop: no improvement in {s.patience} validations", names
        return None, names

    # -- the loop ----------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Train to the end (epochs, max_steps or early stop) and return the run folder."""
        from tqdm import tqdm

        st, s = self.state, self.cfg.schedule
        self._bar = tqdm(
            total=self.total_steps,
            initial=st.step,
            desc="train",
            disable=not self.rt.main,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.engine.train()
        stop = None
        while stop is None and st.step < self.total_steps and st.epoch < s.epochs:
            stop = self._run_epoch()
        self._bar.close()
        return self._finish(stop)

    def _run_epoch(self) -> str | None:
        """The current epoch from the saved position; -> a stop reason, or None to go on."""
        st = self.state
        epoch = st.epoch
        usable = self.steps_per_epoch * self.rt.accum  # leftover micro-batches would straddle epochs: dropped
        self.telemetry.wait_start()
        batches = iter(self.source.epoch(epoch, st.position))
        try:
            while True:
                self.telemetry.wait_start()
                batch = next(batches, None)
                if batch is None:
                    break
                if not self._first_batch:
                    self._first_batch = True
                    self._lap("first_batch")
                row = self.train_step(batch)
                if row is None:
                    continue
                stop = self._after_optimizer_step(row, end_of_epoch=st.position >= usable)
                if stop or st.step >= self.total_steps or st.epoch != epoch:
                    return stop
        finally:
            self.telemetry.wait_start()  # stopping the epoch's loader (its workers) is the next batch's wait
            getattr(batches, "close", lambda: None)()
        st.epoch, st.position = epoch + 1, 0  # the source ran out early
        return None

    def _after_optimizer_step(self, row: dict, end_of_epoch: bool) -> str | None:
        """Log the step, then validate and checkpoint on schedule."""
        st, s = self.state, self.cfg.schedule
        if not self._started:
            self._first_step_done()
        if st.step % s.log_every == 0 or st.step == self.total_steps:
            row.update(self.telemetry.report())
            norm = self.engine.get_global_grad_norm()  # computed by clipping at this step (None without)
            if norm is not None:
                row["grad_norm"] = float(norm)
        self.log.write(row)
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}", epoch=st.epoch)
        last = st.step >= self.total_steps
        validate = (s.val_every and st.step % s.val_every == 0) or (not s.val_every and end_of_epoch) or last
        if end_of_epoch:
            st.epoch, st.position = st.epoch + 1, 0
        stop = None
        with self.telemetry.paused():  # not a training step's time
            if validate:
                stop, names = self._validate_and_keep()
                self.save(*names)
            elif st.step % s.checkpoint_every == 0:
                self.save(LAST)
        _after_step(st)
        return stop

    def _first_step_done(self) -> None:
        """The start-up line and run.json's "startup": the time to the first step, by phase."""
        self._started = True
        self._lap("first_step")
        if self.rt.main and hasattr(self, "startup"):
            path = self.run_dir / "run.json"
            write_json(path, {**read_json(path), "startup": self.startup.summary()})
            self._bar.write("sevlm train: " + self.startup.line(), file=sys.stderr)  # above the progress bar

    def _finish(self, stop: str | None) -> Path:
        st, s = self.state, self.cfg.schedule
        if stop is None:
            stop = "max_steps" if s.max_steps is not None and st.step >= s.max_steps else "epochs"
        if st.best_acc is None:  # never validated: the last weights are the export
            self.export(EXPORT, {})
        summary = {
            "step": st.step,
            "event": "done",
            "reason": stop,
            "best_acc": st.best_acc,
            "best_bleu4": st.best_bleu,
        }
        # not a time series: in TensorBoard a run resumed after this row would show its figures twice
        self.log.write(summary, tensorboard=False)
        self.log.close()
        if self.rt.main:  # written last: its presence means training finished
            # the measured peak beside the estimate (not in log.jsonl: a resumed run's log equals an
            # uninterrupted one's, and this process's peak is not the run's)
            memory = {
                "memory_estimate_gib": round(self.memory_estimate / 2**30, 2),
                "memory_peak_gib": checks.peak_memory_gib(self.rt.device),
            }
            write_json(self.run_dir / DONE_FILE, {**summary, **memory})
        _say(
            f"sevlm train: done ({stop}) at step {st.step}; best accuracy {st.best_acc} (step {st.best_acc_step}), "
            f"best BLEU-4 {st.best_bleu} (step {st.best_bleu_step}); run folder {self.run_dir}",
            self.rt.main,
        )
        return self.run_dir


# ---- entry point -----------------------------------------------------------------------------------
def train(
    config: TrainConfig | dict | None = None,
    resume: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Train (or continue with `resume=RUN_DIR`) and return the run folder."""
    run_dir = run_folder(config, resume, out_dir)
    with sigterm_exits(run_dir), claim_run_folder(run_dir):
        cfg, run_dir, resuming = prepare_run(config, resume, out_dir)
        if resuming and (run_dir / DONE_FILE).exists():  # written last: nothing is left to do
            _say(
                f"sevlm train: {run_dir}: finished already ({run_dir / DONE_FILE}); nothing to resume",
                os.environ.get("RANK", "0") == "0",
            )
            return run_dir
        recipe = TrainRecipe(cfg, run_dir, resuming)
        recipe.setup()
        return recipe.train()


# ---- small helpers ---------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _say(msg: str, main: bool) -> None:
    if main:
        print(msg, file=sys.stderr, flush=True)


def _export(out_dir: Path, module, tokenizer, vocab, model_cfg, meta: dict, step: int, metrics: dict) -> None:
    import copy

    import torch

    from sevlm.export import save_export

    if next(module.parameters()).dtype != torch.float32:  # exports are fp32 whatever the training precision
        module = copy.deepcopy(module).float()
    was_training = module.training
    config_dict = {**meta, "model": dict(model_cfg.__dict__), "step": step, "metrics": metrics}
    save_export(out_dir, module, tokenizer, config_dict, vocab=vocab)
    module.train(was_training)

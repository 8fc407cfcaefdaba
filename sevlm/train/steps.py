"""One optimizer step's account: its log row (mean loss terms, learning rates, loss scale) and,
for a step DeepSpeed skipped, the report and the stop after too many in a row. The loss terms
stay on the device until the step ends, so a step costs one host sync, not one per micro-batch."""

from __future__ import annotations

import math
import sys

import torch

from sevlm.train.checkpoint import TrainingError, TrainState
from sevlm.train.runlog import RunLog

LOSS_TERMS = ("loss", "lm_loss", "cl_loss", "vad_loss", "align_loss")


class StepLosses:
    """The loss terms and image ids of the micro-batches of the current optimizer step."""

    def __init__(self):
        self.terms: dict[str, list[torch.Tensor]] = {}
        self.image_ids: list = []  # named when the step is not finite

    def add(self, out, meta: dict) -> None:
        for name in LOSS_TERMS:
            if getattr(out, name) is not None:
                self.terms.setdefault(name, []).append(getattr(out, name).detach())
        self.image_ids.extend(meta.get("image_ids", []))

    def take(self) -> tuple[dict[str, float], list]:
        """({term: mean over the step's micro-batches}, image ids), and start the next step."""
        means = {}
        for name, values in self.terms.items():  # one host sync per optimizer step
            values = torch.stack(values).tolist()
            means[name] = sum(values) / len(values)
        image_ids, self.terms, self.image_ids = self.image_ids, {}, []
        return means, image_ids


def end_step(state: TrainState, losses: StepLosses, engine, optimizer, resolved, log: RunLog) -> dict:
    """Count the optimizer step that just ended -> its log row; a step DeepSpeed skipped is
    reported (`resolved`: the run's `sevlm.train.resolve.Resolved`)."""
    state.step += 1
    state.samples_seen += resolved.global_batch
    means, image_ids = losses.take()
    row = step_row(state, means, optimizer, resolved.precision)
    if engine.was_step_applied():
        check_applied(state, row, resolved.config.ds_config)
    else:
        row["skipped"] = True
        report_skipped(state, row, image_ids, getattr(optimizer, "loss_scale", None), log, resolved)
    return row


def step_row(state: TrainState, means: dict[str, float], optimizer, precision: str) -> dict:
    """The log row of the optimizer step `state.step` (already counted)."""
    row = {"step": state.step, "epoch": state.epoch, **means}
    for group in getattr(optimizer, "param_groups", []):
        row[f"lr_{group.get('name', 'group')}"] = group["lr"]
    scale = getattr(optimizer, "loss_scale", None)
    if precision == "fp16" and scale is not None:
        row["loss_scale"] = float(scale)
    return row


def check_applied(state: TrainState, row: dict, ds_config_name: str) -> None:
    """An applied step: its loss was finite (only ZeRO-0 without fp16 has no overflow check)."""
    if not math.isfinite(row.get("loss", 0.0)):
        raise TrainingError(
            f"step {state.step}: a non-finite loss was applied to the weights; ds_config "
            f"{ds_config_name!r} does not skip such steps: use a ZeRO-2 ds_config"
        )
    state.nonfinite_run = 0


def report_skipped(state: TrainState, row: dict, image_ids: list, scale, log: RunLog, resolved) -> None:
    """A step DeepSpeed skipped: a gradient overflow (said) or a non-finite loss (logged with its
    images); schedule.max_nonfinite in a row stop the run."""
    main, precision, max_nonfinite = resolved.main, resolved.precision, resolved.config.schedule.max_nonfinite
    state.nonfinite_run += 1
    loss = row.get("loss", float("nan"))
    if math.isfinite(loss):
        say(
            f"sevlm train: step {state.step}: gradient overflow, step skipped"
            + (f" (loss scale now {float(scale):g})" if scale is not None else ""),
            main,
        )
    else:
        log.write(
            {
                "step": state.step,
                "epoch": state.epoch,
                "event": "nonfinite_loss",
                "loss": str(loss),
                "batch_keys": image_ids,
            }
        )
        say(
            f"sevlm train: non-finite loss {loss} at step {state.step} (epoch {state.epoch}); step skipped; "
            f"images: {', '.join(map(str, image_ids[:8]))}" + (" ..." if len(image_ids) > 8 else ""),
            main,
        )
    if state.nonfinite_run >= max_nonfinite:
        hint = " or switch precision to fp32/bf16" if precision == "fp16" else ""
        raise TrainingError(
            f"stopped at step {state.step} (epoch {state.epoch}): {state.nonfinite_run} non-finite losses or gradient "
            f"overflows in a row; lower optim.decoder_lr / optim.emotion_lr{hint}, and check the features "
            "for NaN/inf (see log.jsonl for the batch keys)"
        )


def say(message: str, main: bool) -> None:
    """A line on stderr from rank 0."""
    if main:
        print(message, file=sys.stderr, flush=True)

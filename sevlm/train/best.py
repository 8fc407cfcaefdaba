"""Which validated models a run keeps: the best accuracy (export/) and the best BLEU-4
(export_best_bleu/), and when it stops early. Kept apart from the loop because the tie rule
below decides which model a user gets."""

from __future__ import annotations

from sevlm.train.checkpoint import BEST_ACC, BEST_BLEU, LAST, TrainState


def keep_best(state: TrainState, metrics: dict) -> list[str]:
    """Record this step's validation `metrics` in `state`'s bests -> the checkpoint names to
    point at the step: LAST, then BEST_ACC / BEST_BLEU where it is the best so far."""
    acc, bleu, loss, names = metrics.get("accuracy"), metrics.get("bleu4"), metrics.get("loss"), [LAST]
    # accuracy on a small validation split saturates (the demo's: 1.0 from mid-training on), so a
    # tie goes to the lower validation loss: the export is then the better-trained model, not the
    # first to reach the top accuracy
    tie_better = (
        acc == state.best_acc and loss is not None and state.best_acc_loss is not None and loss < state.best_acc_loss
    )
    if acc is not None and (state.best_acc is None or acc > state.best_acc or tie_better):
        state.best_acc, state.best_acc_step, state.best_acc_loss = acc, state.step, loss
        names.append(BEST_ACC)
    if bleu is not None and (state.best_bleu is None or bleu > state.best_bleu):
        state.best_bleu, state.best_bleu_step = bleu, state.step
        names.append(BEST_BLEU)
    state.bad_validations = 0 if len(names) > 1 else state.bad_validations + 1
    return names


def early_stop(state: TrainState, patience: int | None) -> str | None:
    """The stop reason once `patience` validations in a row improved nothing, else None."""
    if patience and state.bad_validations >= patience:
        return f"early stop: no improvement in {patience} validations"
    return None

"""Where a training step's time goes: the per-step figures of log.jsonl and TensorBoard.

Every `log_every` optimizer steps the recipe adds to its row (docs/TUNING.md explains them):

    step_time_s       wall time per optimizer step over the window since the last row, validation
                      and checkpoint saves left out (mean over ranks)
    data_wait_s       of which: waiting for the next micro-batch and copying it to the device
    fwd_bwd_s         of which: forward and backward (all micro-batches of the step)
    optim_s           of which: `engine.step()` (gradient reduction, clipping, AdamW at the boundary)
    data_wait_frac    data_wait_s / step_time_s: above ~0.5 the run is data-bound
    samples_per_s     images per second, all ranks together
    tokens_per_s      text tokens (non-padding) per second, all ranks together
    mfu               model FLOPs per second (sevlm.model.flops, all ranks) over the peak of all ranks
    grad_norm         the global gradient norm DeepSpeed computed for clipping at the row's step
    mem_peak_*_gib    peak memory of rank 0's process: CUDA max allocated / reserved, or max RSS

The split is timed without an extra host sync per micro-batch: on CUDA each mark is an event
recorded in the stream, read once at the row's step (the events then time the GPU's own
timeline, so "data wait" is the time the GPU sat idle between micro-batches); on a CPU a mark
is `time.perf_counter()`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import torch

from sevlm.model.flops import batch_flops
from sevlm.train.checks import peak_resident_bytes
from sevlm.train.distributed import mean_across

# Dense peak FLOP/s per GPU (vendor datasheets; tensor cores, without sparsity), by precision.
# Matched against `torch.cuda.get_device_name()`, first hit wins (so "H100 NVL" before "H100").
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),  # fp32 = TF32 tensor cores
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 418.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 35.0}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
    ("2080 Ti", {"fp16": 107.0, "fp32": 13.4}),
]


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """The table's dense peak FLOP/s of the GPU called `name` at `precision`, or None if unknown."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            tflops = peaks.get(precision)
            return tflops * 1e12 if tflops else None
    return None


def measure_matmul_flops(dtype, size: int = 512, seconds: float = 0.3) -> float:
    """Dense-matmul FLOP/s of this CPU process at `dtype` (torch's threads as they are set):
    square `size` matmuls for about `seconds`, the best of the timed batches."""
    gen = torch.Generator().manual_seed(0)  # its own: the run's random streams stay untouched
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    a @ b  # warm-up: first-call allocations and kernel selection
    best, end, reps = 0.0, time.perf_counter() + seconds, 4
    while time.perf_counter() < end or best == 0.0:
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, reps * 2 * size**3 / max(time.perf_counter() - t, 1e-9))
    return best


def peak_flops(device: str, precision: str, dtype) -> dict:
    """{"flops_per_s", "source"}: the peak one rank's MFU is taken against. GPUs from the table
    (None when the GPU is not in it: no MFU then), CPUs measured once here."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return {"flops_per_s": gpu_peak_flops(name, precision), "source": f"table: {name} {precision}"}
    return {
        "flops_per_s": round(measure_matmul_flops(dtype)),
        "source": f"measured: 512x512 matmuls, {precision}, {torch.get_num_threads()} threads",
    }


def peak_memory(device: str) -> dict[str, float]:
    """This process's peak memory so far, GiB."""
    if device == "cuda":
        return {
            "mem_peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 4),
            "mem_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 4),
        }
    return {"mem_peak_rss_gib": round((peak_resident_bytes() or 0) / 2**30, 4)}


def process_age() -> float:
    """Seconds since this process started (the OS's start time: imports included)."""
    try:  # Linux: both clocks since boot, to 10 ms (psutil's create_time rests on a boot time in whole seconds)
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil  # not a dependency of sevlm: needed only without /proc

        return time.time() - psutil.Process().create_time()


class StartupClock:
    """The time to the first step, in phases: `lap(name)` ends the phase `name` now."""

    def __init__(self):
        self.phases: dict[str, float] = {"before_setup_s": round(process_age(), 3)}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        key = f"{name}_s"
        self.phases[key] = round(self.phases.get(key, 0.0) + now - self._t, 3)
        self._t = now

    def summary(self) -> dict[str, float]:
        """{"time_to_first_step_s": since the process started, then each phase}."""
        return {"time_to_first_step_s": round(process_age(), 3), **self.phases}

    def line(self) -> str:
        parts = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f}" for k, v in self.phases.items())
        return f"first step {process_age():.1f} s after the process started ({parts}; seconds)"


class _Clock:
    """Marks on the host clock (CPU) or CUDA events in the current stream."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1000 if self.cuda else b - a

    def wait(self, mark) -> None:
        if self.cuda:
            mark.synchronize()


class StepTelemetry:
    """Times each micro-batch (`wait_start`, `forward_start`, `backward_end`, `step_end`) and
    turns a window of optimizer steps into the figures of a log row (`report`)."""

    def __init__(self, device: str, model_config, global_batch: int, world: int, peak: float | None):
        self.clock = _Clock(device)
        self.device, self.model_config = device, model_config
        self.global_batch, self.world, self.peak = global_batch, world, peak
        self._marks: list[tuple] = []  # (wait, forward, backward end, step end) per micro-batch
        self._wait = None
        self._tokens = self._flops = 0
        self._steps = 0
        self._paused = 0.0
        self._window_start: float | None = None

    def wait_start(self) -> None:
        """Before asking the data source for the next micro-batch (or starting or ending an epoch's
        loader); the earliest mark since the last micro-batch counts."""
        if self._window_start is None:
            self._window_start = time.perf_counter()
        if self._wait is None:
            self._wait = self.clock.mark()

    def forward_start(self, batch: dict) -> None:
        """The batch is on the device; its text tokens and FLOPs are counted from host tensors."""
        mark = self.clock.mark()
        if self._window_start is None:  # a caller that does not time its data (a benchmark)
            self._window_start = time.perf_counter()
        self._current = [mark if self._wait is None else self._wait, mark]
        self._wait = None
        mask = batch.get("attention_mask")
        self._tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        self._flops += batch_flops(self.model_config, batch)

    def backward_end(self) -> None:
        self._current.append(self.clock.mark())

    def step_end(self, boundary: bool) -> None:
        self._current.append(self.clock.mark())
        self._marks.append(tuple(self._current))
        self._steps += boundary

    @contextlib.contextmanager
    def paused(self):
        """Time spent in the block (validation, checkpoints) is no training step's."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t

    def report(self) -> dict:
        """The window's figures (per optimizer step; rates over the window), then a new window."""
        if not self._marks or not self._steps:
            return {}
        self.clock.wait(self._marks[-1][-1])
        wall = time.perf_counter() - self._window_start - self._paused
        parts = [0.0, 0.0, 0.0]
        for w, f, b, e in self._marks:
            parts[0] += self.clock.seconds(w, f)
            parts[1] += self.clock.seconds(f, b)
            parts[2] += self.clock.seconds(b, e)
        k = self._steps
        # one collective per log row: timings averaged over ranks, counts summed (mean x world)
        data, fwd_bwd, optim, wall, tokens, flops = mean_across([*parts, wall, float(self._tokens), float(self._flops)])
        wall = max(wall, 1e-9)
        row = {
            "step_time_s": wall / k,
            "data_wait_s": data / k,
            "fwd_bwd_s": fwd_bwd / k,
            "optim_s": optim / k,
            "data_wait_frac": data / wall,
            "samples_per_s": k * self.global_batch / wall,
            "tokens_per_s": tokens * self.world / wall,
            "tokens": int(round(tokens * self.world)),
        }
        if self.peak:
            row["mfu"] = flops / wall / self.peak  # mean FLOP/s per rank over one rank's peak
        row.update(peak_memory(self.device))
        self._marks, self._tokens, self._flops, self._steps, self._paused = [], 0, 0, 0, 0.0
        self._window_start = time.perf_counter()
        return {k: (v if isinstance(v, int) or not math.isfinite(v) else float(f"{v:.6g}")) for k, v in row.items()}

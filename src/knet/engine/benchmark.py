"""Inference and training-step benchmarks of a model: throughput, latency, peak memory and
multiply-accumulates (what ``knet benchmark`` prints; :mod:`knet.apps.benchmark` is the verb).

:func:`benchmark` times the model forward of the predict path (``model.inference`` in whole or
slide mode on a normalised batch of ``width x height`` images, through the test pipeline's runner)
after warm-up, one synchronised call per iteration, and counts the multiply-accumulates of one
forward with :class:`torch.utils.flop_counter.FlopCounterMode` (MACs = FLOPs / 2; convolutions and
matrix products, which are all but a sliver of the work). Given a model runner (an
:class:`~knet.inference.onnx_runner.OnnxRunner`) it times that runner and counts no MACs.

:func:`benchmark_train` times full training steps: the task's batch on the device, the forward
pass with every stage, the task's losses, the backward pass and the clipped AdamW step of the
preset's recipe -- the trainer's own pieces (:mod:`knet.engine.training`, :mod:`knet.engine.optim`)
-- on a synthetic batch (:func:`synthetic_train_batch`).
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import KnetError

# The iteration counts of each kind of benchmark: a training step costs several forwards, so
# the training benchmark times fewer of them.
INFERENCE_DEFAULTS = {"batch_size": 1, "iters": 20, "warmup": 3}
TRAIN_DEFAULTS = {"batch_size": 2, "iters": 10, "warmup": 2}


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` measured; ``to_dict`` gives the ``--json`` object."""

    model: str
    device: str
    threads: int
    batch_size: int
    size: Any  # N for square N x N inputs, else [width, height]
    mode: str
    iters: int
    images_per_s: float
    latency_ms: Dict[str, float]
    peak_memory_mb: float
    gmacs: Optional[float]  # None for an ONNX Runtime session (not counted)
    precision: str = "fp32"

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        return {key: data[key] for key in (
            "model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s",
            "latency_ms", "peak_memory_mb", "gmacs", "precision")}

    def summary(self) -> str:
        """Human-readable lines, as ``knet benchmark`` prints them without ``--json``."""
        return "\n".join([
            f"model           {self.model} ({self.mode}, {_size_text(self.size)}, batch {self.batch_size})",
            _device_line(self),
            f"throughput      {self.images_per_s:.2f} images/s over {self.iters} iterations",
            f"latency (batch) {_quantiles_text(self.latency_ms)}",
            f"peak memory     {self.peak_memory_mb:.1f} MB",
            (f"compute         {self.gmacs:.2f} GMACs per forward of the batch" if self.gmacs is not None
             else "compute         not counted (ONNX Runtime)"),
        ])


@dataclass
class TrainBenchmarkResult:
    """What :func:`benchmark_train` measured; ``to_dict`` gives ``knet benchmark --train --json``'s object (the
    inference keys without ``latency_ms`` and ``gmacs``, with ``step_ms``; ``mode`` is ``train``)."""

    model: str
    device: str
    threads: int
    batch_size: int
    size: Any  # N for square N x N inputs, else [width, height]
    iters: int
    images_per_s: float
    step_ms: Dict[str, float]  # p50, p90, p99 of one training step of the batch
    peak_memory_mb: float
    mode: str = "train"
    precision: str = "fp32"

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        return {key: data[key] for key in (
            "model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s", "step_ms",
            "peak_memory_mb", "precision")}

    def summary(self) -> str:
        """Human-readable lines, as ``knet benchmark --train`` prints them without ``--json``."""
        return "\n".join([
            f"model           {self.model} (training step, {_size_text(self.size)}, batch {self.batch_size})",
            _device_line(self),
            f"throughput      {self.images_per_s:.2f} images/s over {self.iters} steps",
            f"step time       {_quantiles_text(self.step_ms)}",
            f"peak memory     {self.peak_memory_mb:.1f} MB",
        ])


def _peak_host_memory_mb() -> float:
    """Peak resident set size of this process in MB.

    On Linux, the high-water mark of this program's own memory (``VmHWM``): ``ru_maxrss`` also
    counts the process it was started from, whose high-water mark Linux carries across fork and
    exec (a benchmark started by a process holding a model would report that process's size).
    Elsewhere ``ru_maxrss`` (macOS reports bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _model_macs(model: Any, x: Any, mode: str) -> float:
    """The model's own multiply-accumulates for ``x``: counted on an inference copy with direct
    convolutions (the runner's Winograd ones do fewer), so the figure is the architecture's."""
    from ..models.fuse import inference_copy

    plain = inference_copy(model, winograd=False)
    return count_macs(lambda: plain.inference(x, mode=mode))


def count_macs(forward: Callable[[], Any]) -> float:
    """Multiply-accumulates of one call of ``forward`` (FLOPs / 2 as counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions, matrix products, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        forward()
    return counter.get_total_flops() / 2


def _percentile(values: List[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _device_line(result: Any) -> str:
    """The summary line of where a benchmark ran: device, threads, precision."""
    return f"device          {result.device} ({result.threads} thread{'s' * (result.threads != 1)}, {result.precision})"


_QUANTILES = ("p50", "p90", "p99")  # of the per-call times, in the results and their summaries


def _quantiles(milliseconds: List[float]) -> Dict[str, float]:
    return {q: round(_percentile(milliseconds, float(q[1:])), 3) for q in _QUANTILES}


def _quantiles_text(milliseconds: Dict[str, float]) -> str:
    return "   ".join(f"{q} {milliseconds[q]:.1f} ms" for q in _QUANTILES)


def _size_text(size: Any) -> str:
    width, height = (size, size) if isinstance(size, int) else size
    return f"{width}x{height}"


def default_size(config: Any) -> Tuple[int, int]:
    """(width, height) timed when no size is given: a semantic preset's training crop, or a
    panoptic/instance preset's test scale padded to its size divisor (COCO: 1344 x 800)."""
    crop = getattr(config.data, "crop_size", None)
    if crop is not None:
        return tuple(crop)
    divisor = int(getattr(config.data, "size_divisor", 1))
    return tuple(-(-int(side) // divisor) * divisor for side in config.data.test_scale)


def _check_values(model: Any, size: Any, batch_size: int, threads: Optional[int], iters: int,
                  warmup: int) -> Tuple[int, int]:
    """(width, height) of ``size`` (None: :func:`default_size` of the model's config) after the
    checks both benchmarks make; sets the torch threads when ``threads`` is given."""
    import torch

    if size is None:
        size = default_size(model.config)
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    for label, value, low in (("size", min(width, height), 1), ("batch size", batch_size, 1), ("iters", iters, 1),
                              ("warmup", warmup, 0)):
        if value < low:
            raise KnetError(f"{label} must be at least {low}, got {value}")
    if threads is not None:
        if threads < 1:
            raise KnetError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return width, height


def _synchronize(dev: Any) -> None:
    """Wait for the device's queued work (timing an accelerator's asynchronous calls)."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def _timed(call: Callable[[], Any], dev: Any, warmup: int, iters: int) -> Tuple[List[float], float]:
    """``warmup`` untimed then ``iters`` timed calls of ``call``, each waited for on ``dev`` (the
    CUDA peak-memory counter reset between the two): the per-call milliseconds and the total
    seconds of the timed calls."""
    import torch

    for _ in range(warmup):
        call()
    _synchronize(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    total_start = time.perf_counter()
    for _ in range(iters):
        start = time.perf_counter()
        call()
        _synchronize(dev)
        times.append((time.perf_counter() - start) * 1000.0)
    return times, time.perf_counter() - total_start


def _peak_memory_mb(dev: Any) -> float:
    """The accelerator's peak allocation (CUDA since the last reset; MPS: the driver's current
    allocation), the process's peak resident memory on the CPU."""
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    if dev.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return _peak_host_memory_mb()


def benchmark(model: Any, size: Any = None, batch_size: int = 1, device: str = "auto",
              threads: Optional[int] = None, iters: int = 20, warmup: int = 3, mode: str = "whole",
              name: Optional[str] = None, compile: bool = False, precision: str = "fp32") -> BenchmarkResult:
    """Time the predict path's forward on random normalised ``(batch_size, 3, height, width)``
    inputs: the test pipeline's runner (:class:`~knet.inference.pipeline.TorchRunner`, an inference
    copy of the model with its BatchNorms folded; ``compile``: through ``torch.compile``, compiled
    in the warm-up; ``precision``: ``fp32``, ``bf16`` or ``fp16``, :mod:`knet.utils.precision`).

    Args:
        model: a :class:`knet.KNet` or a panoptic/instance model (anything with
            ``inference(x, mode=...)``), moved to ``device``; or a model runner
            (an :class:`~knet.inference.onnx_runner.OnnxRunner`: called as it is, on its own device
            and threads; its MACs are not counted).
        size: N (N x N), (width, height), or None for :func:`default_size` of the model's config.
        device: ``auto`` picks CUDA, then MPS, then the CPU.
        threads: ``torch.set_num_threads`` when given.
        iters: timed iterations.
        warmup: untimed iterations before them.

    Returns:
        a :class:`BenchmarkResult`. Peak memory is the accelerator's peak allocation on CUDA
        (and MPS), the process's peak resident memory on the CPU.
    """
    import torch

    from torch import nn

    from ..inference.pipeline import TorchRunner, as_runner
    from ..utils.device import resolve_device

    width, height = _check_values(model, size, batch_size, threads, iters, warmup)
    is_torch = isinstance(model, nn.Module)
    if is_torch:
        dev = resolve_device(device)
        runner = TorchRunner(model.to(dev), compile=compile, precision=precision)  # the predict path: a BN-folded copy
    else:
        runner = as_runner(model, compile=compile, precision=precision)
        dev = resolve_device(model.device)  # a runner names its device ("cpu")
    x = torch.randn(batch_size, 3, height, width, device=dev)

    def forward() -> Any:
        return runner(x, mode)

    with torch.inference_mode():
        macs = _model_macs(model, x, mode) if is_torch else None
        latencies, total = _timed(forward, dev, warmup, iters)
    peak = _peak_memory_mb(dev)
    config = getattr(model, "config", None)
    return BenchmarkResult(
        model=name or getattr(config, "name", type(model).__name__),
        device=str(dev) if is_torch else f"{dev} ({', '.join(model.providers)})",
        threads=torch.get_num_threads() if is_torch else model.threads,
        batch_size=batch_size,
        size=width if width == height else [width, height],
        mode=mode,
        iters=iters,
        images_per_s=round(batch_size * iters / total, 3),
        latency_ms=_quantiles(latencies),
        peak_memory_mb=round(peak, 1),
        gmacs=round(macs / 1e9, 3) if macs is not None else None,
        precision=precision,
    )


def synthetic_train_batch(config: Any, task: Any, batch_size: int, height: int, width: int, seed: int = 0) -> Any:
    """A collated training batch of ``batch_size`` synthetic samples of ``height x width``, as the
    task's ``collate`` makes it (:meth:`knet.tasks.Task.synthetic_batch`: semantic models random
    normalised images and labels over their classes; panoptic/instance models random
    non-overlapping rectangles as things over bands of stuff), drawn from a generator seeded with ``seed``."""
    import numpy as np

    return task.synthetic_batch(config, batch_size, height, width, np.random.default_rng(seed))


def benchmark_train(model: Any, size: Any = None, batch_size: int = TRAIN_DEFAULTS["batch_size"],
                    device: str = "auto", threads: Optional[int] = None, iters: int = TRAIN_DEFAULTS["iters"],
                    warmup: int = TRAIN_DEFAULTS["warmup"], name: Optional[str] = None,
                    low_memory: bool = False, precision: str = "fp32",
                    cpu_winograd: bool = True) -> TrainBenchmarkResult:
    """Time full training steps of ``model`` on a synthetic batch (:func:`synthetic_train_batch`).

    One step is what the trainer's ``step`` does (:mod:`knet.engine.training`) but for the lr
    schedule, the cross-rank loss average and the NaN check: the task's ``batch_inputs`` (the batch
    to the device; panoptic/instance: the targets at stride 4), the forward pass with every stage
    and the task's losses (the trainer's loss module), their sum, and
    :func:`knet.engine.optim.backward_step`: backward, gradient clipping at the recipe's
    ``train.clip_grad_norm``, and the step of the recipe's AdamW (:func:`knet.engine.optim.build_optimizer`,
    at its base lr, with its parameter groups). The model is trained in place: its weights change
    (with ``low_memory``, a copy built from its low-memory config is trained instead); on the CPU it
    holds plain convolutions in its own memory layout again afterwards, as after ``knet train``.

    Args:
        model: a :class:`knet.KNet` or a panoptic/instance model, moved to ``device``, in train mode.
        size: N (N x N), (width, height), or None for :func:`default_size` of the model's config.
        device: ``auto`` picks CUDA, then MPS, then the CPU.
        threads: ``torch.set_num_threads`` when given.
        iters: timed steps.
        warmup: untimed steps before them (they also create AdamW's state).
        low_memory: as ``knet train --low-memory``: the model of :func:`knet.config.low_memory_config`
            (recomputed backbone stages and head maps) with ``model``'s weights.
        precision: ``bf16`` / ``fp16``: the forward and losses under autocast, as ``knet train --amp``
            (bf16 on CPUs with AMX or AVX512-BF16; fp16 with a gradient scaler on CUDA is not timed here).
        cpu_winograd: as the trainer's option of that name: on the CPU in fp32 the wide 3x3
            convolutions train as Winograd F(4x4, 3x3); False times the direct ones.

    Returns:
        a :class:`TrainBenchmarkResult`; peak memory as :func:`benchmark`'s (CUDA: the peak
        allocation over the timed steps; CPU: the process's peak resident memory).
    """
    import torch
    from torch import nn

    from ..config import low_memory_config
    from ..models.segmentor import build_model
    from ..tasks import get_task
    from ..utils.device import resolve_device
    from ..utils.float_modes import flush_denormals
    from .distributed import check_amp
    from .optim import backward_step, build_optimizer
    from .training import _LossForward, finish_cpu_training, prepare_cpu_training

    if not isinstance(model, nn.Module):
        raise KnetError("benchmark_train times a PyTorch model's training step; an ONNX Runtime session cannot train")
    width, height = _check_values(model, size, batch_size, threads, iters, warmup)
    dev = resolve_device(device)
    amp_dtype = check_amp(precision, dev)
    if amp_dtype == torch.float16:
        raise KnetError("benchmark_train times bf16 or fp32 steps; fp16 training needs a gradient scaler: "
                        "time it with knet train --amp fp16")
    config = model.config
    task = get_task(config.task)
    if low_memory:
        weights = model.state_dict()
        model = build_model(low_memory_config(config))
        model.load_state_dict(weights)
    model = model.to(dev).train()
    cpu_training = prepare_cpu_training(model, dev, winograd=cpu_winograd, amp_dtype=amp_dtype)  # as knet train
    optimizer = build_optimizer(model, config.train)
    params = [p for p in model.parameters() if p.requires_grad]
    net = _LossForward(model, task)
    batch = synthetic_train_batch(config, task, batch_size, height, width)

    def step() -> None:
        with flush_denormals(dev.type == "cpu"):  # as the trainer's steps
            images, targets = task.batch_inputs(batch, config, dev)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = net(images, targets)
            backward_step(sum(losses.values()), optimizer, params, config.train.clip_grad_norm)

    try:
        step_ms, total = _timed(step, dev, warmup, iters)
    finally:
        finish_cpu_training(model, cpu_training)
    return TrainBenchmarkResult(
        model=name or getattr(config, "name", type(model).__name__),
        device=str(dev),
        threads=torch.get_num_threads(),
        batch_size=batch_size,
        size=width if width == height else [width, height],
        iters=iters,
        images_per_s=round(batch_size * iters / total, 3),
        step_ms=_quantiles(step_ms),
        peak_memory_mb=round(_peak_memory_mb(dev), 1),
        precision=precision,
    )


__all__ = ["BenchmarkResult", "INFERENCE_DEFAULTS", "TRAIN_DEFAULTS", "TrainBenchmarkResult", "benchmark",
           "benchmark_train", "count_macs", "default_size", "synthetic_train_batch"]

"""``knet benchmark``: inference speed, latency, peak memory and multiply-accumulates of a model.

It times the model forward of the predict path (``model.inference`` in whole or slide mode on a
normalised batch of ``width x height`` images) after warm-up, one synchronised call per iteration,
and counts the multiply-accumulates of one forward with :class:`torch.utils.flop_counter.FlopCounterMode`
(MACs = FLOPs / 2; convolutions and matrix products, which are all but a sliver of the work).

    knet benchmark --model knet-r50-fcn --size 512 --iters 20 --json
    knet benchmark --onnx knet-r50-fcn.onnx --size 512 --threads 2    # the exported file, ONNX Runtime

With ``--onnx`` the timed call is the ONNX Runtime session of a file written by ``knet export``
(through :class:`knet.inference.onnx_runner.OnnxRunner`, ``--threads`` its intra-op threads); its
multiply-accumulates are not counted (``gmacs`` is null).

``--json`` prints one object on stdout::

    {"model", "device", "threads", "batch_size", "size", "images_per_s",
     "latency_ms": {"p50", "p90", "p99"}, "peak_memory_mb", "gmacs"}
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import KnetError
from . import options


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

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        return {key: data[key] for key in (
            "model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s",
            "latency_ms", "peak_memory_mb", "gmacs")}

    def summary(self) -> str:
        """Human-readable lines, as ``knet benchmark`` prints them without ``--json``."""
        lat = self.latency_ms
        return "\n".join([
            f"model           {self.model} ({self.mode}, {_size_text(self.size)}, batch {self.batch_size})",
            f"device          {self.device} ({self.threads} thread{'s' if self.threads != 1 else ''})",
            f"throughput      {self.images_per_s:.2f} images/s over {self.iters} iterations",
            f"latency (batch) p50 {lat['p50']:.1f} ms   p90 {lat['p90']:.1f} ms   p99 {lat['p99']:.1f} ms",
            f"peak memory     {self.peak_memory_mb:.1f} MB",
            (f"compute         {self.gmacs:.2f} GMACs per forward of the batch" if self.gmacs is not None
             else "compute         not counted (ONNX Runtime)"),
        ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    options.add_weights(parser, required=False, onnx=True)
    parser.add_argument("--size", type=options.size_pair, default=None, metavar="N|W,H",
                        help="input size in pixels (default: the preset's training crop, 512 for ADE20K; "
                             "panoptic/instance: the test scale padded to 32, 1344,800)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole",
                        help="whole-image or sliding-window forward (default whole)")
    options.add_device(parser)
    options.add_threads(parser)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up iterations (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _peak_host_memory_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


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


def _size_text(size: Any) -> str:
    width, height = (size, size) if isinstance(size, int) else size
    return f"{width}x{height}"


def default_size(config: Any) -> Tuple[int, int]:
    """(width, height) timed when ``--size`` is left out: a semantic preset's training crop, or a
    panoptic/instance preset's test scale padded to its size divisor (COCO: 1344 x 800)."""
    crop = getattr(config.data, "crop_size", None)
    if crop is not None:
        return tuple(crop)
    divisor = int(getattr(config.data, "size_divisor", 1))
    return tuple(-(-int(side) // divisor) * divisor for side in config.data.test_scale)


def benchmark(model: Any, size: Any = None, batch_size: int = 1, device: str = "auto",
              threads: Optional[int] = None, iters: int = 20, warmup: int = 3, mode: str = "whole",
              name: Optional[str] = None) -> BenchmarkResult:
    """Time ``model.inference`` on random normalised ``(batch_size, 3, height, width)`` inputs.

    Args:
        model: a :class:`knet.KNet` or a panoptic/instance model (anything with
            ``inference(x, mode=...)``), moved to ``device`` and put in eval mode; or a model runner
            (an :class:`~knet.inference.onnx_runner.OnnxRunner`: called as it is, on its own device
            and threads; its MACs are not counted).
        size: N (N x N), (width, height), or None for :func:`default_size` of the model's config.
        device: ``auto`` picks CUDA, then MPS, then the CPU.
        threads: ``torch.set_num_threads`` when given.
        iters, warmup: timed and untimed iterations.

    Returns:
        a :class:`BenchmarkResult`. Peak memory is the accelerator's peak allocation on CUDA
        (and MPS), the process's peak resident memory on the CPU.
    """
    import torch

    from ..utils.device import resolve_device

    from torch import nn

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
    is_torch = isinstance(model, nn.Module)
    if is_torch:
        dev = resolve_device(device)
        model = model.to(dev).eval()
    else:
        dev = resolve_device(model.device)  # a runner names its device ("cpu")
    x = torch.randn(batch_size, 3, height, width, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()

    def forward() -> Any:
        return model.inference(x, mode=mode) if is_torch else model(x, mode)

    with torch.inference_mode():
        macs = count_macs(forward) if is_torch else None
        for _ in range(warmup):
            forward()
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        total_start = time.perf_counter()
        for _ in range(iters):
            start = time.perf_counter()
            forward()
            sync()
            times.append(time.perf_counter() - start)
        total = time.perf_counter() - total_start
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    elif dev.type == "mps":
        peak = torch.mps.driver_allocated_memory() / 2**20
    else:
        peak = _peak_host_memory_mb()
    latencies = [t * 1000.0 for t in times]
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
        latency_ms={q: round(_percentile(latencies, float(q[1:])), 3) for q in ("p50", "p90", "p99")},
        peak_memory_mb=round(peak, 1),
        gmacs=round(macs / 1e9, 3) if macs is not None else None,
    )


def _load(args: argparse.Namespace) -> Any:
    if args.onnx:
        return options.onnx_runner(args)
    if args.checkpoint:
        from ..checkpoint import load_model

        return load_model(args.checkpoint, args.model)
    if not args.model:
        raise KnetError("give --model NAME (see `knet models`), or a --checkpoint that carries its config")
    from ..models.segmentor import build_model

    return build_model(args.model)


def run(args: argparse.Namespace) -> int:
    model = _load(args)
    size = args.size if args.size is None or args.size[0] != args.size[1] else args.size[0]
    result = benchmark(model, size=size, batch_size=args.batch_size, device=args.device,
                       threads=args.threads, iters=args.iters, warmup=args.warmup, mode=args.mode,
                       name=args.model or model.config.name)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.summary())
    return 0

"""Where the time of knet's panoptic/instance forward and training step goes, beside the arithmetic.

    python benchmarks/time_budget.py --save benchmarks/results/time_budget.json
    python benchmarks/time_budget.py --models panoptic --weights panoptic.det.pth --no-train

For each model, at the 1x recipe's sizes (a 1088x800 input: what a 640x480 photo becomes):

- floating-point operations (torch's ``FlopCounterMode``; multiply-add = 2): the reference's
  arithmetic (the same work with every convolution direct) and knet's (its wide 3x3
  convolutions as Winograd F(4x4, 3x3): 36 products per 4x4 output block instead of 144, plus
  the output transform's; the input transform is additions only and not counted), activations
  that knet recomputes in the backward pass counted on both sides;
- this machine's fp32 matrix-product rate just before each row: the median of ``torch.mm`` on
  2048x2048 matrices;
- knet's forward (the test pipeline's runner, batch 1) and training step (``benchmark_train``:
  batch 2, AdamW, gradient clipping) under torch's profiler: the self time of the operators that
  are matrix products (direct convolutions and their backward, ``bmm``, ``mm``, ``addmm``)
  against the wall time, the rest being everything else (the Winograd transforms, normalisation,
  resizes, elementwise operators, Python).

From these: the rate knet's matrix products run at, and two floors at the measured matrix-product
rate: knet's arithmetic alone, and the reference's. Weights: ``--weights`` files in the models'
order (``det_bench.py export``'s realistic ones), else knet's initialisation; both run with
flush-to-zero on, as knet's forward and training do, so denormal floats do not slow them.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from machine import machine_info, save_results  # benchmarks/machine.py, beside this script

PRESETS = {"panoptic": "knet-r50-fpn-panoptic", "instance": "knet-r50-fpn-instance"}
INPUT_SIZE = (1088, 800)  # (width, height): the padded 1x-recipe input of a 640x480 photo
TRAIN_BATCH = 2
# Operators whose time is matrix products (oneDNN's convolutions are matrix kernels too).
MATRIX_OPERATORS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::bmm", "aten::mm",
                    "aten::addmm", "aten::addmm_", "aten::baddbmm")
TOP_OTHERS = 6


def matrix_product_rate(repeats: int = 10) -> float:
    """This machine's fp32 ``torch.mm`` rate on 2048x2048 matrices on torch's threads, GFLOP/s (median)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    out = torch.empty(2048, 2048)
    for _ in range(3):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * 2048 ** 3 / statistics.median(times) / 1e9


def winograd_flops(shape: Tuple[int, int, int, int], out_channels: int, dilation: int = 1) -> int:
    """FLOPs of the products of ``knet::winograd_convolution`` on an (N, C, H, W) input: the 36
    (tiles, C) @ (C, K) products and the output transform's (16, 36) @ (36, tiles K) one."""
    from knet.models.winograd import INPUT_TILE, OUTPUT_TILE

    n, c, h, w = shape
    step = OUTPUT_TILE * dilation
    tiles = n * math.ceil(h / step) * dilation * math.ceil(w / step) * dilation
    return 2 * tiles * out_channels * INPUT_TILE ** 2 * (c + OUTPUT_TILE ** 2)


def counted_flops(call: Callable[[], Any], model: Any = None) -> float:
    """FLOPs of ``call()`` as torch counts them, plus those of the Winograd operators of
    ``model``'s inference copy, which the counter cannot see into (training runs Winograd as
    torch operators, which it counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    from knet.models.winograd import WinogradConv2d

    inside = [0]

    def count(module: Any, inputs: Tuple[Any, ...], output: Any) -> None:
        if module.runs_winograd(inputs[0]):  # else the counter saw its direct convolution
            inside[0] += winograd_flops(tuple(inputs[0].shape), module.out_channels, module.dilation[0])

    hooks = [m.register_forward_hook(count) for m in (model.modules() if model is not None else [])
             if isinstance(m, WinogradConv2d)]
    try:
        with FlopCounterMode(display=False) as counter:
            call()
    finally:
        for hook in hooks:
            hook.remove()
    return float(counter.get_total_flops() + inside[0])


def profiled_split(call: Callable[[], Any]) -> Dict[str, Any]:
    """Wall time of ``call()`` under the profiler, the matrix operators' self time, and the other
    operators with the most self time."""
    from torch.profiler import profile

    with profile() as prof:
        start = time.perf_counter()
        call()
        wall = time.perf_counter() - start
    matrix = 0.0
    others: Dict[str, float] = {}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in MATRIX_OPERATORS:
            matrix += seconds
        elif seconds > 0:
            others[event.key] = others.get(event.key, 0.0) + seconds
    top = sorted(others.items(), key=lambda item: -item[1])[:TOP_OTHERS]
    return {"wall_s": wall, "matrix_s": matrix, "top_others_s": {name: round(s, 4) for name, s in top}}


def forward_row(model: Any) -> Dict[str, Any]:
    import torch

    from knet.inference.pipeline import TorchRunner
    from knet.models.fuse import inference_copy

    runner = TorchRunner(model)
    width, height = INPUT_SIZE
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    runner(x)  # warm-up
    knet = counted_flops(lambda: runner(x), runner.model)
    direct = inference_copy(model, winograd=False)
    with torch.no_grad():
        reference = counted_flops(lambda: direct.inference(x))
    split = profiled_split(lambda: runner(x))
    return {"work": f"forward, batch 1, {width}x{height}", **split, "reference_gflop": reference / 1e9,
            "knet_gflop": knet / 1e9}


def training_row(model: Any) -> Dict[str, Any]:
    import copy

    from knet.engine.benchmark import benchmark_train

    width, height = INPUT_SIZE
    size = (width, height)
    # Counted on one step of a fresh copy each (a step trains its model in place), then timed on another.
    reference, knet = (counted_flops(lambda: benchmark_train(copy.deepcopy(model), size, TRAIN_BATCH, "cpu", iters=1,
                                                             warmup=0, cpu_winograd=winograd))
                       for winograd in (False, True))
    steps = 3  # one warm-up step (AdamW's state) and two timed ones, all profiled
    trained = copy.deepcopy(model)
    split = profiled_split(lambda: benchmark_train(trained, size, TRAIN_BATCH, "cpu", iters=steps - 1, warmup=1))
    per_step = {"wall_s": split["wall_s"] / steps, "matrix_s": split["matrix_s"] / steps,
                "top_others_s": {name: round(s / steps, 4) for name, s in split["top_others_s"].items()}}
    return {"work": f"training step, batch {TRAIN_BATCH}, {width}x{height}", **per_step,
            "reference_gflop": reference / 1e9, "knet_gflop": knet / 1e9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--weights", nargs="+", type=Path, help="checkpoint files, one per model, in order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-train", dest="train", action="store_false", help="the forward only")
    parser.add_argument("--save", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args()
    if args.weights and len(args.weights) != len(args.models):
        parser.error(f"--weights: {len(args.weights)} files for {len(args.models)} models")

    import torch

    from knet import build_model, load
    from knet.utils.memory import apply_cli_allocator

    torch.set_num_threads(args.threads)
    apply_cli_allocator()  # as `knet predict` and `knet train` run
    rows: List[Dict[str, Any]] = []
    for index, short in enumerate(args.models):
        preset = PRESETS[short]
        torch.manual_seed(0)
        model = load(args.weights[index], preset, device="cpu") if args.weights else build_model(preset)
        for measure in [forward_row] + ([training_row] if args.train else []):
            # The machine's speed drifts: its matrix-product rate is taken just before each row.
            rate = matrix_product_rate()
            row = measure(model.eval() if measure is forward_row else model.train())
            row.update(model=preset, matrix_product_gflops=rate, matrix_gflops=row["knet_gflop"] / row["matrix_s"],
                       knet_floor_s=row["knet_gflop"] / rate, reference_floor_s=row["reference_gflop"] / rate)
            rows.append(row)
            print(f"{preset} {row['work']}: {row['wall_s']:.2f} s, matrix products {row['matrix_s']:.2f} s "
                  f"({row['matrix_gflops']:.0f} GFLOP/s; torch.mm {rate:.0f}), arithmetic: reference "
                  f"{row['reference_gflop']:.0f} GFLOP, knet {row['knet_gflop']:.0f} GFLOP; the rest: "
                  f"{row['top_others_s']}", flush=True)
    if args.save:
        record = {"benchmark": "time_budget", "machine": machine_info(args.threads),
                  "settings": {"input_size": list(INPUT_SIZE), "train_batch": TRAIN_BATCH,
                               "weights": ", ".join(path.name for path in args.weights) if args.weights
                               else "knet's initialisation"},
                  "rows": rows}
        save_results(args.save, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

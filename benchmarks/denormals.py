"""knet's predict path with and without flush-to-zero, on weights like a trained model's.

    python benchmarks/denormals.py --save benchmarks/results/denormals.json
    python benchmarks/denormals.py --models knet-swin-t-upernet --weights swin-t.pth   # the reference's init

For each model (its weights: ``--weights`` files in the models' order, e.g. written by
``../shared/reference/ref_bench.py export``, or knet's random initialisation; then made realistic
by ``realistic.make_realistic``), the
inference copy's forward at ``--size`` (batch 1), alternating in rounds between
``flush_denormals=True`` (the default) and ``False``, and the two outputs compared.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from machine import machine_info, save_results  # benchmarks/machine.py, beside this script
from realistic import make_realistic


def measure(preset: str, weights: Optional[Path], size: int, rounds: int, repeats: int) -> Dict[str, object]:
    import torch

    from knet import build_model, load
    from knet.inference.pipeline import TorchRunner

    torch.manual_seed(0)
    model = make_realistic(load(weights, preset) if weights else build_model(preset).eval())
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    runners = {"flush": TorchRunner(model, flush_denormals=True), "plain": TorchRunner(model, flush_denormals=False)}
    outputs = {name: runner(x) for name, runner in runners.items()}  # warm-up
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            start = time.perf_counter()
            for _ in range(repeats):
                runner(x)
            times[name].append((time.perf_counter() - start) / repeats)
    difference = float((outputs["flush"] - outputs["plain"]).abs().max() / outputs["plain"].abs().max())
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"model": preset, "weights": "file" if weights else "knet init", "size": size, "per_round": times,
            "median": median, "speedup": round(median["plain"] / median["flush"], 3),
            "output_difference_x_max": difference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["knet-r50-fcn", "knet-swin-t-upernet"])
    parser.add_argument("--weights", nargs="+", type=Path, default=None, metavar="PTH",
                        help="one weights file per model (default: knet's random initialisation)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, metavar="JSON")
    args = parser.parse_args()
    if args.weights and len(args.weights) != len(args.models):
        parser.error(f"--weights: {len(args.weights)} files for {len(args.models)} models")

    import torch

    from knet.utils.memory import apply_cli_allocator

    torch.set_num_threads(args.threads)
    apply_cli_allocator()  # as `knet predict` runs
    rows = []
    for index, preset in enumerate(args.models):
        row = measure(preset, args.weights[index] if args.weights else None, args.size, args.rounds, args.repeats)
        rows.append(row)
        print(f"{preset}: flush {row['median']['flush']:.2f} s, plain {row['median']['plain']:.2f} s "
              f"({row['speedup']:.2f}x), outputs differ by {row['output_difference_x_max']:.1e} x max", flush=True)
    if args.save:
        record = {"benchmark": "denormals", "machine": machine_info(args.threads),
                  "settings": {"size": args.size, "rounds": args.rounds, "repeats": args.repeats}, "rows": rows}
        save_results(args.save, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

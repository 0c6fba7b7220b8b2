"""knet's ONNX Runtime backend (fp32 and int8) against the reference implementation, in one run.

    python benchmarks/onnx_vs_reference.py [--models fcn swin-t] [--size 512] [--rounds 2]

For each model: the reference (mmsegmentation 1.2.2, ``../shared/reference``, in the venv its
``setup.sh`` makes, default ``../.refenv``) writes its randomly initialised weights; knet loads them,
exports them with ``knet.export.export_onnx`` (parity-checked) and quantizes the file to int8
(``knet.export.quantize.quantize_int8``, calibrated on a few generated scenes). Then, alternating
in rounds, the reference's eval forward (``ref_bench.py infer``, batch 1, its own process), the fp32
file and the int8 file in ONNX Runtime are timed on ``torch.manual_seed(0)`` random images of the
same size, on the same number of threads, with knet's eager torch forward beside them; the table
gives medians and the ratios to the reference,
and how far the fp32 file's logits are from the reference's on the same input. The CPU model and
whether it has VNNI (int8 dot products) are printed with it.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
PRESETS = {"fcn": "knet-r50-fcn", "upernet": "knet-r50-upernet", "swin-t": "knet-swin-t-upernet"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def reference(python: Path, *args: str, save: Path = None) -> dict:
    env = dict(os.environ, **({"REF_BENCH_SAVE": str(save)} if save else {}))
    done = subprocess.run([str(python), str(REFERENCE / "ref_bench.py"), *args], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"reference {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return {k: float(v) for k, v in (line.split() for line in done.stdout.splitlines() if len(line.split()) == 2
                                     and line.split()[0] in ("best_s", "median_s", "peak_rss_mib"))}


def time_session(runner, x: np.ndarray, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(x)
        times.append(time.perf_counter() - start)
    return times


class EagerRunner:
    """knet's torch model with the ``run`` of an OnnxRunner: numpy (1, 3, H, W) -> logits."""

    def __init__(self, model) -> None:
        self.model = model

    def run(self, x: np.ndarray):
        import torch

        with torch.inference_mode():
            return [self.model.inference(torch.from_numpy(x)).numpy()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["fcn", "swin-t"], choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per round and implementation")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reference-python", type=Path, default=REPO.parent / ".refenv" / "bin" / "python")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    if not args.reference_python.exists():
        sys.exit(f"no reference venv at {args.reference_python}: run {REFERENCE / 'setup.sh'} first")

    import torch

    from knet.checkpoint import load_model
    from knet.data.synthetic import make_scene
    from knet.export.onnx import export_onnx
    from knet.export.quantize import quantize_int8
    from knet.inference.onnx_runner import OnnxRunner

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="knet-onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    calibration = [make_scene(rng, size=(args.size, args.size))[0] for _ in range(4)]
    rows = []
    for short in args.models:
        preset = PRESETS[short]
        weights, fp32, int8 = work / f"{short}.ref.pth", work / f"{preset}.onnx", work / f"{preset}-int8.onnx"
        if not weights.exists():
            reference(args.reference_python, "export", short, str(weights))
        model = load_model(weights, preset).eval()
        if not fp32.exists():
            result = export_onnx(model, fp32)
            print(f"{preset}: exported in {result.seconds:.0f} s; " + "; ".join(p.summary() for p in result.parity),
                  flush=True)
        if not int8.exists():
            print(f"{preset}: {quantize_int8(fp32, int8, calibration).summary()}", flush=True)
        saved = work / f"{short}.ref.npz"
        runners = {"fp32": OnnxRunner(fp32, device="cpu", threads=args.threads),
                   "int8": OnnxRunner(int8, device="cpu", threads=args.threads)}
        x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).numpy()
        for runner in runners.values():
            runner.run(x)  # warm-up
        eager = EagerRunner(model)
        eager.run(x)
        times = {"reference": [], "eager": [], "fp32": [], "int8": []}
        for round_index in range(args.rounds):
            ref = reference(args.reference_python, "infer", short, str(args.size), str(args.repeats),
                            save=saved if round_index == 0 else None)
            times["reference"].append(ref["median_s"])
            times["eager"].append(statistics.median(time_session(eager, x, args.repeats)))
            for name, runner in runners.items():
                times[name].append(statistics.median(time_session(runner, x, args.repeats)))
        ref_out = np.load(saved)
        logits = runners["fp32"].run(ref_out["x"])[0]
        relative = float(np.abs(logits - ref_out["logits"]).max() / np.abs(ref_out["logits"]).max())
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows.append((preset, medians, relative))
        print(f"{preset}: " + ", ".join(f"{k} {v:.3f} s" for k, v in medians.items()), flush=True)

    print(f"\nCPU: {cpu_model()} ({'with' if has_vnni() else 'without'} VNNI), {args.threads} threads, "
          f"fp32 input {args.size}x{args.size}, batch 1; medians over {args.rounds} alternating rounds of "
          f"{args.repeats}\n")
    print("| model | reference (mmseg 1.2.2) | knet eager (torch) | ratio | knet ONNX Runtime fp32 | ratio "
          "| knet ONNX Runtime int8 | ratio | fp32 logits vs reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, m, relative in rows:
        print(f"| {preset} | {m['reference']:.2f} s | {m['eager']:.2f} s | {m['reference'] / m['eager']:.2f}x "
              f"| {m['fp32']:.2f} s | {m['reference'] / m['fp32']:.2f}x "
              f"| {m['int8']:.2f} s | {m['reference'] / m['int8']:.2f}x | {relative:.1e} x max |")


if __name__ == "__main__":
    main()

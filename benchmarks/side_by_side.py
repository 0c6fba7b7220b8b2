"""knet against the reference implementations, side by side in one run: mmsegmentation 1.2.2 for
the semantic models, the official K-Net code (mmdetection 2.28.2) for the panoptic and instance ones.

    python benchmarks/side_by_side.py --save --low-memory     # every row; benchmarks/results/<cpu>.json
    python benchmarks/side_by_side.py --models fcn --onnx --compile
    python benchmarks/side_by_side.py --tiny                  # the -tiny presets, knet's columns only

For each model the reference (``../shared/reference``, in the venv its ``setup.sh`` makes, default
``../.refenv``) writes its initialisation made like a trained network's (``--weights realistic``, the
default: ``realistic.make_realistic``'s BatchNorm/LayerNorm statistics and affines, nonzero biases,
Swin's position biases; ``--weights init``: the bare initialisation, on which no denormal floats
arise) and both sides load that file (``reference_bench.py``), so both run the same network.
Then, alternating in rounds on ``torch.manual_seed(0)`` random inputs of the same size and on the
same threads:

- inference, batch 1: the reference's eval forward (``ref_bench.py infer``, its own process) and
  knet's default path (the test pipeline's runner: an inference copy with BatchNorms folded);
  with ``--compile`` knet's ``torch.compile`` path, with ``--onnx`` the exported file in ONNX
  Runtime, fp32 and int8. knet's logits are compared with the reference's on ``--inputs`` seeded
  inputs (the first is the timed one; ``reference_logits.py``), beside the reference's own
  difference between one thread and the run's threads (and with ``--compile``, between its
  forward through ``torch.compile`` and its eager one): how closely float32 pins the network's
  output. (Swin-T UPerNet with these random weights moves by ~1e-4 x max when any one tensor
  early in its kernel-update head moves by one unit in the last place.)
- training, batch 2: the reference's step (``ref_bench.py train``: forward, losses, backward,
  AdamW with gradient clipping, dropout and drop-path off) and ``knet benchmark --train`` (the
  same step, its own process), with their peak resident memory; with ``--low-memory`` also
  ``knet benchmark --train --low-memory``. knet's losses on the reference's first batch are
  compared with the reference's on it (``reference_losses.py``), with every dropout off in both:
  ``ref_bench.py``'s own saved losses leave the heads' ``nn.Dropout2d`` on, so they are random.
- panoptic and instance (``../shared/reference/det``, its venv default ``../.refdet``): see
  :func:`measure_det`: end to end on one photo, and a training step at the 1x recipe's batch shape.
- on a CPU with native bf16 (AMX, AVX512-BF16) a ``knet bf16`` inference column (``--precision
  bf16``) beside knet's fp32 one, and ``knet --amp bf16`` training columns (``knet benchmark
  --train --precision bf16``, with and without ``--low-memory``); ``--no-bf16`` leaves them out.

Where the reference is not installed (CI) or for ``--tiny`` (no reference config has those
widths), it says so and prints knet's columns only. The CPU model and thread count are printed
with the tables; times are medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from machine import cpu_file_name, cpu_model, machine_info, save_results  # benchmarks/machine.py, beside this
from realistic import make_realistic

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
RESULTS = REPO / "benchmarks" / "results"
PRESETS = {"fcn": "knet-r50-fcn", "pspnet": "knet-r50-pspnet", "deeplabv3": "knet-r50-deeplabv3",
           "upernet": "knet-r50-upernet", "swin-t": "knet-swin-t-upernet",
           "panoptic": "knet-r50-fpn-panoptic", "instance": "knet-r50-fpn-instance"}
DET = ("panoptic", "instance")  # against the official code (../shared/reference/det), end to end
DET_REFERENCE = REFERENCE / "det" / "det_bench.py"
DET_PHOTO = (640, 480)  # det_bench.py infer's default photo; the 1x recipe's batch shape for training
DET_TRAIN_SIZE = (1088, 800)


_LAUNCHER_CODE = """
import json, subprocess, sys
for line in sys.stdin:
    job = json.loads(line)
    done = subprocess.run(job["argv"], env=job["env"], capture_output=True, text=True, check=False)
    print(json.dumps({"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}), flush=True)
"""


class Launcher:
    """Runs the timed commands from a small process started before this one loads any model.

    Linux carries a process's peak-RSS high-water mark into a forked child and across exec, so a
    command started from this process (which by then holds models) would report at least this
    process's size as its own peak (``ru_maxrss``, which ``ref_bench.py`` prints). Started from
    this launcher, each reports its own."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _LAUNCHER_CODE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def run(self, argv: List[str], env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        self.process.stdin.write(json.dumps({"argv": argv, "env": dict(env or os.environ)}) + "\n")
        self.process.stdin.flush()
        done = json.loads(self.process.stdout.readline())
        return subprocess.CompletedProcess(argv, done["returncode"], done["stdout"], done["stderr"])


LAUNCHER: Optional[Launcher] = None  # started first thing in main()


def run_reference(python: Path, *args: str, weights: Optional[Path] = None,
                  save: Optional[Path] = None) -> Dict[str, float]:
    """``ref_bench.py ARGS`` in the reference's venv on ``weights`` (``reference_bench.py``): its
    ``best_s``, ``median_s``, ``peak_rss_mib``."""
    env = dict(os.environ, **({"REF_BENCH_SAVE": str(save)} if save else {}))
    done = LAUNCHER.run([str(python), str(REPO / "benchmarks" / "reference_bench.py"),
                         *(["--weights", str(weights)] if weights else []), *args], env=env)
    if done.returncode != 0:
        sys.exit(f"reference {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    values = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("best_s", "median_s", "peak_rss_mib"):
            values[parts[0]] = float(parts[1])
    return values


def training_kinds(args: argparse.Namespace) -> Dict[str, Tuple[bool, str]]:
    """knet's training columns: name -> (``--low-memory``, ``--precision``)."""
    kinds = {"knet": (False, "fp32")}
    if args.low_memory:
        kinds["knet --low-memory"] = (True, "fp32")
    if args.bf16:
        kinds["knet --amp bf16"] = (False, "bf16")
        if args.low_memory:
            kinds["knet --amp bf16 --low-memory"] = (True, "bf16")
    return kinds


def time_training(preset: str, weights: Optional[Path], size, args: argparse.Namespace,
                  reference_step: Optional[Callable[[int], Dict[str, float]]]) -> Tuple[Dict, Dict]:
    """The training steps' medians per round and the peak memory of the reference (``reference_step(round)``,
    None where it is not run) and of each of knet's :func:`training_kinds`, alternating in rounds:
    (name -> list of seconds, name -> peak MiB)."""
    kinds = training_kinds(args)
    steps: Dict[str, List[float]] = {k: [] for k in (["reference"] if reference_step else []) + list(kinds)}
    memory: Dict[str, float] = {}

    def record(name: str, measured: Dict[str, float]) -> None:
        steps[name].append(measured["median_s"])
        memory[name] = max(memory.get(name, 0.0), measured["peak_rss_mib"])

    for round_index in range(args.rounds):
        if reference_step is not None:
            record("reference", reference_step(round_index))
        for kind, (low_memory, precision) in kinds.items():
            record(kind, run_knet_train(preset, weights, 2, size, args.train_steps, args.threads,
                                        low_memory=low_memory, precision=precision))
    return steps, memory


def run_knet_train(preset: str, weights: Optional[Path], batch: int, size, steps: int,
                   threads: int, low_memory: bool = False, precision: str = "fp32") -> Dict[str, float]:
    """``knet benchmark --train --json`` in its own process (its peak memory is the step's)."""
    command = [sys.executable, "-m", "knet", "benchmark", "--train", "--json", "--model", preset,
               "--batch-size", str(batch), "--size", str(size), "--iters", str(steps), "--warmup", "1",
               "--threads", str(threads), "--device", "cpu", "--precision", precision]
    command += ["--low-memory"] if low_memory else []
    if weights is not None:
        command += ["--checkpoint", str(weights)]
    done = LAUNCHER.run(command)
    if done.returncode != 0:
        sys.exit(f"knet benchmark --train failed:\n{done.stderr[-2000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return {"median_s": data["step_ms"]["p50"] / 1000, "peak_rss_mib": data["peak_memory_mb"]}


def timed(call, repeats: int) -> float:
    """The median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_losses(python: Path, short: str, batch: Path, weights: Path) -> Dict[str, float]:
    """The reference's losses on a saved training batch, every dropout off
    (``reference_losses.py``, in the reference's venv)."""
    done = LAUNCHER.run([str(python), str(REPO / "benchmarks" / "reference_losses.py"), short, str(batch),
                         str(weights)])
    if done.returncode != 0:
        sys.exit(f"reference losses failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_logits(python: Path, short: str, size: int, inputs: int, threads: int, out: Path, weights: Path,
                     compile: bool = False) -> Dict[str, np.ndarray]:
    """The reference's logits on ``inputs`` seeded inputs, on ``threads`` threads and on one, and
    with ``compile`` through ``torch.compile`` (``reference_logits.py``, in the reference's venv)."""
    done = LAUNCHER.run([str(python), str(REPO / "benchmarks" / "reference_logits.py"), short, str(size), str(inputs),
                         str(out), "--weights", str(weights)] + (["--compile"] if compile else []),
                        env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if done.returncode != 0:
        sys.exit(f"reference logits failed:\n{done.stderr[-2000:]}")
    return dict(np.load(out))


def logit_differences(mine, theirs: np.ndarray) -> List[float]:
    """max|mine - theirs| / max|theirs| of each input: ``mine`` and ``theirs`` (inputs, C, H, W)
    or a sequence of (1, C, H, W)."""
    return [float(np.abs(np.asarray(a).reshape(b.shape) - b).max() / np.abs(b).max()) for a, b in zip(mine, theirs)]


def knet_losses(model, saved: Dict[str, np.ndarray]) -> Dict[str, float]:
    """knet's losses on the reference's first training batch, every dropout (``nn.Dropout2d`` of
    the heads included) and drop-path off."""
    import torch

    from knet.losses.semantic import semantic_losses
    from no_dropout import dropout_off  # beside this file; reference_losses.py uses it too

    model.train()
    dropout_off(model)
    with torch.no_grad():
        output = model.outputs(torch.from_numpy(saved["x"]), with_aux=True)
        losses = semantic_losses(output, torch.from_numpy(saved["labels"]).long(), model.config.data.ignore_index,
                                 model.config.auxiliary_head.loss_weight, model.config.align_corners)
    model.eval()
    values = {name: float(value) for name, value in losses.items()}
    values["loss"] = sum(values.values())
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["fcn", "upernet", "swin-t", "panoptic", "instance"],
                        choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=None, help="input side (default 512; --tiny: 64)")
    parser.add_argument("--tiny", action="store_true", help="the -tiny presets (no reference): a quick check")
    parser.add_argument("--no-train", dest="train", action="store_false", help="inference only")
    parser.add_argument("--no-inference", dest="inference", action="store_false", help="training only")
    parser.add_argument("--low-memory", action="store_true", help="add a training column for knet's --low-memory")
    parser.add_argument("--compile", action="store_true", help="add knet's torch.compile column")
    parser.add_argument("--onnx", action="store_true", help="add ONNX Runtime fp32 and int8 columns (exports)")
    parser.add_argument("--weights", choices=("realistic", "init"), default="realistic",
                        help="the reference's initialisation made like a trained network's (default) or as it is")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per round and implementation")
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps per round")
    parser.add_argument("--inputs", type=int, default=4,
                        help="seeded inputs on which knet's logits are compared with the reference's")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="leave out knet's --precision bf16 column (only run where the CPU has AMX or AVX512-BF16)")
    parser.add_argument("--reference-python", type=Path, default=REPO.parent / ".refenv" / "bin" / "python")
    parser.add_argument("--det-reference-python", type=Path, default=REPO.parent / ".refdet" / "bin" / "python",
                        help="the venv of ../shared/reference/det/setup.sh (the official panoptic/instance code)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--save", type=Path, nargs="?", const=RESULTS / f"{cpu_file_name()}.json", default=None,
                        metavar="JSON", help="also write the results as JSON (default file: "
                                             "benchmarks/results/<this CPU>.json)")
    args = parser.parse_args()
    if args.inputs < 1:
        parser.error(f"--inputs must be at least 1, got {args.inputs}")
    size = args.size or (64 if args.tiny else 512)
    global LAUNCHER
    LAUNCHER = Launcher()

    import torch

    from knet import build_model
    from knet.checkpoint import load_model
    from knet.inference.pipeline import TorchRunner
    from knet.utils.device import cpu_has_native_bf16
    from knet.utils.memory import apply_cli_allocator

    args.bf16 = args.bf16 and cpu_has_native_bf16()
    torch.set_num_threads(args.threads)
    apply_cli_allocator()  # knet's columns time what `knet predict` / `test` run: the CLI's allocator policy
    reference_python: Optional[Path] = args.reference_python
    if args.tiny:
        print("reference: not run (the -tiny presets have no reference config): knet's columns only")
        reference_python = None
    elif not args.reference_python.exists():
        print(f"reference: not installed ({args.reference_python} is missing; run {REFERENCE / 'setup.sh'}): "
              "knet's columns only")
        reference_python = None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="knet-side-by-side-"))
    work.mkdir(parents=True, exist_ok=True)

    infer_rows: List[Dict] = []
    train_rows: List[Dict] = []
    for short in args.models:
        preset = PRESETS[short] + ("-tiny" if args.tiny else "")
        if short in DET:
            python = None if args.tiny or not args.det_reference_python.exists() else args.det_reference_python
            if python is None and not args.tiny:
                print(f"official {short} code: not installed ({args.det_reference_python} is missing; run "
                      f"{DET_REFERENCE.parent / 'setup.sh'}): knet's columns only")
            infer_row, train_row = measure_det(short, preset, python, work, args)
            infer_rows.extend([infer_row] if infer_row else [])
            train_rows.extend([train_row] if train_row else [])
            continue
        weights: Optional[Path] = None
        if reference_python is not None:
            weights = work / f"{short}.{args.weights}.pth"
            if not weights.exists():
                run_reference(reference_python, "export", short, str(weights),
                              *(["--realistic"] if args.weights == "realistic" else []))
            model = load_model(weights, preset).eval()
        else:
            torch.manual_seed(0)
            model = build_model(preset).eval()
            if args.weights == "realistic":
                make_realistic(model)
        if args.inference:
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            runners = {"knet": TorchRunner(model)}
            if args.bf16:
                runners["knet bf16"] = TorchRunner(model, precision="bf16")
            if args.compile:
                runners["compiled"] = TorchRunner(model, compile=True)
            if args.onnx:
                runners.update(onnx_runners(model, preset, work, size, args.threads))
            for runner in runners.values():
                runner(x)  # warm-up (and the compile)
            times: Dict[str, List[float]] = {name: []
                                             for name in (["reference"] if reference_python else []) + list(runners)}
            for round_index in range(args.rounds):
                if reference_python is not None:
                    times["reference"].append(run_reference(reference_python, "infer", short, str(size),
                                                            str(args.repeats), weights=weights)["median_s"])
                for name, runner in runners.items():
                    times[name].append(timed(lambda: runner(x), args.repeats))
            row = {"model": preset, **{name: statistics.median(v) for name, v in times.items()}}
            row["per_round"] = {name: list(v) for name, v in times.items()}
            if reference_python is not None:
                ref = reference_logits(reference_python, short, size, args.inputs, args.threads,
                                       work / f"{short}.logits.npz", weights, compile=args.compile)
                row["diffs"] = {name: logit_differences([runner(torch.from_numpy(image[None])).numpy()
                                                         for image in ref["x"]], ref["logits"])
                                for name, runner in runners.items() if name in ("knet", "compiled", "onnx fp32")}
                row["diffs"]["reference, 1 thread"] = logit_differences(ref["logits_one_thread"], ref["logits"])
                if args.compile:
                    row["diffs"]["reference compiled"] = logit_differences(ref["logits_compiled"], ref["logits"])
            infer_rows.append(row)
            print(f"inference {preset}: " + ", ".join(f"{k} {v:.3f} s" for k, v in row.items()
                                                       if isinstance(v, float)), flush=True)
            del runners

        if args.train:
            saved_train = work / f"{short}.train.npz"

            def reference_step(round_index: int) -> Dict[str, float]:
                return run_reference(reference_python, "train", short, "2", str(size), str(args.train_steps),
                                     weights=weights, save=saved_train if round_index == 0 else None)

            steps, memory = time_training(preset, weights, size, args,
                                          reference_step if reference_python is not None else None)
            row = {"model": preset, **{k: statistics.median(v) for k, v in steps.items()}, "memory": memory,
                   "per_round": {k: list(v) for k, v in steps.items()}}
            if reference_python is not None:
                ref = np.load(saved_train)
                mine = knet_losses(model, {"x": ref["x"], "labels": ref["labels"]})
                theirs = reference_losses(reference_python, short, saved_train, weights)
                row["loss_diff"] = abs(mine["loss"] - theirs["loss"]) / abs(theirs["loss"])
            train_rows.append(row)
            print(f"training {preset}: " + ", ".join(f"{k} {v:.3f} s" for k, v in row.items()
                                                      if isinstance(v, float) and k != "loss_diff"), flush=True)
        del model

    print_tables(infer_rows, train_rows, args, size, reference_python is not None)
    if args.save:
        write_results(args.save, infer_rows, train_rows, args, size, reference_python is not None)


def smooth_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """``det_bench.py``'s test photo: seeded random colours on a coarse grid, resized bicubically
    (uint8, H x W x 3; the same seed gives the same image on both sides)."""
    import cv2

    rng = np.random.RandomState(seed)
    grid = rng.randint(0, 256, (height // 32 + 1, width // 32 + 1, 3)).astype(np.uint8)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def run_det_reference(python: Path, *args: str) -> Dict[str, float]:
    """``det_bench.py ARGS`` (the official code, its own process): ``median_s``, ``peak_rss_mib``."""
    done = LAUNCHER.run([str(python), str(DET_REFERENCE), *args])
    if done.returncode != 0:
        sys.exit(f"official code {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    words = done.stdout.split()
    values = {words[i]: float(words[i + 1]) for i in range(len(words) - 1) if words[i].startswith(("seconds", "peak"))}
    return {"median_s": values.get("seconds_median", float("nan")), "peak_rss_mib": values.get("peak_rss_MiB", 0.0)}


def measure_det(short: str, preset: str, python: Optional[Path], work: Path,
                args: argparse.Namespace) -> Tuple[Optional[Dict], Optional[Dict]]:
    """A panoptic or instance row against the official code: the weights ``det_bench.py export``
    makes realistic (its own recipe: BatchNorm statistics calibrated and perturbed, every weight
    scaled), loaded by knet; inference end to end on ``det_bench``'s 640x480 photo (the official
    ``inference_detector`` against ``Segmenter``: resize, normalise, pad, the model,
    post-processing); a training step at batch 2 in the 1x recipe's batch shape (each side its own
    synthetic targets, so the losses are not compared)."""
    import torch

    from knet import Segmenter, build_model, load

    weights: Optional[Path] = None
    if python is not None:
        weights = work / f"{short}.det.pth"
        if not weights.exists():
            done = LAUNCHER.run([str(python), str(DET_REFERENCE), "export", short, str(weights)])
            if done.returncode != 0:
                sys.exit(f"official code export failed:\n{done.stderr[-2000:]}")
        model = load(weights, preset, device="cpu")
    else:
        torch.manual_seed(0)
        model = build_model(preset).eval()
    infer_row = train_row = None
    if args.inference:
        photo = smooth_photo(*DET_PHOTO)
        segmenters = {"knet": Segmenter(model, device="cpu")}
        if args.bf16:
            segmenters["knet bf16"] = Segmenter(model, device="cpu", precision="bf16")
        for segmenter in segmenters.values():
            segmenter(photo)  # warm-up
        times: Dict[str, List[float]] = {name: [] for name in (["reference"] if python else []) + list(segmenters)}
        for _ in range(args.rounds):
            if python is not None:
                times["reference"].append(run_det_reference(python, "infer", short, str(weights), str(DET_PHOTO[0]),
                                                            str(DET_PHOTO[1]), str(args.repeats))["median_s"])
            for name, segmenter in segmenters.items():
                times[name].append(timed(lambda: segmenter(photo), args.repeats))
        infer_row = {"model": preset, **{name: statistics.median(v) for name, v in times.items()},
                     "per_round": times, "end_to_end": f"{DET_PHOTO[0]}x{DET_PHOTO[1]} photo"}
        print(f"inference {preset}: " + ", ".join(f"{k} {v:.3f} s" for k, v in infer_row.items()
                                                   if isinstance(v, float)), flush=True)
    if args.train:
        def reference_step(_: int) -> Dict[str, float]:
            return run_det_reference(python, "train", short, str(weights), "2", str(args.train_steps))

        steps, memory = time_training(preset, weights, ",".join(map(str, DET_TRAIN_SIZE)), args,
                                      reference_step if python is not None else None)
        train_row = {"model": preset, **{k: statistics.median(v) for k, v in steps.items()}, "memory": memory,
                     "per_round": steps, "loss_diff": None}
        print(f"training {preset}: " + ", ".join(f"{k} {v:.3f} s" for k, v in train_row.items()
                                                  if isinstance(v, float)), flush=True)
    return infer_row, train_row


def onnx_runners(model, preset: str, work: Path, size: int, threads: int) -> Dict:
    """ONNX Runtime runners of ``model`` exported fp32 (Winograd 3x3 convolutions, the default) and
    quantized int8 as ``knet export --quantize int8`` writes it on this CPU (calibrated on four
    generated scenes), cached in ``work``."""
    from knet.data.synthetic import make_scene
    from knet.export.onnx import export_onnx
    from knet.export.quantize import quantize_int8
    from knet.export.targets import get_target, matching_target
    from knet.inference.onnx_runner import OnnxRunner

    fp32, int8 = work / f"{preset}.onnx", work / f"{preset}-int8.onnx"
    if not fp32.exists():
        export_onnx(model, fp32)
    if not int8.exists():
        # As `knet export --quantize int8 --target` of this CPU: without 8-bit dot products the
        # Winograd convolutions stay float32, with them every convolution is quantized.
        target = matching_target()
        source = fp32 if get_target(target).winograd(quantized=True) else work / f"{preset}-plain.onnx"
        if not source.exists():
            export_onnx(model, source, winograd=False)
        rng = np.random.default_rng(0)
        print(quantize_int8(source, int8, [make_scene(rng, size=(size, size))[0] for _ in range(4)],
                            threads=threads, target=target).summary(), flush=True)
    return {"onnx fp32": OnnxRunner(fp32, device="cpu", threads=threads),
            "onnx int8": OnnxRunner(int8, device="cpu", threads=threads)}


def write_results(path: Path, infer_rows: List[Dict], train_rows: List[Dict], args: argparse.Namespace,
                  size: int, with_reference: bool) -> None:
    """The run as JSON: the machine (CPU model and flags, versions, commit), the settings, and every
    row with its per-round times (the spread) and medians."""
    from knet.utils.device import cpu_has_int8_dot_product

    record = {
        "benchmark": "side_by_side",
        "machine": {**machine_info(args.threads), "int8_dot_product": cpu_has_int8_dot_product()},
        "settings": {"size": size, "weights": args.weights, "rounds": args.rounds, "repeats": args.repeats,
                     "train_steps": args.train_steps,
                     "inputs": args.inputs, "reference": with_reference},
        "inference": infer_rows, "training": train_rows,
    }
    save_results(path, record)


def print_tables(infer_rows: List[Dict], train_rows: List[Dict], args: argparse.Namespace, size: int,
                 with_reference: bool) -> None:
    from knet.utils.device import cpu_has_int8_dot_product

    dot = "with" if cpu_has_int8_dot_product() else "without"
    print(f"\nCPU: {cpu_model()} ({dot} 8-bit dot products, VNNI/AMX), {args.threads} threads, fp32, "
          f"{size}x{size}, {args.weights} weights; medians over {args.rounds} alternating rounds"
          + ("" if with_reference else "; reference not run"))
    if infer_rows:
        columns: List[str] = []
        for row in infer_rows:
            columns += [k for k in row if k not in columns and isinstance(row[k], float)]
        header = ["model"] + [f"{c} (s)" if c == "reference" or not with_reference else f"{c} (s, ratio)"
                              for c in columns]
        if with_reference:
            header.append(f"logits vs reference (x max), median / max over {args.inputs} inputs")
        print(f"\nInference, batch 1 ({args.repeats} forwards per round; semantic: the forward at {size}x{size}, "
              f"panoptic/instance: end to end on a {DET_PHOTO[0]}x{DET_PHOTO[1]} photo):\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in infer_rows:
            cells = [row["model"]]
            for c in columns:
                if c not in row:
                    cells.append("-")
                elif c == "reference" or "reference" not in row:
                    cells.append(f"{row[c]:.2f}")
                else:
                    cells.append(f"{row[c]:.2f} ({row['reference'] / row[c]:.2f}x)")
            if with_reference:
                cells.append(", ".join(f"{k} {statistics.median(v):.1e} / {max(v):.1e}"
                                       for k, v in row["diffs"].items()) if "diffs" in row
                             else "not compared here (the golden tests pin the outputs)")
            print("| " + " | ".join(cells) + " |")
    if train_rows:
        print(f"\nTraining step, batch 2 ({args.train_steps} steps per round after a warm-up):\n")
        if with_reference:
            print("| model | knet | reference (s, peak RSS) | knet (s, peak RSS) | speed ratio | memory ratio "
                  "| loss vs reference |")
            print("|---|---|---|---|---|---|---|")
            for row in train_rows:
                m = row["memory"]
                if "reference" not in row:
                    continue
                loss = "own targets each" if row["loss_diff"] is None else f"{row['loss_diff']:.1e} relative"
                for kind in (k for k in row["memory"] if k != "reference"):
                    print(f"| {row['model']} | {kind} | {row['reference']:.2f} s, {m['reference'] / 1024:.1f} GB | "
                          f"{row[kind]:.2f} s, {m[kind] / 1024:.1f} GB | {row['reference'] / row[kind]:.2f}x | "
                          f"{m[kind] / m['reference']:.2f}x | {loss} |")
        else:
            print("| model | knet | knet (s, peak RSS) |")
            print("|---|---|---|")
            for row in train_rows:
                for kind, peak in row["memory"].items():
                    print(f"| {row['model']} | {kind} | {row[kind]:.2f} s, {peak:.0f} MiB |")


if __name__ == "__main__":
    main()

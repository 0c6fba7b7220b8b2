"""Accuracy of reduced precision on trained models: the three demo models in fp32, bf16 and int8.

    for t in semantic panoptic instance; do knet demo --task $t --out-dir demos/$t; done
    python benchmarks/precision_accuracy.py demos --save benchmarks/results/precision_accuracy.json

For each demo (``DEMO_ROOT/<task>``: its trained ``model/`` and generated ``data/``), on its held-out
scenes: the task's metric (mIoU, PQ or AP, percent) in

- ``fp32``: the torch path (``knet test``);
- ``bf16``: ``--precision bf16`` (only where the CPU has AMX or AVX512-BF16; otherwise reported as
  not measurable here);
- ``int8``: ``knet export --quantize int8`` for this CPU's target, calibrated on the first 16
  training scenes, run in ONNX Runtime;

and each one's agreement with fp32 on the same scenes: semantic, the share of pixels with the same
label; panoptic, the share of pixels with the same class (void included); instance, the share of
fp32's instances scoring at least 0.3 that the other finds too (same class, mask IoU at least 0.5).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from machine import machine_info, save_results  # benchmarks/machine.py, beside this script

TASKS = ("semantic", "panoptic", "instance")
CALIBRATION_SCENES = 16
SHOWN_SCORE = 0.3  # instances below it are not shown (the Segmenter's default), nor compared


def class_map(result: Any) -> np.ndarray:
    """(H, W) class per pixel of a semantic or panoptic result (-1: void)."""
    if not hasattr(result, "segment_map"):
        return np.asarray(result.labels)
    lookup = np.full(len(result.segments) + 1, -1, dtype=np.int64)
    for segment in result.segments:
        lookup[segment.id] = segment.label
    return lookup[result.segment_map]


def instance_agreement(reference: List[Any], other: List[Any]) -> float:
    """Share of ``reference``'s shown instances that ``other`` has too (same class, mask IoU >= 0.5)."""
    found = total = 0
    for mine, theirs in zip(reference, other):
        for mask, label, score in zip(mine.masks, mine.labels, mine.scores):
            if score < SHOWN_SCORE:
                continue
            total += 1
            for other_mask, other_label in zip(theirs.masks, theirs.labels):
                union = np.logical_or(mask, other_mask).sum()
                if other_label == label and union and np.logical_and(mask, other_mask).sum() / union >= 0.5:
                    found += 1
                    break
    return found / total if total else float("nan")


def agreement(task: str, reference: List[Any], other: List[Any]) -> float:
    if task == "instance":
        return instance_agreement(reference, other)
    same = sum(int((class_map(a) == class_map(b)).sum()) for a, b in zip(reference, other))
    return same / sum(class_map(a).size for a in reference)


def int8_runner(model: Any, train_set: Any, folder: Path, threads: int) -> Any:
    """The model exported and quantized as ``knet export --quantize int8 --target <this CPU's>`` does."""
    from knet.export.onnx import export_onnx
    from knet.export.quantize import quantize_int8
    from knet.export.targets import get_target, matching_target
    from knet.inference.onnx_runner import OnnxRunner

    target = matching_target()
    fp32 = folder / "fp32.onnx"
    export_onnx(model, fp32, winograd=get_target(target).winograd(quantized=True), target=target)
    images = [train_set[i]["image"] for i in range(min(CALIBRATION_SCENES, len(train_set)))]
    quantize_int8(fp32, folder / "int8.onnx", images, threads=threads, target=target)
    return OnnxRunner(folder / "int8.onnx", device="cpu", threads=threads)


def measure(root: Path, task_name: str, threads: int, with_bf16: bool) -> Dict[str, Any]:
    import knet
    from knet.data.datasets import build_dataset, detect_dataset_kind
    from knet.engine.evaluation import run_evaluation
    from knet.tasks import get_task

    model = knet.load(root / "model", device="cpu")
    task = get_task(model.config.task)
    data = root / "data"
    kind = detect_dataset_kind(data, preferred=task.dataset_kinds)
    val_set = build_dataset(kind, data, "val", **task.dataset_options(model.config, training=False))
    train_set = build_dataset(kind, data, "train", **task.dataset_options(model.config, training=False))
    images = [val_set[i]["image"] for i in range(len(val_set))]
    row: Dict[str, Any] = {"task": task_name, "model": model.config.name, "metric": task.best_metric,
                           "scenes": len(val_set), "values": {}, "agreement_with_fp32": {}}
    results: Dict[str, List[Any]] = {}
    with tempfile.TemporaryDirectory(prefix="knet-precision-") as folder:
        runners: Dict[str, Optional[Any]] = {"fp32": model, "bf16": model if with_bf16 else None,
                                             "int8": int8_runner(model, train_set, Path(folder), threads)}
        for name, runner in runners.items():
            if runner is None:
                row["values"][name] = None  # not measurable on this CPU
                continue
            precision = name if name in ("fp32", "bf16") and runner is model else "fp32"
            metrics = run_evaluation(runner, val_set, task=task, device=None, precision=precision).metrics
            row["values"][name] = metrics[task.best_metric]
            results[name] = knet.Segmenter(runner, precision=precision)(images)
            if name != "fp32":
                row["agreement_with_fp32"][name] = round(agreement(task_name, results["fp32"], results[name]), 5)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_root", type=Path, help="folder holding the demos' semantic/, panoptic/, instance/")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, metavar="JSON")
    args = parser.parse_args()

    import torch

    from knet.utils.device import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    with_bf16 = cpu_has_native_bf16()
    if not with_bf16:
        print("bf16: not measurable here (this CPU has neither AMX nor AVX512-BF16)")
    rows = []
    for task_name in args.tasks:
        root = args.demo_root / task_name
        if not (root / "model").is_dir():
            sys.exit(f"{root}: no model/ folder (run: knet demo --task {task_name} --out-dir {root})")
        row = measure(root, task_name, args.threads, with_bf16)
        rows.append(row)
        values = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in row["values"].items())
        agree = ", ".join(f"{k} {v:.2%}" for k, v in row["agreement_with_fp32"].items())
        print(f"{task_name} ({row['metric']} on {row['scenes']} held-out scenes): {values}; agreement with fp32: "
              f"{agree}", flush=True)
    if args.save:
        save_results(args.save, {"benchmark": "precision_accuracy", "machine": machine_info(args.threads),
                                 "settings": {"calibration_scenes": CALIBRATION_SCENES, "bf16": with_bf16},
                                 "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

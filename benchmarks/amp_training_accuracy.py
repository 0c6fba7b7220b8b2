"""Accuracy of bf16 mixed-precision training: each demo trained in fp32 and with ``--amp bf16``.

    python benchmarks/amp_training_accuracy.py --save benchmarks/results/amp_training_accuracy.json

For each task, ``knet demo``'s recipe (preset, config overrides, iterations, seed 0) on its generated
scenes, trained twice on the CPU from the same seed: in float32, and under ``--amp bf16`` (only where
the CPU has AMX or AVX512-BF16; otherwise reported as not measurable here). Both trained models are
evaluated in float32 on the held-out scenes: the task's metric (mIoU, PQ or AP, percent), beside the
training's wall time.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

from machine import machine_info, save_results  # benchmarks/machine.py, beside this script

TASKS = ("semantic", "panoptic", "instance")


def measure(task_name: str, folder: Path, threads: int, iters: Optional[int], with_bf16: bool) -> Dict[str, Any]:
    import torch

    from knet.apps.demo import DemoSettings
    from knet.data.datasets import build_dataset
    from knet.engine.evaluation import run_evaluation
    from knet.engine.training import TrainOptions, train
    from knet.presets import get_config
    from knet.tasks import get_task

    settings = DemoSettings(task=task_name, out_dir=folder, iters=iters, device="cpu", quiet=True).resolved()
    recipe = settings.recipe
    torch.set_num_threads(settings.threads or threads)  # the demo's own thread count where it sets one
    cfg = get_config(recipe.preset, settings.config_overrides())
    task = get_task(cfg.task)
    data = folder / "data"
    recipe.generate(settings, data)
    train_set = build_dataset(recipe.dataset_kind, data, "train", **task.dataset_options(cfg, training=True))
    val_set = build_dataset(recipe.dataset_kind, data, "val", **task.dataset_options(cfg, training=False))
    row: Dict[str, Any] = {"task": task_name, "model": cfg.name, "metric": task.best_metric, "iters": settings.iters,
                           "scenes": len(val_set), "threads": torch.get_num_threads(), "values": {},
                           "train_seconds": {}}
    for name, amp in (("fp32", None), ("bf16", "bf16")):
        if amp == "bf16" and not with_bf16:
            row["values"][name] = row["train_seconds"][name] = None  # not measurable on this CPU
            continue
        start = time.perf_counter()
        result = train(cfg, TrainOptions(work_dir=folder / f"train-{name}", data_root=data, dataset=recipe.dataset_kind,
                                         device="cpu", amp=amp, seed=settings.seed, workers=0, keep=1, quiet=True,
                                         progress=False), train_set, val_set)
        row["train_seconds"][name] = round(time.perf_counter() - start, 1)
        metrics = run_evaluation(result.model.eval(), val_set, task=task, device=None).metrics
        row["values"][name] = metrics[task.best_metric]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--iters", type=int, default=None, help="training iterations (default: the demo's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads where the demo sets none")
    parser.add_argument("--save", type=Path, default=None, metavar="JSON")
    args = parser.parse_args()

    from knet.utils.device import cpu_has_native_bf16
    from knet.utils.memory import TRAINING, reuse_freed_memory

    reuse_freed_memory(TRAINING)  # as knet train and knet demo run
    with_bf16 = cpu_has_native_bf16()
    if not with_bf16:
        print("bf16: not measurable here (this CPU has neither AMX nor AVX512-BF16)")
    rows = []
    for task_name in args.tasks:
        with tempfile.TemporaryDirectory(prefix=f"knet-amp-{task_name}-") as folder:
            row = measure(task_name, Path(folder), args.threads, args.iters, with_bf16)
        rows.append(row)
        cells = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'} ({row['train_seconds'][k]} s)"
                          for k, v in row["values"].items())
        print(f"{task_name} ({row['metric']} on {row['scenes']} held-out scenes after {row['iters']} iterations): "
              f"{cells}", flush=True)
    if args.save:
        save_results(args.save, {"benchmark": "amp_training_accuracy", "machine": machine_info(args.threads),
                                 "settings": {"bf16": with_bf16}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

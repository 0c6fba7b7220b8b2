"""Training: the reference's recipe, one process or many (torchrun / DistributedDataParallel).

The recipe (per preset, in :class:`knet.config.TrainConfig`): AdamW with parameter groups (the
Swin presets exempt normalisation weights and position tables from weight decay), a linear
warm-up followed by step decay, gradient clipping at a total L2 norm, a fixed number of
iterations (:mod:`.optim`). :func:`train` runs it and keeps a work directory::

    WORK_DIR/config.json               the resolved config (class names and palette included)
    WORK_DIR/log.jsonl                 one JSON object per logged iteration and per validation
    WORK_DIR/iter_<N>.pth              full training state every ``checkpoint_interval`` iterations
    WORK_DIR/best_mIoU_iter_<N>.pth    the checkpoint of the best validation mIoU so far
    WORK_DIR/last_checkpoint           the file name of the newest ``iter_<N>.pth``
    WORK_DIR/tb/                       TensorBoard events (when tensorboard is installed)

Exact resume: a checkpoint holds the model, the optimizer, the schedule, the iteration, the random
states of python/numpy/torch of every rank and the data position. Data augmentation draws from a
generator seeded by ``(seed, global sample number)`` and validation runs with the random states
saved and restored, so a resumed run takes the same steps as an uninterrupted one
(:mod:`.checkpoints`, :mod:`.rng`, :mod:`.train_data`).

Distributed runs are started by ``torchrun`` (``env://``: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL and SyncBatchNorm on CUDA, gloo and plain
BatchNorm on CPU. Only rank 0 writes files or prints; validation sums the per-class areas of all
ranks (:mod:`.distributed`). Console, ``log.jsonl`` and TensorBoard: :mod:`.run_log`.
"""
from __future__ import annotations

import datetime
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..config import KNetConfig
from ..errors import CheckpointError, DataError, TrainingDivergedError, TrainingError
from ..utils.atomic import atomic_write_text
from .checkpoints import CheckpointManager, load_for_finetuning, read_training_checkpoint
from .distributed import (DistInfo, all_gather_objects, all_reduce_sum, check_amp, decide_on_main,
                          dist_info_from_env, init_distributed, leave_process_group, parameter_digest,
                          process_device)
from .optim import WarmupStepSchedule, backward_step, build_optimizer
from .rng import get_rng_state, preserved_rng, seed_everything, set_rng_state
from .run_log import RunLog, format_eta, memory_mb
from .train_data import InfiniteSampler, TrainSamples, TrainTransform, worker_init

__all__ = [
    "TrainOptions",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingError",
    "train",
    "validate",
]

PathLike = Union[str, Path]

CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------------------------
# Options and results
# --------------------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    """Everything about a run that is not the model/recipe config.

    ``resume``: ``None`` starts afresh; ``"auto"`` continues from the newest checkpoint of
    ``work_dir`` (or starts afresh, saying so, when there is none); a path continues from that
    checkpoint. ``amp``: ``None``, ``"fp16"`` or ``"bf16"`` (CUDA only). ``progress``: draw a
    progress bar on stderr; ``None`` draws one when stderr is a terminal.
    """

    work_dir: PathLike
    data_root: Optional[PathLike] = None
    dataset: str = "folder"
    device: str = "auto"
    amp: Optional[str] = None
    seed: int = 0
    workers: int = 2
    keep: int = 3
    resume: Optional[PathLike] = None
    load_from: Optional[PathLike] = None
    backbone_weights: Optional[PathLike] = None
    progress: Optional[bool] = None
    quiet: bool = False


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    model: nn.Module
    iteration: int
    work_dir: Path
    last_checkpoint: Optional[Path] = None
    best_checkpoint: Optional[Path] = None
    best_miou: Optional[float] = None
    last_metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    resumed_from: Optional[Path] = None
    reinitialized: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def validate(model: nn.Module, dataset: Any, info: DistInfo, batch_size: int = 4) -> Dict[str, Optional[float]]:
    """aAcc / mIoU / mAcc (percent) of ``model`` on ``dataset`` with the test pipeline of
    ``knet test``: every rank predicts its share of the images (``rank, rank + W, ...``) and the
    confusion matrices of all ranks are summed before the metrics are computed."""
    from .evaluation import SegmentationMetric
    from .inference import TestPipeline

    pipeline = TestPipeline(model)
    metric = SegmentationMetric(model.config.num_classes, model.config.data.ignore_index, device=pipeline.device)
    indices = list(range(info.rank, len(dataset), info.world_size))
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        for item, pred in zip(items, pipeline.predict([item["image"] for item in items])):
            metric.update(pred, torch.as_tensor(np.asarray(item["label"]).astype(np.int64)))
    if info.distributed:
        confusion = metric.confusion
        if confusion.device.type not in ("cpu", "cuda"):  # e.g. mps: reduce on the CPU
            confusion = confusion.cpu()
        dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
        metric.confusion = confusion
    metrics = metric.compute()
    return {k: metrics[k] for k in ("aAcc", "mIoU", "mAcc")}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def _default_datasets(cfg: KNetConfig, options: TrainOptions) -> Tuple[Any, Any]:
    from ..data.datasets import build_dataset

    if options.data_root is None:
        raise TrainingError("no training data: give --data-root")
    root = Path(options.data_root)
    return build_dataset(options.dataset, root, "train"), build_dataset(options.dataset, root, "val")


def _default_transform(cfg: KNetConfig) -> TrainTransform:
    from ..data.transforms import TrainPipeline

    return TrainPipeline(cfg.data)


def _with_dataset_classes(cfg: KNetConfig, dataset: Any) -> KNetConfig:
    """The config with the dataset's number of classes, class names and palette."""
    names = getattr(dataset, "class_names", None)
    palette = getattr(dataset, "palette", None)
    num_classes = int(getattr(dataset, "num_classes", len(names) if names else cfg.num_classes))
    overrides: Dict[str, Any] = {"num_classes": num_classes}
    if names is not None:
        overrides["class_names"] = [str(n) for n in names]
    if palette is not None:
        overrides["palette"] = [[int(c) for c in colour] for colour in palette]
    return cfg.replace(overrides)


class _Trainer:
    def __init__(self, cfg: KNetConfig, options: TrainOptions, train_dataset: Any, val_dataset: Any,
                 transform: Optional[TrainTransform]) -> None:
        self.options = options
        self.info = dist_info_from_env()
        self.device = process_device(options.device, self.info.local_rank)
        self.amp_dtype = check_amp(options.amp, self.device)  # before any bf16 op can run
        if options.workers < 0:
            raise TrainingError(f"--workers must be >= 0, got {options.workers}")
        t = cfg.train
        for name in ("iters", "batch_size", "val_interval", "checkpoint_interval", "log_interval"):
            if getattr(t, name) < 1:
                raise TrainingError(f"train.{name} must be at least 1, got {getattr(t, name)}")
        self.work_dir = Path(options.work_dir)
        self.checkpoints = CheckpointManager(self.work_dir, options.keep)

        if train_dataset is None or val_dataset is None:
            default_train, default_val = _default_datasets(cfg, options)
            train_dataset = default_train if train_dataset is None else train_dataset
            val_dataset = default_val if val_dataset is None else val_dataset
        if len(train_dataset) == 0:
            raise DataError(f"the training set of {options.data_root} is empty")
        if not getattr(train_dataset, "has_labels", True):
            raise DataError(f"the training set of {options.data_root} has no labels (masks) to learn from")
        self.cfg = _with_dataset_classes(cfg, train_dataset)
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.transform = transform or _default_transform(self.cfg)

    # ---- setup -------------------------------------------------------------------------
    def _build(self) -> None:
        from ..models.segmentor import build_model

        self.owns_process_group = init_distributed(self.info, self.device)
        if self.info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.options.seed)
        self.model = build_model(self.cfg).to(self.device)
        self.model.train()
        self.reinitialized: List[str] = []
        self.log_lines: List[str] = []
        if self.options.backbone_weights:
            from ..checkpoint.pretrained import load_backbone_weights

            skipped = load_backbone_weights(self.model.backbone, self.options.backbone_weights)
            self.log_lines.append(f"backbone weights: {self.options.backbone_weights}"
                                  + (f" (not loaded from the file: {', '.join(skipped)})" if skipped else ""))
        self.optimizer = build_optimizer(self.model, self.cfg.train)
        self.schedule = WarmupStepSchedule(self.optimizer, self.cfg.train)
        self.scaler = None
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda")
        self.start_iter = 0
        self.seed = self.options.seed
        self.sampler_start = 0
        self.best: Dict[str, Any] = {"mIoU": None, "iteration": None, "path": None}
        self.resumed_from: Optional[Path] = None
        rng_states: Optional[List[Dict[str, Any]]] = None
        # Rank 0 decides (the work directory is its own), the other ranks follow.
        resume_path, stale = decide_on_main(
            lambda: (self._resume_path(), [p.name for _, p in self.checkpoints.iteration_checkpoints()]),
            self.info)
        if resume_path is None:
            if stale:
                raise TrainingError(
                    f"{self.work_dir} already holds the checkpoints of a run ({', '.join(stale)}): pass "
                    "--resume to continue it, or choose another --work-dir")
        if resume_path is not None:
            rng_states = self._resume(resume_path)
        elif self.options.load_from:
            self.reinitialized = load_for_finetuning(self.model, self.options.load_from)
            line = f"loaded weights from {self.options.load_from}"
            if self.reinitialized:
                line += (f"; re-initialised for {self.cfg.num_classes} classes: "
                         + ", ".join(self.reinitialized))
            self.log_lines.append(line)

        self.net: nn.Module = self.model
        if self.info.distributed:
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index])
            else:
                self.net = nn.parallel.DistributedDataParallel(self.model)
        # The optimizer holds the same Parameter objects: convert_sync_batchnorm keeps them.

        if rng_states is not None:
            own = rng_states[self.info.rank] if len(rng_states) == self.info.world_size else rng_states[0]
            set_rng_state(own, self.device)
        self._build_loader()

    def _resume_path(self) -> Optional[Path]:
        resume = self.options.resume
        if resume is None:
            return None
        if str(resume) == "auto":
            path = self.checkpoints.latest()
            if path is None:
                self.log_lines.append(f"--resume: no checkpoint in {self.work_dir}; starting from iteration 0")
            return path
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"--resume {path}: no such checkpoint file")
        return path

    def _resume(self, path: Path) -> List[Dict[str, Any]]:
        visible = all_gather_objects(path.is_file(), self.info)
        if not all(visible):
            ranks = [r for r, ok in enumerate(visible) if not ok]
            raise TrainingError(f"checkpoint {path} is not visible on rank(s) {ranks}: resuming a multi-node "
                                "run needs the work directory on a filesystem every node can read")
        checkpoint = read_training_checkpoint(path)
        try:
            self.model.load_state_dict(checkpoint["state_dict"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"--resume {path}: the weights do not fit this model: "
                                  f"{str(err).splitlines()[0]}") from None
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"--resume {path}: the optimizer state does not fit: {err}") from None
        self.schedule.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_iter = int(checkpoint["iteration"])
        self.sampler_start = self.start_iter * self.cfg.train.batch_size
        best = checkpoint.get("best") or {}
        self.best = {"mIoU": best.get("mIoU"), "iteration": best.get("iteration"), "path": best.get("path")}
        sampler = checkpoint["sampler"]
        self.seed = int(sampler.get("seed", self.seed))  # the data order and augmentations continue
        if int(sampler.get("world_size", 1)) == self.info.world_size:
            self.sampler_start = int(sampler.get("consumed_per_rank", self.sampler_start))
        else:
            self.log_lines.append(
                f"warning: {path} was written by a run of {sampler.get('world_size')} process(es), this run "
                f"has {self.info.world_size}: the data order and random states continue, but not bit-exactly")
        self.resumed_from = path
        self.log_lines.append(f"resumed from {path} at iteration {self.start_iter}")
        rng = checkpoint["rng"]
        return list(rng) if isinstance(rng, (list, tuple)) else [rng]

    def _build_loader(self) -> None:
        t = self.cfg.train
        self.sampler = InfiniteSampler(len(self.train_dataset), seed=self.seed, rank=self.info.rank,
                                       world_size=self.info.world_size, start=self.sampler_start)
        samples = TrainSamples(self.train_dataset, self.transform, self.seed, self.cfg.data.mean, self.cfg.data.std)
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1000 + self.info.rank)
        workers = self.options.workers
        self.loader = DataLoader(samples, batch_size=t.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=workers, pin_memory=self.device.type == "cuda",
                                 worker_init_fn=worker_init if workers else None, generator=generator,
                                 persistent_workers=workers > 0, prefetch_factor=2 if workers else None)

    # ---- state -------------------------------------------------------------------------
    def _state(self, iteration: int, rng_states: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "iteration": iteration,
            "rng": rng_states,
            "sampler": {"seed": self.seed, "world_size": self.info.world_size,
                        "consumed_per_rank": self.sampler_start
                        + (iteration - self.start_iter) * self.cfg.train.batch_size},
            "best": dict(self.best),
            "config": self.cfg.to_dict(),
            "meta": {
                "class_names": list(self.cfg.class_names or []),
                "palette": [list(c) for c in (self.cfg.palette or [])],
                "iteration": iteration,
                "seed": self.seed,
                "world_size": self.info.world_size,
                "knet_version": _knet_version(),
                "time": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        }

    # ---- run ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self._build()
        t = self.cfg.train
        info = self.info
        main = info.is_main
        progress = self.options.progress
        if progress is None:
            progress = sys.stderr.isatty()
        log = RunLog(self.work_dir, main, self.start_iter, t.iters, bool(progress) and main, self.options.quiet)
        if main:
            atomic_write_text(self.work_dir / CONFIG_NAME, self.cfg.to_json() + "\n")
            for line in self.log_lines:
                log.info(line)
            log.info(f"training {self.cfg.name} ({self.cfg.num_classes} classes) on {self.device}"
                     f"{f' x {info.world_size} processes' if info.distributed else ''}: iterations "
                     f"{self.start_iter} -> {t.iters}, batch {t.batch_size} per process, "
                     f"base lr {t.lr:g}, work dir {self.work_dir}")
        result = TrainResult(model=self.model, iteration=self.start_iter, work_dir=self.work_dir,
                             resumed_from=self.resumed_from, reinitialized=list(self.reinitialized),
                             best_miou=self.best["mIoU"])
        if self.best["path"]:
            result.best_checkpoint = self.work_dir / str(self.best["path"])
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext())
        try:
            self._loop(log, result, autocast)
        finally:
            log.close()
        if info.distributed:
            digests = all_gather_objects(parameter_digest(self.model), info)
            if len(set(digests)) != 1:
                raise TrainingError(f"the ranks ended with different parameters: {digests}")
            log.info(f"parameters identical on all {info.world_size} ranks (sha256 {digests[0][:16]})")
        return result

    def _loop(self, log: RunLog, result: TrainResult, autocast: Any) -> None:
        t = self.cfg.train
        info = self.info
        window: Dict[str, List[float]] = {}
        run_start = time.perf_counter()
        data_iter = iter(self.loader)
        params = [p for p in self.model.parameters() if p.requires_grad]
        tic = time.perf_counter()
        for it in range(self.start_iter, t.iters):
            images, labels = next(data_iter)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            data_time = time.perf_counter() - tic
            lr = self.schedule.apply(it)
            with autocast:
                losses = self.net(images, labels)
            loss = sum(losses.values())
            values = torch.stack([loss.detach().float()] + [v.detach().float() for v in losses.values()])
            values = all_reduce_sum(values, info) / info.world_size
            values_list = values.tolist()
            if not all(math.isfinite(v) for v in values_list):
                bad = [name for name, v in zip(["loss"] + list(losses), values_list) if not math.isfinite(v)]
                latest = self.checkpoints.latest()
                keep = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
                raise TrainingDivergedError(
                    f"the loss is {values_list[0]} at iteration {it + 1} (non-finite: {', '.join(bad)}); "
                    f"stopping: {keep}. Lower the lr or check the data.")
            grad_norm = backward_step(loss, self.optimizer, params, t.clip_grad_norm, self.scaler)
            done = it + 1
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - tic
            for name, value in zip(["loss"] + list(losses), values_list):
                window.setdefault(name, []).append(value)
            window.setdefault("grad_norm", []).append(grad_norm)
            window.setdefault("time", []).append(elapsed)
            window.setdefault("data_time", []).append(data_time)
            log.advance()

            if done % t.log_interval == 0 or done == t.iters:
                avg = {k: sum(v) / len(v) for k, v in window.items()}
                iters_done = done - self.start_iter
                per_iter = (time.perf_counter() - run_start) / iters_done
                record: Dict[str, Any] = {"iter": done, "lr": lr}
                record.update({k: round(avg[k], 6) for k in ["loss"] + list(losses)})
                record.update({"grad_norm": round(avg["grad_norm"], 4), "time": round(avg["time"], 4),
                               "data_time": round(avg["data_time"], 4), "memory": memory_mb(self.device)})
                log.record(record)
                named = "  ".join(f"{k} {avg[k]:.4f}" for k in losses)
                log.info(f"iter {done}/{t.iters}  loss {avg['loss']:.4f}  {named}  lr {lr:.3e}  "
                         f"time {avg['time']:.3f}s/it  data {avg['data_time']:.3f}s  "
                         f"eta {format_eta(per_iter * (t.iters - done))}  mem {record['memory']:.0f}M")
                window = {}

            evaluated = False
            if self.val_dataset is not None and len(self.val_dataset) and (done % t.val_interval == 0 or done == t.iters):
                with preserved_rng(self.device):
                    metrics = validate(self.model, self.val_dataset, info)
                evaluated = True
                result.last_metrics = dict(metrics)
                log.record({"iter": done, **metrics})
                log.info(f"iter {done}/{t.iters}  validation: "
                         + "  ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in metrics.items()))
            improved = (evaluated and metrics["mIoU"] is not None
                        and (self.best["mIoU"] is None or metrics["mIoU"] > self.best["mIoU"]))
            if improved:
                self.best = {"mIoU": metrics["mIoU"], "iteration": done,
                             "path": f"best_mIoU_iter_{done}.pth"}
            save_iter = done % t.checkpoint_interval == 0 or done == t.iters
            if save_iter or improved:
                rng_states = all_gather_objects(get_rng_state(self.device), info)
                if info.is_main:
                    state = self._state(done, rng_states)
                    saved = None
                    if save_iter:
                        saved = self.checkpoints.save(state, done)
                        result.last_checkpoint = saved
                        log.info(f"saved {saved}")
                    if improved:
                        best_path = self.checkpoints.save_best(state, done, copy_of=saved)
                        result.best_checkpoint = best_path
                        log.info(f"new best mIoU {metrics['mIoU']:.2f}: {best_path}")
            if improved:
                result.best_miou = metrics["mIoU"]
            result.iteration = done
            tic = time.perf_counter()


def _knet_version() -> str:
    from .. import __version__

    return __version__


def train(cfg: KNetConfig, options: TrainOptions, train_dataset: Any = None, val_dataset: Any = None,
          transform: Optional[TrainTransform] = None) -> TrainResult:
    """Train ``cfg`` (a preset's config with overrides) as described by ``options``.

    ``train_dataset`` / ``val_dataset`` default to ``build_dataset(options.dataset,
    options.data_root, "train"/"val")``; ``transform`` (``(image, label, rng) -> (image,
    label)``) defaults to the reference's train pipeline for ``cfg.data``. The number of classes,
    class names and palette come from the training set. Under torchrun, call it on every rank.
    """
    trainer = _Trainer(cfg, options, train_dataset, val_dataset, transform)
    finished = False
    try:
        result = trainer.run()
        finished = True
        return result
    finally:
        if getattr(trainer, "owns_process_group", False) and dist.is_initialized():
            trainer.net = None  # drop the DDP wrapper: no reducer may outlive the group
            leave_process_group(synchronize=finished)

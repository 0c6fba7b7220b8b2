"""Training: the reference's recipe, one process or many (torchrun / DistributedDataParallel).

The recipe (per preset, in :class:`knet.config.TrainConfig`): AdamW with parameter groups (the
Swin presets exempt normalisation weights and position tables from weight decay; the
panoptic/instance presets train the backbone at ``backbone_lr_mult`` times the lr), a linear
warm-up followed by step decay, gradient clipping at a total L2 norm, a fixed number of
iterations, or of epochs converted to iterations from the size of the training set and the
total batch (:mod:`.optim`). :func:`train` runs it and keeps a work directory::

    WORK_DIR/config.json               the resolved config (class names and palette included)
    WORK_DIR/log.jsonl                 one JSON object per logged iteration and per validation
    WORK_DIR/iter_<N>.pth              full training state every ``checkpoint_interval`` iterations
    WORK_DIR/best_<metric>_iter_<N>.pth  the checkpoint of the best validation score so far
                                       (the task's metric: best_mIoU_iter_<N>.pth for semantic)
    WORK_DIR/last_checkpoint           the file name of the newest ``iter_<N>.pth``
    WORK_DIR/tb/                       TensorBoard events (when tensorboard is installed)

Exact resume: a checkpoint holds the model, the optimizer, the schedule, the iteration, the random
states of python/numpy/torch of every rank and the data position. Data augmentation draws from a
generator seeded by ``(seed, global sample number)`` and validation runs with the random states
saved and restored, so a resumed run takes the same steps as an uninterrupted one
(:mod:`.checkpoints`, :mod:`.rng`, :mod:`.train_data`).

Distributed runs are started by ``torchrun`` (``env://``: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL and SyncBatchNorm on CUDA, gloo and plain
BatchNorm on CPU. Only rank 0 writes files or prints; validation is the evaluation loop of ``knet
test`` (:mod:`.evaluation`) with each rank evaluating its share (:mod:`.distributed`). Console,
``log.jsonl`` and TensorBoard: :mod:`.run_log`.

The task of the config (:mod:`knet.tasks`) gives the datasets it reads and their classes, the
augmentation, the samples, batches and targets, the losses, the evaluator, the metric of the best
checkpoint and the tensors re-initialised when fine-tuning; the loop itself is task-free: step,
log, validate, checkpoint.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..config import ModelConfig, low_memory_config
from ..errors import CheckpointError, DataError, TrainingDivergedError, TrainingError
from ..tasks import Task, get_task
from ..utils.atomic import atomic_write_text
from ..utils.float_modes import flush_denormals
from .checkpoints import CheckpointManager, load_for_finetuning, read_training_checkpoint
from .distributed import (all_gather_objects, all_reduce_sum, check_amp, decide_on_main, dist_info_from_env,
                          init_distributed, leave_process_group, parameter_digest, process_device,
                          without_stride_warning)
from .evaluation import run_evaluation
from .optim import WarmupStepSchedule, backward_step, build_optimizer, epochs_to_iterations
from .rng import get_rng_state, preserved_rng, seed_everything, set_rng_state
from .run_log import RunLog, format_eta, memory_mb
from .train_data import InfiniteSampler, TrainSamples, TrainTransform, worker_init

__all__ = [
    "TrainOptions",
    "TrainResult",
    "TrainState",
    "TrainingDivergedError",
    "TrainingError",
    "train",
]

PathLike = Union[str, Path]

CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------------------------
# Options, state and results
# --------------------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    """Everything about a run that is not the model/recipe config.

    ``dataset``: the layout of ``data_root`` (a key of ``knet.data.datasets.DATASETS``), or
    ``auto`` to detect it (preferring the kinds the task reads); ``train_split`` /
    ``val_split``: None for the task's default split names of the root (``train`` / ``val``;
    ``train2017`` / ``val2017`` for COCO). ``resume``: ``None`` starts afresh; ``"auto"``
    continues from the newest checkpoint of ``work_dir`` (or starts afresh, saying so, when there
    is none); a path continues from that checkpoint. ``amp``: ``None``, ``"fp16"`` or ``"bf16"``
    (CUDA only). ``progress``: draw a progress bar on stderr; ``None`` draws one when stderr is a
    terminal. ``low_memory``: less memory for more time: the model is built from
    :func:`knet.config.low_memory_config` of the config (recomputed backbone stages and head maps).
    ``cpu_winograd``: on the CPU, the wide 3x3 convolutions train as Winograd F(4x4, 3x3)
    (:func:`prepare_cpu_training`); the model given back (``TrainResult.model``) holds plain
    convolutions either way. ``cpu_channels_last``: on the CPU, train the model channels-last;
    None: under ``amp`` and where the config's ``train.cpu_channels_last`` says so
    (:func:`prepare_cpu_training`); the model given back is contiguous either way.
    ``flush_denormals``: on the CPU, each step treats denormal floats as zero on torch's threads
    (:func:`knet.utils.float_modes.flush_denormals`, restored after the step).
    """

    work_dir: PathLike
    data_root: Optional[PathLike] = None
    dataset: str = "auto"
    train_split: Optional[str] = None
    val_split: Optional[str] = None
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
    low_memory: bool = False
    cpu_winograd: bool = True
    cpu_channels_last: Optional[bool] = None
    flush_denormals: bool = True


@dataclass
class TrainState:
    """A run's state: the objects that learn, and where the run is. :meth:`to_checkpoint` and
    :meth:`load_checkpoint` are the one place that knows the layout of ``iter_<N>.pth``::

        state_dict, optimizer, scheduler, scaler   the weights and the optimisation state
        iteration                                  iterations done
        rng                                        python/numpy/torch random states, one per rank
        sampler: seed, world_size, consumed_per_rank   the data position
        best: <metric>, iteration, path            the best validation so far
        config, meta                               the resolved config, class names, palette, ...
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupStepSchedule
    scaler: Any
    best_metric: str
    seed: int = 0
    iteration: int = 0
    consumed_per_rank: int = 0  # samples this rank's sampler had drawn at ``iteration``
    best_value: Optional[float] = None
    best_iteration: Optional[int] = None
    best_path: Optional[str] = None

    def to_checkpoint(self, cfg: ModelConfig, rng_states: List[Dict[str, Any]], world_size: int) -> Dict[str, Any]:
        return {
            # contiguous: a model trained channels-last on the CPU saves the usual layout
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "iteration": self.iteration,
            "rng": rng_states,
            "sampler": {"seed": self.seed, "world_size": world_size, "consumed_per_rank": self.consumed_per_rank},
            "best": {self.best_metric: self.best_value, "iteration": self.best_iteration, "path": self.best_path},
            "config": cfg.to_dict(),
            "meta": {
                "class_names": list(cfg.class_names or []),
                "palette": [list(c) for c in (cfg.palette or [])],
                "task": cfg.task,
                "iteration": self.iteration,
                "seed": self.seed,
                "world_size": world_size,
                "knet_version": _knet_version(),
                "time": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        }

    def load_checkpoint(self, checkpoint: Dict[str, Any], path: Path, world_size: int,
                        batch_size: int) -> Tuple[List[Dict[str, Any]], List[str]]:
        """Restore everything from ``checkpoint`` (read from ``path``); returns the per-rank
        random states and notes for the log."""
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
        self.iteration = int(checkpoint["iteration"])
        best = checkpoint.get("best") or {}
        self.best_value, self.best_iteration, self.best_path = (best.get(self.best_metric), best.get("iteration"),
                                                                best.get("path"))
        sampler = checkpoint["sampler"]
        self.seed = int(sampler.get("seed", self.seed))  # the data order and augmentations continue
        notes = []
        if int(sampler.get("world_size", 1)) == world_size:
            self.consumed_per_rank = int(sampler.get("consumed_per_rank", self.iteration * batch_size))
        else:
            self.consumed_per_rank = self.iteration * batch_size
            notes.append(f"warning: {path} was written by a run of {sampler.get('world_size')} process(es), this "
                         f"run has {world_size}: the data order and random states continue, but not bit-exactly")
        notes.append(f"resumed from {path} at iteration {self.iteration}")
        rng = checkpoint["rng"]
        return (list(rng) if isinstance(rng, (list, tuple)) else [rng]), notes


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    model: nn.Module
    iteration: int
    work_dir: Path
    last_checkpoint: Optional[Path] = None
    best_checkpoint: Optional[Path] = None
    best_metric: str = "mIoU"
    best_value: Optional[float] = None
    last_metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    resumed_from: Optional[Path] = None
    reinitialized: List[str] = field(default_factory=list)


@dataclasses.dataclass
class CpuTraining:
    """What :func:`prepare_cpu_training` changed in a model: ``notes`` for the log, and whether it
    made the model channels-last (:func:`finish_cpu_training` gives it back contiguous)."""

    notes: List[str] = dataclasses.field(default_factory=list)
    made_channels_last: bool = False


def prepare_cpu_training(model: nn.Module, device: torch.device, *, winograd: bool = True,
                         channels_last: Optional[bool] = None,
                         amp_dtype: Optional[torch.dtype] = None) -> CpuTraining:
    """For training on the CPU (on other devices nothing changes):

    - ``channels_last`` (None: under autocast, where oneDNN's low-precision convolutions need that
      layout to be fast, and where the model's ``config.train.cpu_channels_last`` says so): the
      model's parameters become channels-last, so the convolutions run oneDNN's (N, H, W, C)
      kernels, forward and backward. A run's rounding, hence its trajectory, differs from the
      contiguous one's;
    - ``winograd`` (float32 only: under autocast the direct convolutions run in bf16): the wide 3x3
      convolutions run as Winograd F(4x4, 3x3), forward and backward
      (:func:`knet.models.winograd.use_winograd`: the same parameters and state-dict keys,
      gradients equal to float rounding, about half those convolutions' time).

    :func:`finish_cpu_training` undoes both; the Parameter objects stay the same throughout."""
    from ..models.winograd import use_winograd

    done = CpuTraining()
    if device.type != "cpu":
        return done
    if channels_last is None:
        train_config = getattr(getattr(model, "config", None), "train", None)
        channels_last = amp_dtype is not None or bool(getattr(train_config, "cpu_channels_last", False))
    conv_weights = [p for p in model.parameters() if p.dim() == 4]
    if channels_last and not all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights):
        model.to(memory_format=torch.channels_last)
        done.made_channels_last = True
        done.notes.append("the model trains channels-last (its convolutions in (N, H, W, C) layout)")
    if winograd and amp_dtype is None:
        replaced = use_winograd(model)
        if replaced:
            done.notes.append(f"{replaced} wide 3x3 convolutions run as Winograd F(4x4,3x3) on the CPU")
    return done


def finish_cpu_training(model: nn.Module, done: Optional[CpuTraining] = None) -> None:
    """Undo :func:`prepare_cpu_training` (``done``: what it returned; None: only the Winograd
    convolutions): the model holds plain ``nn.Conv2d`` again
    (:func:`knet.models.winograd.remove_winograd`), in its original memory layout, with the same
    Parameter objects."""
    from ..models.winograd import remove_winograd

    remove_winograd(model)
    if done is not None and done.made_channels_last:
        model.to(memory_format=torch.contiguous_format)


def _recompute_notes(cfg: ModelConfig) -> List[str]:
    """Lines for the log: what the model built from ``cfg`` recomputes in the backward pass
    (:func:`knet.config.low_memory_config`)."""
    notes = []
    stages = tuple(getattr(cfg.backbone, "recompute_stages", ()))
    if stages:
        notes.append(f"backbone stages {', '.join(map(str, stages))} recompute their activations in the backward pass")
    if getattr(getattr(cfg, "decode_head", None), "recompute_fusion", False):
        notes.append(f"the kernel-generate head ({cfg.decode_head.kind}) rebuilds its stride-4 maps in the "
                     "backward pass")
    if getattr(getattr(cfg, "kernel_head", None), "recompute_fusion", False):
        notes.append("the kernel head's semantic FPN recomputes its activations in the backward pass")
    return notes


class _LossForward(nn.Module):
    """The model and its task's losses as one module, so that DistributedDataParallel wraps the
    whole computation: ``forward(images, targets)`` -> the named losses."""

    def __init__(self, model: nn.Module, task: Task, reduce_mean: Any = None) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.reduce_mean = reduce_mean

    def forward(self, images: torch.Tensor, targets: Any) -> Dict[str, torch.Tensor]:
        return self.task.losses(self.model.outputs(images), targets, self.model.config, reduce_mean=self.reduce_mean)


class _MeanOverRanks:
    """``reduce_mean`` of the losses: a tensor averaged over the processes (the official code's
    ``reduce_mean``: the class losses' normaliser is the mean number of positives per rank)."""

    def __init__(self, info: Any) -> None:
        self.info = info

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.info.distributed:
            return tensor
        tensor = tensor.detach().clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.info.world_size


# --------------------------------------------------------------------------------------------
# Setting up
# --------------------------------------------------------------------------------------------
def _default_datasets(options: TrainOptions, task: Task, cfg: Any) -> Tuple[Any, Any]:
    """The training and validation sets of ``options.data_root``, built with the task's options
    (semantic: the ignore value; COCO training sets: without images that hold no thing)."""
    from ..data.datasets import build_dataset, detect_dataset_kind

    if options.data_root is None:
        raise TrainingError("no training data: give --data-root")
    root = Path(options.data_root)
    kind = options.dataset
    if kind in (None, "", "auto"):
        kind = detect_dataset_kind(root, preferred=task.dataset_kinds)
    if kind not in task.dataset_kinds:
        raise DataError(f"{task.name} models train on {' or '.join(task.dataset_kinds)} datasets, "
                        f"not on {kind} ({root})")
    train_split, val_split = task.default_splits(root)
    return (build_dataset(kind, root, options.train_split or train_split, **task.dataset_options(cfg, training=True)),
            build_dataset(kind, root, options.val_split or val_split, **task.dataset_options(cfg, training=False)))


def _check_recipe(cfg: ModelConfig, options: TrainOptions) -> None:
    if options.workers < 0:
        raise TrainingError(f"--workers must be >= 0, got {options.workers}")
    for name in ("iters", "batch_size", "val_interval", "checkpoint_interval", "log_interval"):
        if getattr(cfg.train, name) < 1:
            raise TrainingError(f"train.{name} must be at least 1, got {getattr(cfg.train, name)}")


class _Trainer:
    """One run: :meth:`setup` builds everything (or restores it from a checkpoint), :meth:`run`
    loops over :meth:`step`, :meth:`log`, :meth:`validate` and :meth:`save`."""

    def __init__(self, cfg: ModelConfig, options: TrainOptions, train_dataset: Any, val_dataset: Any,
                 transform: Optional[TrainTransform]) -> None:
        self.options = options
        self.info = dist_info_from_env()
        self.device = process_device(options.device, self.info.local_rank)
        self.amp_dtype = check_amp(options.amp, self.device)  # before any bf16 op can run
        _check_recipe(cfg, options)
        self.task = get_task(cfg.task)
        self.work_dir = Path(options.work_dir)
        self.checkpoints = CheckpointManager(self.work_dir, options.keep, self.task.best_metric)
        if train_dataset is None or val_dataset is None:
            default_train, default_val = _default_datasets(options, self.task, cfg)
            train_dataset = default_train if train_dataset is None else train_dataset
            val_dataset = default_val if val_dataset is None else val_dataset
        if len(train_dataset) == 0:
            raise DataError(f"the training set of {options.data_root} is empty")
        if not getattr(train_dataset, "has_labels", True):
            raise DataError(f"the training set of {options.data_root} has no labels (masks) to learn from")
        self.notes: List[str] = []  # lines for the log, written once it exists
        cfg = self.task.adopt_classes(cfg, train_dataset)
        if options.low_memory:
            cfg = low_memory_config(cfg)
        schedule, schedule_note = epochs_to_iterations(cfg.train, len(train_dataset), self.info.world_size)
        if schedule_note is not None:
            cfg = dataclasses.replace(cfg, train=schedule)
            self.notes.append(schedule_note)
        self.cfg = cfg
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.transform = transform or self.task.train_transform(self.cfg)
        self.reinitialized: List[str] = []
        self.resumed_from: Optional[Path] = None
        self.cpu_training: Optional[CpuTraining] = None

    # ---- setup -------------------------------------------------------------------------
    def setup(self) -> None:
        from ..models.segmentor import build_model

        self.owns_process_group = init_distributed(self.info, self.device)
        if self.info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.options.seed)
        model = build_model(self.cfg).to(self.device)
        model.train()
        self.model = model  # given back with plain convolutions (run's finally), however setup ends
        self.cpu_training = prepare_cpu_training(model, self.device, winograd=self.options.cpu_winograd,
                                                 channels_last=self.options.cpu_channels_last,
                                                 amp_dtype=self.amp_dtype)
        self.notes.extend(self.cpu_training.notes)
        self.notes.extend(_recompute_notes(self.cfg))
        if self.options.backbone_weights:
            from ..checkpoint.pretrained import load_backbone_weights

            skipped = load_backbone_weights(model.backbone, self.options.backbone_weights)
            self.notes.append(f"backbone weights: {self.options.backbone_weights}"
                              + (f" (not loaded from the file: {', '.join(skipped)})" if skipped else ""))
        optimizer = build_optimizer(model, self.cfg.train)
        self.state = TrainState(model=model, optimizer=optimizer,
                                schedule=WarmupStepSchedule(optimizer, self.cfg.train),
                                scaler=torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None,
                                best_metric=self.task.best_metric, seed=self.options.seed)
        rng_states = self._restore_or_start()
        if self.info.distributed and self.device.type == "cuda":
            # convert_sync_batchnorm keeps the Parameter objects the optimizer holds
            self.state.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.state.model)
        self.net: nn.Module = _LossForward(self.state.model, self.task, _MeanOverRanks(self.info))
        if self.info.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=device_ids)
        if rng_states is not None:
            own = rng_states[self.info.rank] if len(rng_states) == self.info.world_size else rng_states[0]
            set_rng_state(own, self.device)
        self.loader = self._build_loader()

    def _restore_or_start(self) -> Optional[List[Dict[str, Any]]]:
        """Resume (returns the checkpoint's random states), fine-tune from ``--load-from``, or
        start afresh; rank 0 decides (the work directory is its own), the other ranks follow."""
        resume_path, stale = decide_on_main(
            lambda: (self._resume_path(), [p.name for _, p in self.checkpoints.iteration_checkpoints()]), self.info)
        if resume_path is not None:
            visible = all_gather_objects(resume_path.is_file(), self.info)
            if not all(visible):
                ranks = [r for r, ok in enumerate(visible) if not ok]
                raise TrainingError(f"checkpoint {resume_path} is not visible on rank(s) {ranks}: resuming a "
                                    "multi-node run needs the work directory on a filesystem every node can read")
            rng_states, notes = self.state.load_checkpoint(read_training_checkpoint(resume_path), resume_path,
                                                           self.info.world_size, self.cfg.train.batch_size)
            self.notes += notes
            self.resumed_from = resume_path
            return rng_states
        if stale:
            raise TrainingError(f"{self.work_dir} already holds the checkpoints of a run ({', '.join(stale)}): pass "
                                "--resume to continue it, or choose another --work-dir")
        if self.options.load_from:
            self.reinitialized = load_for_finetuning(self.state.model, self.options.load_from,
                                                     self.task.class_dependent_keys)
            line = f"loaded weights from {self.options.load_from}"
            if self.reinitialized:
                line += f"; re-initialised for {self.cfg.num_classes} classes: " + ", ".join(self.reinitialized)
            self.notes.append(line)
        return None

    def _resume_path(self) -> Optional[Path]:
        resume = self.options.resume
        if resume is None:
            return None
        if str(resume) == "auto":
            path = self.checkpoints.latest()
            if path is None:
                self.notes.append(f"--resume: no checkpoint in {self.work_dir}; starting from iteration 0")
            return path
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"--resume {path}: no such checkpoint file")
        return path

    def _build_loader(self) -> DataLoader:
        t, state = self.cfg.train, self.state
        sampler = InfiniteSampler(len(self.train_dataset), seed=state.seed, rank=self.info.rank,
                                  world_size=self.info.world_size, start=state.consumed_per_rank)
        samples = TrainSamples(self.train_dataset, self.transform, state.seed, self.task, self.cfg)
        generator = torch.Generator()
        generator.manual_seed(state.seed * 1000 + self.info.rank)
        workers = self.options.workers
        return DataLoader(samples, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=self.task.collate, num_workers=workers, pin_memory=self.device.type == "cuda",
                          worker_init_fn=worker_init if workers else None, generator=generator,
                          persistent_workers=workers > 0, prefetch_factor=2 if workers else None)

    # ---- the loop ----------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if getattr(self, "model", None) is not None:
                finish_cpu_training(self.model, self.cpu_training)

    def _run(self) -> TrainResult:
        self.setup()
        t, info, state = self.cfg.train, self.info, self.state
        progress = sys.stderr.isatty() if self.options.progress is None else self.options.progress
        self.log = RunLog(self.work_dir, info.is_main, state.iteration, t.iters, bool(progress) and info.is_main,
                          self.options.quiet)
        if info.is_main:
            backbone_lr = f" (backbone x{t.backbone_lr_mult:g})" if t.backbone_lr_mult != 1 else ""
            atomic_write_text(self.work_dir / CONFIG_NAME, self.cfg.to_json() + "\n")
            for line in self.notes:
                self.log.info(line)
            self.log.info(f"training {self.cfg.name} ({self.cfg.num_classes} classes, {self.task.name}) on "
                          f"{self.device}{f' x {info.world_size} processes' if info.distributed else ''}: "
                          f"iterations {state.iteration} -> {t.iters}, batch {t.batch_size} per process, "
                          f"base lr {t.lr:g}{backbone_lr}, work dir {self.work_dir}")
        self.result = TrainResult(model=state.model, iteration=state.iteration, work_dir=self.work_dir,
                                  resumed_from=self.resumed_from, reinitialized=list(self.reinitialized),
                                  best_metric=state.best_metric, best_value=state.best_value,
                                  best_checkpoint=self.work_dir / state.best_path if state.best_path else None)
        try:
            self._loop()
        finally:
            self.log.close()
        if info.distributed:
            digests = all_gather_objects(parameter_digest(state.model), info)
            if len(set(digests)) != 1:
                raise TrainingError(f"the ranks ended with different parameters: {digests}")
            self.log.info(f"parameters identical on all {info.world_size} ranks (sha256 {digests[0][:16]})")
        return self.result

    def _loop(self) -> None:
        t = self.cfg.train
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        self.window: Dict[str, List[float]] = {}
        self.run_start = time.perf_counter()
        self.first_iter = self.state.iteration
        data = iter(self.loader)
        tic = time.perf_counter()
        for it in range(self.state.iteration, t.iters):
            batch = next(data)
            data_time = time.perf_counter() - tic
            with flush_denormals(self.options.flush_denormals and self.device.type == "cpu"):
                values, lr = self.step(it, batch, autocast)
            done = it + 1
            self.state.iteration = done
            self.state.consumed_per_rank += t.batch_size
            self._remember(values, data_time, time.perf_counter() - tic)
            if done % t.log_interval == 0 or done == t.iters:
                self.log_window(done, lr)
            metrics = None
            if (self.val_dataset is not None and len(self.val_dataset)
                    and (done % t.val_interval == 0 or done == t.iters)):
                metrics = self.validate(done)
            improved = self._update_best(metrics, done)
            if done % t.checkpoint_interval == 0 or done == t.iters or improved:
                self.save(done, save_iter=done % t.checkpoint_interval == 0 or done == t.iters, improved=improved)
            self.result.iteration = done
            tic = time.perf_counter()

    def step(self, it: int, batch: Any, autocast: Any) -> Tuple[Dict[str, float], float]:
        """One optimisation step on a collated batch: forward, losses, NaN check, clipped backward
        and update. Returns the losses averaged over the ranks (``loss`` = their sum,
        ``grad_norm``) and the lr."""
        t, info = self.cfg.train, self.info
        images, targets = self.task.batch_inputs(batch, self.cfg, self.device)
        lr = self.state.schedule.apply(it)
        with autocast:
            losses = self.net(images, targets)
        loss = sum(losses.values())
        names = ["loss"] + list(losses)
        stacked = torch.stack([loss.detach().float()] + [v.detach().float() for v in losses.values()])
        averaged = (all_reduce_sum(stacked, info) / info.world_size).tolist()
        if not all(math.isfinite(v) for v in averaged):
            bad = [name for name, v in zip(names, averaged) if not math.isfinite(v)]
            latest = self.checkpoints.latest()
            keep = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"the loss is {averaged[0]} at iteration {it + 1} (non-finite: {', '.join(bad)}); "
                f"stopping: {keep}. Lower the lr or check the data.")
        params = [p for p in self.state.model.parameters() if p.requires_grad]
        channels_last = self.cpu_training is not None and self.cpu_training.made_channels_last
        with without_stride_warning(self.info.distributed and channels_last):
            grad_norm = backward_step(loss, self.state.optimizer, params, t.clip_grad_norm, self.state.scaler)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return {**dict(zip(names, averaged)), "grad_norm": grad_norm}, lr

    def _remember(self, values: Dict[str, float], data_time: float, elapsed: float) -> None:
        for name, value in {**values, "time": elapsed, "data_time": data_time}.items():
            self.window.setdefault(name, []).append(value)
        self.log.advance()

    def log_window(self, done: int, lr: float) -> None:
        """The averages since the last log line: console, ``log.jsonl``, TensorBoard."""
        t = self.cfg.train
        avg = {k: sum(v) / len(v) for k, v in self.window.items()}
        loss_names = [k for k in self.window if k not in ("grad_norm", "time", "data_time")]
        per_iter = (time.perf_counter() - self.run_start) / (done - self.first_iter)
        record: Dict[str, Any] = {"iter": done, "lr": lr}
        record.update({k: round(avg[k], 6) for k in loss_names})
        record.update({"grad_norm": round(avg["grad_norm"], 4), "time": round(avg["time"], 4),
                       "data_time": round(avg["data_time"], 4), "memory": memory_mb(self.device)})
        self.log.record(record)
        named = "  ".join(f"{k} {avg[k]:.4f}" for k in _console_loss_names(loss_names))
        self.log.info(f"iter {done}/{t.iters}  loss {avg['loss']:.4f}  {named}  lr {lr:.3e}  "
                      f"time {avg['time']:.3f}s/it  data {avg['data_time']:.3f}s  "
                      f"eta {format_eta(per_iter * (t.iters - done))}  mem {record['memory']:.0f}M")
        self.window = {}

    def validate(self, done: int) -> Dict[str, Optional[float]]:
        """The task's summary metrics on the validation set, with ``knet test``'s evaluation loop
        (every rank its share); the random states are left as they were."""
        with preserved_rng(self.device):
            result = run_evaluation(self.state.model, self.val_dataset, task=self.task, batch_size=4,
                                    device=None, dist_info=self.info)
        metrics = {k: result.metrics.get(k) for k in self.task.summary_metrics}
        self.result.last_metrics = dict(metrics)
        self.log.record({"iter": done, **metrics})
        self.log.info(f"iter {done}/{self.cfg.train.iters}  validation: "
                      + "  ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in metrics.items()))
        return metrics

    def _update_best(self, metrics: Optional[Dict[str, Optional[float]]], done: int) -> bool:
        state = self.state
        value = None if metrics is None else metrics.get(state.best_metric)
        if value is None or (state.best_value is not None and value <= state.best_value):
            return False
        state.best_value, state.best_iteration = value, done
        state.best_path = f"best_{state.best_metric}_iter_{done}.pth"
        self.result.best_value = value
        return True

    def save(self, done: int, save_iter: bool, improved: bool) -> None:
        """``iter_<N>.pth`` and/or the new best checkpoint, written by rank 0 (every rank takes
        part in gathering the random states)."""
        rng_states = all_gather_objects(get_rng_state(self.device), self.info)
        if not self.info.is_main:
            return
        checkpoint = self.state.to_checkpoint(self.cfg, rng_states, self.info.world_size)
        saved = None
        if save_iter:
            saved = self.checkpoints.save(checkpoint, done)
            self.result.last_checkpoint = saved
            self.log.info(f"saved {saved}")
        if improved:
            best_path = self.checkpoints.save_best(checkpoint, done, copy_of=saved)
            self.result.best_checkpoint = best_path
            self.log.info(f"new best {self.state.best_metric} {self.state.best_value:.2f}: {best_path}")


# The terms of a stage that the console line shows (log.jsonl keeps every term).
_CONSOLE_STAGE_TERMS = ("loss_ce", "loss_cls", "loss_mask", "loss_dice")


def _stage_term(name: str) -> Optional[Tuple[int, str]]:
    """(stage, term) of a per-stage loss name: ``s2_loss_cls`` (mask models), ``decode.loss_ce.s3``
    (semantic models); None for the others."""
    match = re.fullmatch(r"s(\d+)_(\w+)", name)
    if match:
        return int(match[1]), match[2]
    match = re.fullmatch(r"(?:.+\.)?(\w+)\.s(\d+)", name)
    if match:
        return int(match[2]), match[1]
    return None


def _console_loss_names(names: List[str]) -> List[str]:
    """The loss terms of a training log line on the console, besides the total ``loss``: the last
    stage's main terms (its classification, mask and dice terms; a semantic model's decode term)
    and the auxiliary head's. A panoptic model has 17 terms, which made a line of ~600 characters."""
    names = [n for n in names if n != "loss"]
    stages = {n: _stage_term(n) for n in names}
    if not any(stages.values()):
        return names
    last = max(stage[0] for stage in stages.values() if stage)
    return [n for n, stage in stages.items()
            if (stage is not None and stage[0] == last and stage[1] in _CONSOLE_STAGE_TERMS)
            or (stage is None and n.startswith("aux."))]


def _knet_version() -> str:
    from .. import __version__

    return __version__


def train(cfg: ModelConfig, options: TrainOptions, train_dataset: Any = None, val_dataset: Any = None,
          transform: Optional[TrainTransform] = None) -> TrainResult:
    """Train ``cfg`` (a preset's config with overrides) as described by ``options``.

    ``train_dataset`` / ``val_dataset`` default to the task's datasets of ``options.data_root``
    (its training and validation splits); ``transform`` defaults to the task's training
    augmentation for ``cfg.data`` (semantic: ``(image, label, rng) -> (image, label)``; panoptic
    and instance: ``(image, item, rng) -> MaskSample``). The classes (their number, names,
    palette; for mask models also thing flags and category ids) come from the training set
    (:meth:`knet.tasks.Task.adopt_classes`); a schedule in epochs is converted to iterations for
    it. Under torchrun, call it on every rank.
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

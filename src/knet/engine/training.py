"""Training: the reference's recipe, one process or many (torchrun / DistributedDataParallel).

The recipe (per preset, in :class:`knet.config.TrainConfig`): AdamW with parameter groups (the
Swin presets exempt normalisation weights and position tables from weight decay), a linear
warm-up followed by step decay, gradient clipping at a total L2 norm, a fixed number of
iterations. :func:`train` runs it and keeps a work directory::

    WORK_DIR/config.json               the resolved config (class names and palette included)
    WORK_DIR/log.jsonl                 one JSON object per logged iteration and per validation
    WORK_DIR/iter_<N>.pth              full training state every ``checkpoint_interval`` iterations
    WORK_DIR/best_mIoU_iter_<N>.pth    the checkpoint of the best validation mIoU so far
    WORK_DIR/last_checkpoint           the file name of the newest ``iter_<N>.pth``
    WORK_DIR/tb/                       TensorBoard events (when tensorboard is installed)

Exact resume: a checkpoint holds the model, the optimizer, the schedule, the iteration, the random
states of python/numpy/torch of every rank and the data position. Data augmentation draws from a
generator seeded by ``(seed, global sample number)`` and validation runs with the random states
saved and restored, so a resumed run takes the same steps as an uninterrupted one.

Distributed runs are started by ``torchrun`` (``env://``: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL and SyncBatchNorm on CUDA, gloo and plain
BatchNorm on CPU. Only rank 0 writes files or prints; validation sums the per-class areas of all
ranks.
"""
from __future__ import annotations

import datetime
import gc
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import KNetConfig, TrainConfig
from ..utils.atomic import atomic_write, atomic_write_text
from ..errors import CheckpointError, DataError, KnetError

__all__ = [
    "CLASS_DEPENDENT_KEYS",
    "CheckpointManager",
    "DistInfo",
    "InfiniteSampler",
    "TrainOptions",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingError",
    "WarmupStepSchedule",
    "build_optimizer",
    "build_param_groups",
    "load_for_finetuning",
    "lr_factor",
    "no_decay_parameter_names",
    "resolve_device",
    "train",
]

PathLike = Union[str, Path]

# Tensors whose first dimension is the number of classes: re-initialised when fine-tuning onto
# a dataset with another number of classes (the classifier that gives K-Net its initial kernels,
# and the auxiliary classifier).
CLASS_DEPENDENT_KEYS: Tuple[str, ...] = (
    "decode_head.kernel_generate_head.conv_seg.weight",
    "decode_head.kernel_generate_head.conv_seg.bias",
    "auxiliary_head.conv_seg.weight",
    "auxiliary_head.conv_seg.bias",
)

LAST_CHECKPOINT = "last_checkpoint"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
_ITER_RE = re.compile(r"^iter_(\d+)\.pth$")
_BEST_RE = re.compile(r"^best_mIoU_iter_(\d+)\.pth$")


class TrainingError(KnetError):
    """A training run that cannot start or continue (options, devices, resume state)."""


class TrainingDivergedError(TrainingError):
    """The loss became NaN or infinite."""


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
# Optimizer: parameter groups, schedule
# --------------------------------------------------------------------------------------------
def no_decay_parameter_names(model: nn.Module, keys: Sequence[str]) -> List[str]:
    """Names of the trainable parameters that get no weight decay: those whose name contains one
    of ``keys`` (the reference's rule; knet's parameter names equal the reference's keys)."""
    return [name for name, p in model.named_parameters()
            if p.requires_grad and any(key in name for key in keys)]


def build_param_groups(model: nn.Module, train_cfg: TrainConfig) -> List[Dict[str, Any]]:
    """AdamW parameter groups: one with the recipe's weight decay and, when ``no_decay_keys`` is
    set, one with weight decay 0 for the exempt parameters. Each group records its parameter
    names under ``"names"`` (informative; the optimizer ignores it)."""
    exempt = set(no_decay_parameter_names(model, train_cfg.no_decay_keys))
    decay: List[Tuple[str, nn.Parameter]] = []
    no_decay: List[Tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append((name, p))
    groups = [{"params": [p for _, p in decay], "names": [n for n, _ in decay],
               "weight_decay": train_cfg.weight_decay}]
    if no_decay:
        groups.append({"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay],
                       "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the recipe's lr, betas and (grouped) weight decay."""
    groups = build_param_groups(model, train_cfg)
    for group in groups:
        group.pop("names")
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas),
                             weight_decay=train_cfg.weight_decay)


def lr_factor(iteration: int, train_cfg: TrainConfig) -> float:
    """The multiplier of the base lr at 0-based ``iteration``: linear warm-up from
    ``warmup_ratio`` over ``warmup_iters`` iterations, then ``gamma`` at each milestone passed.

    With the reference's recipe: 0.001 at 0, 0.999001 at 999, 1 from 1000 to 59999, 0.1 from
    60000 to 71999, 0.01 from 72000.
    """
    factor = 1.0
    if iteration < train_cfg.warmup_iters:
        ratio = train_cfg.warmup_ratio
        factor = ratio + (1.0 - ratio) * iteration / train_cfg.warmup_iters
    passed = sum(1 for m in train_cfg.milestones if iteration >= m)
    return factor * train_cfg.gamma ** passed


class WarmupStepSchedule:
    """Sets each parameter group's lr to ``base_lr * lr_factor(iteration)`` (closed form, so it
    holds exactly after a resume). ``state_dict`` / ``load_state_dict`` carry the base lrs."""

    def __init__(self, optimizer: torch.optim.Optimizer, train_cfg: TrainConfig) -> None:
        self.optimizer = optimizer
        self.train_cfg = train_cfg
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.iteration = 0

    def lr_at(self, iteration: int) -> List[float]:
        factor = lr_factor(iteration, self.train_cfg)
        return [base * factor for base in self.base_lrs]

    def apply(self, iteration: int) -> float:
        """Set the lrs for ``iteration``; returns the first group's lr."""
        self.iteration = iteration
        lrs = self.lr_at(iteration)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        return lrs[0]

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        base_lrs = [float(v) for v in state["base_lrs"]]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise CheckpointError(
                f"the checkpoint's schedule has {len(base_lrs)} parameter groups, the optimizer "
                f"{len(self.optimizer.param_groups)} (was the model or no_decay_keys changed?)")
        self.base_lrs = base_lrs
        self.iteration = int(state.get("iteration", 0))


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                  clip_grad_norm: Optional[float], scaler: Optional[Any] = None) -> float:
    """Back-propagate ``loss``, clip the gradients of ``params`` to a total L2 norm of
    ``clip_grad_norm`` (None or <= 0: no clipping) and step. With a GradScaler (fp16) the loss
    is scaled and the gradients unscaled before clipping. Returns the total gradient norm
    before clipping (inf/nan when fp16 overflowed and the scaler skipped the step)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad_norm is not None and clip_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
    else:
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        norm = float(torch.stack(grads).norm()) if grads else 0.0
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm


# --------------------------------------------------------------------------------------------
# Distributed setup and devices
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainingError(f"environment variable {name}={value!r} is not an integer") from None


def dist_info_from_env() -> DistInfo:
    """Rank, world size and local rank as torchrun sets them (a single process without torchrun)."""
    world = _env_int("WORLD_SIZE", 1)
    return DistInfo(rank=_env_int("RANK", 0), world_size=world, local_rank=_env_int("LOCAL_RANK", 0))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The ``--device`` of :func:`knet.engine.inference.resolve_device`, with ``cuda`` meaning this
    process's local GPU under torchrun."""
    from .inference import resolve_device as resolve

    device = resolve(name)
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise TrainingError(f"local rank {local_rank} needs GPU {local_rank}, but only {count} GPU(s) "
                                "are visible; start at most that many processes per node")
        device = torch.device("cuda", local_rank)
    return device


def check_amp(amp: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``--amp`` on ``device``, or None for fp32. Refuses mixed precision
    off CUDA (bf16 kernels can kill a CPU process with SIGILL), before any bf16 operation runs."""
    if amp in (None, "", "none", "fp32"):
        return None
    if amp not in ("fp16", "bf16"):
        raise TrainingError(f"--amp {amp!r}: valid values are fp16 and bf16")
    if device.type != "cuda":
        raise TrainingError(
            f"--amp {amp} needs a CUDA device; this run uses {device.type}, where training runs in "
            "fp32 (bf16 kernels can crash a CPU process with an illegal instruction). Drop --amp.")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainingError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the process group torchrun describes; returns whether this call created it (a caller
    that created its own keeps it)."""
    if not info.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    backend = "nccl" if device.type == "cuda" else "gloo"
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise TrainingError(f"WORLD_SIZE={info.world_size} but {var} is not set: start distributed "
                                "runs with torchrun (it sets the rendezvous variables)")
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank,
                            world_size=info.world_size)
    return True


def _all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _all_gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    if not info.distributed:
        return [obj]
    gathered: List[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# --------------------------------------------------------------------------------------------
# Random states
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def get_rng_state(device: torch.device) -> Dict[str, Any]:
    """Python, numpy and torch random states as plain data (readable with ``weights_only``)."""
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": np_state["bit_generator"],
        "state": {"key": np.asarray(np_state["key"], dtype=np.uint32), "pos": int(np_state["pos"])},
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    })
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block (validation) without changing any random state seen by training."""
    saved = get_rng_state(device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
class InfiniteSampler(Sampler):
    """Endless shuffled sample keys for one rank, resumable at any position.

    Epoch ``e`` is a permutation of the dataset drawn from ``seed + e``, padded (by repeating its
    start) to a multiple of the world size; rank ``r`` takes slots ``r, r + W, r + 2W, ...``.
    Each key is ``(dataset index, global sample number)``; the sample number seeds that sample's
    augmentation, so the stream does not depend on the number of data workers. ``start`` is the
    number of samples this rank has already consumed.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0) -> None:
        if size <= 0:
            raise DataError("the training set is empty")
        self.size = int(size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.start = int(start)
        self.per_rank = math.ceil(self.size / self.world_size)
        self.padded = self.per_rank * self.world_size

    def order(self, epoch: int) -> List[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        while len(order) < self.padded:
            order += order[: self.padded - len(order)]
        return order

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            order = self.order(epoch)
            for k in range(offset, self.per_rank):
                slot = self.rank + k * self.world_size
                yield order[slot], epoch * self.padded + slot
            epoch, offset = epoch + 1, 0


TrainTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Tuple[Any, Any]]


class TrainSamples(Dataset):
    """Adapts a dataset (items with ``image`` uint8 HxWx3 RGB and ``label`` HxW) to the training
    loop: key ``(index, sample number)`` -> ``(image (3,H,W) float32 normalised, label (H,W)
    int64)``, augmented by ``transform(image, label, rng)`` with ``rng`` seeded by
    ``(seed, sample number)``."""

    def __init__(self, dataset: Any, transform: TrainTransform, seed: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, number = key
        rng = np.random.default_rng([self.seed, int(number)])
        item = self.dataset[int(index)]
        image, label = self.transform(item["image"], item["label"], rng)
        return _to_tensors(image, label, self.mean, self.std)


def _to_tensors(image: Any, label: Any, mean: np.ndarray, std: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 HxWx3 (normalised here) or float (3,H,W) (already normalised) + label -> tensors."""
    if isinstance(image, torch.Tensor):
        image_t = image.float()
    else:
        array = np.asarray(image)
        if array.dtype == np.uint8:
            array = (array.astype(np.float32) - mean) / std
            array = np.ascontiguousarray(array.transpose(2, 0, 1))
        image_t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    label_t = label.long() if isinstance(label, torch.Tensor) else torch.from_numpy(np.asarray(label).astype(np.int64))
    return image_t, label_t


def _worker_init(worker_id: int) -> None:
    """Seed a data worker's python/numpy from its torch seed (itself derived from the loader's
    seeded generator), for any randomness outside the per-sample generators."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write`: ``path`` is always either the old complete
    file or the new complete file, flushed to disk."""
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


class CheckpointManager:
    """The checkpoints of a work directory: ``iter_<N>.pth`` (the newest ``keep`` are kept),
    ``best_mIoU_iter_<N>.pth`` (one) and the ``last_checkpoint`` pointer."""

    def __init__(self, work_dir: Path, keep: int = 3) -> None:
        if keep < 1:
            raise TrainingError(f"--keep must be at least 1, got {keep}")
        self.work_dir = Path(work_dir)
        self.keep = int(keep)

    def iteration_checkpoints(self) -> List[Tuple[int, Path]]:
        found = []
        if self.work_dir.is_dir():
            for path in self.work_dir.iterdir():
                match = _ITER_RE.match(path.name)
                if match:
                    found.append((int(match.group(1)), path))
        return sorted(found)

    def best_checkpoints(self) -> List[Path]:
        if not self.work_dir.is_dir():
            return []
        return sorted(p for p in self.work_dir.iterdir() if _BEST_RE.match(p.name))

    def latest(self) -> Optional[Path]:
        """The checkpoint ``last_checkpoint`` names, or else the highest ``iter_<N>.pth``."""
        pointer = self.work_dir / LAST_CHECKPOINT
        if pointer.is_file():
            name = pointer.read_text().strip()
            path = Path(name) if os.path.isabs(name) else self.work_dir / name
            if path.is_file():
                return path
        found = self.iteration_checkpoints()
        return found[-1][1] if found else None

    def save(self, state: Mapping[str, Any], iteration: int) -> Path:
        path = self.work_dir / f"iter_{iteration}.pth"
        atomic_torch_save(dict(state), path)
        atomic_write(self.work_dir / LAST_CHECKPOINT, lambda f: f.write(f"{path.name}\n".encode()), fsync=True)
        for _, old in self.iteration_checkpoints()[:-self.keep]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def save_best(self, state: Mapping[str, Any], iteration: int, copy_of: Optional[Path] = None) -> Path:
        """Write ``best_mIoU_iter_<iteration>.pth`` (a copy of ``copy_of`` when given) and remove
        the previous best."""
        path = self.work_dir / f"best_mIoU_iter_{iteration}.pth"
        if copy_of is not None and copy_of.is_file():
            with open(copy_of, "rb") as src:
                atomic_write(path, lambda dst: shutil.copyfileobj(src, dst, 1 << 22), fsync=True)
        else:
            atomic_torch_save(dict(state), path)
        for old in self.best_checkpoints():
            if old != path:
                old.unlink(missing_ok=True)
        return path


def _read_training_checkpoint(path: Path) -> Dict[str, Any]:
    from ..checkpoint.safe_load import safe_load

    checkpoint = safe_load(path)
    required = ("state_dict", "optimizer", "scheduler", "iteration", "rng", "sampler")
    missing = [k for k in required if not isinstance(checkpoint, Mapping) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a knet training checkpoint (missing {', '.join(missing)}); "
                              "use --load-from to start a new run from its weights")
    return dict(checkpoint)


def load_for_finetuning(model: nn.Module, path: PathLike) -> List[str]:
    """Load the weights of ``path`` into ``model`` for fine-tuning. When the checkpoint has another
    number of classes, exactly :data:`CLASS_DEPENDENT_KEYS` keep the model's fresh initialisation;
    every other tensor must match by name and shape. Returns the re-initialised keys."""
    from ..checkpoint import load_state_dict, read_checkpoint

    # any checkpoint kind; read_checkpoint names a missing or unreadable file
    state = dict(read_checkpoint(path)["state_dict"])
    own = model.state_dict()
    reinit = [k for k in CLASS_DEPENDENT_KEYS if k in own and k in state and state[k].shape != own[k].shape]
    for key in reinit:  # keep the model's fresh initialisation of the class-dependent tensors
        state[key] = own[key]
    load_state_dict(model, state, strict=True, source=f"--load-from {path}")
    return reinit


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------
class _RunLog:
    """Console lines, ``log.jsonl`` and TensorBoard, on rank 0 only."""

    def __init__(self, work_dir: Path, enabled: bool, start_iter: int, total: int, progress: bool,
                 quiet: bool) -> None:
        self.enabled = enabled
        self.quiet = quiet
        self.path = work_dir / LOG_NAME
        self.total = total
        self.tb = None
        self.bar = None
        if not enabled:
            return
        self._truncate_after(start_iter)
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except Exception:  # tensorboard is an optional extra
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(work_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)
        if progress:
            from ..utils.progress import ProgressBar

            self.bar = ProgressBar(total=total - start_iter, desc="train" + (f" from {start_iter}" if start_iter else ""))

    def _truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` left by a run that was killed after its last checkpoint
        (they are about to be recomputed)."""
        if not self.path.exists():
            return
        if iteration == 0:
            self.path.unlink()
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if int(record.get("iter", 0)) <= iteration:
                kept.append(json.dumps(record))
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def info(self, message: str) -> None:
        if self.enabled and not self.quiet:
            if self.bar is not None:  # clear the bar's line; it redraws on the next update
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            print(message, flush=True)

    def record(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = int(record["iter"])
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.tb.add_scalar(("val/" if key in ("aAcc", "mIoU", "mAcc") else "train/") + key, value, step)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def _memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA memory allocated on GPUs, the process's resident size elsewhere."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)


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


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class _Trainer:
    def __init__(self, cfg: KNetConfig, options: TrainOptions, train_dataset: Any, val_dataset: Any,
                 transform: Optional[TrainTransform]) -> None:
        self.options = options
        self.info = dist_info_from_env()
        self.device = resolve_device(options.device, self.info.local_rank)
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

        self.owns_process_group = _init_distributed(self.info, self.device)
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
        resume_path, stale = _broadcast_from_main(
            (self._resume_path(), [p.name for _, p in self.checkpoints.iteration_checkpoints()])
            if self.info.is_main else None, self.info)
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
        visible = _all_gather_objects(path.is_file(), self.info)
        if not all(visible):
            ranks = [r for r, ok in enumerate(visible) if not ok]
            raise TrainingError(f"checkpoint {path} is not visible on rank(s) {ranks}: resuming a multi-node "
                                "run needs the work directory on a filesystem every node can read")
        checkpoint = _read_training_checkpoint(path)
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
                                 worker_init_fn=_worker_init if workers else None, generator=generator,
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
        log = _RunLog(self.work_dir, main, self.start_iter, t.iters, bool(progress) and main, self.options.quiet)
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
            digests = _all_gather_objects(_digest(self.model), info)
            if len(set(digests)) != 1:
                raise TrainingError(f"the ranks ended with different parameters: {digests}")
            log.info(f"parameters identical on all {info.world_size} ranks (sha256 {digests[0][:16]})")
        return result

    def _loop(self, log: _RunLog, result: TrainResult, autocast: Any) -> None:
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
            values = _all_reduce_sum(values, info) / info.world_size
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
                               "data_time": round(avg["data_time"], 4), "memory": _memory_mb(self.device)})
                log.record(record)
                named = "  ".join(f"{k} {avg[k]:.4f}" for k in losses)
                log.info(f"iter {done}/{t.iters}  loss {avg['loss']:.4f}  {named}  lr {lr:.3e}  "
                         f"time {avg['time']:.3f}s/it  data {avg['data_time']:.3f}s  "
                         f"eta {_format_eta(per_iter * (t.iters - done))}  mem {record['memory']:.0f}M")
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
                rng_states = _all_gather_objects(get_rng_state(self.device), info)
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
            _leave_process_group(trainer, finished)


def _leave_process_group(trainer: "_Trainer", finished: bool) -> None:
    """Destroy the process group this run created, so that no gloo thread outlives the
    interpreter: a DDP wrapper still holding the group at exit can abort the process
    ("terminate called without an active exception") after a successful run."""
    trainer.net = trainer.model  # drop DDP (its reducer holds the group and pending work)
    gc.collect()
    if finished:
        dist.barrier()  # no rank tears down the transport while a peer still uses it
    dist.destroy_process_group()

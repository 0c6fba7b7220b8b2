"""Processes and devices of a training run: torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), each process's device and precision, joining
and leaving the process group (NCCL on CUDA, gloo elsewhere) and the few collectives the loop
needs. Without torchrun every helper is the single-process identity.
"""
from __future__ import annotations

import gc
import hashlib
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import KnetError, TrainingError

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "check_amp",
    "decide_on_main",
    "dist_info_from_env",
    "init_distributed",
    "leave_process_group",
    "parameter_digest",
    "process_device",
    "without_stride_warning",
]

# DDP compares each gradient's strides with its bucket's in full. A 1x1 convolution weight stored
# channels-last that a head also uses as a matrix (K-Net's kernels) gets gradients whose strides
# differ from it only along size-1 dimensions, the same memory order: DDP then warns of a slowdown
# that does not happen.
DDP_STRIDE_WARNING = "Grad strides do not match bucket view strides"


@contextmanager
def without_stride_warning(active: bool = True) -> Iterator[None]:
    """Around a DDP backward pass of a model made channels-last: DDP's stride warning left out
    (see :data:`DDP_STRIDE_WARNING`); the process's warning filters are restored afterwards."""
    if not active:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DDP_STRIDE_WARNING)
        yield


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run (a single process: rank 0 of 1)."""

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


def process_device(name: str, local_rank: int = 0) -> torch.device:
    """The ``--device`` of :func:`knet.utils.device.resolve_device`, with ``cuda`` meaning this
    process's local GPU under torchrun."""
    from ..utils.device import resolve_device as resolve

    device = resolve(name)
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise TrainingError(f"local rank {local_rank} needs GPU {local_rank}, but only {count} GPU(s) "
                                "are visible; start at most that many processes per node")
        device = torch.device("cuda", local_rank)
    return device


def check_amp(amp: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``--amp`` on ``device``, or None for fp32, before any low-precision
    operation runs: fp16 and bf16 on CUDA (bf16 where the GPU has it), bf16 on a CPU with native
    bfloat16 arithmetic (AMX or AVX512-BF16; elsewhere torch would emulate it, slower than fp32)."""
    from ..utils.precision import check_precision

    if amp in (None, "", "none", "fp32"):
        return None
    if amp not in ("fp16", "bf16"):
        raise TrainingError(f"--amp {amp!r}: valid values are fp16 and bf16")
    if device.type not in ("cuda", "cpu"):
        raise TrainingError(f"--amp {amp} needs a CUDA device or, for bf16, a CPU with AMX or AVX512-BF16; "
                            f"this run uses {device.type}. Drop --amp.")
    try:
        return check_precision(amp, device, option="--amp")
    except KnetError as err:
        raise TrainingError(str(err)) from None


def init_distributed(info: DistInfo, device: torch.device) -> bool:
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


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    if not info.distributed:
        return [obj]
    gathered: List[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def decide_on_main(decide: Callable[[], Any], info: DistInfo) -> Any:
    """Rank 0's ``decide()``, on every rank. A :class:`KnetError` it raises (a user error that
    rank 0 finds, e.g. a missing ``--resume`` file) is raised on every rank too, so all processes
    stop with the same message instead of the others failing inside a broken collective."""
    if not info.distributed:
        return decide()
    holder: List[Any] = [None]
    if info.is_main:
        try:
            holder = [(decide(), None)]
        except KnetError as err:
            holder = [(None, err)]
    dist.broadcast_object_list(holder, src=0)
    value, error = holder[0]
    if error is not None:
        raise error
    return value


def leave_process_group(synchronize: bool = True) -> None:
    """Destroy the process group that :func:`init_distributed` created; with ``synchronize``
    (a run that finished on every rank) after a barrier, so that no rank closes its connections
    while a peer still uses them.

    Drop every DistributedDataParallel wrapper first: a reducer still alive when the interpreter
    exits holds the group and its pending work, and tearing that down late made about one 2-rank
    gloo run in five abort after finishing ("terminate called without an active exception")."""
    gc.collect()
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()


def parameter_digest(model: nn.Module) -> str:
    """A sha256 of the model's parameter names and float32 values (equal on every rank of a
    healthy data-parallel run)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()

"""glibc's malloc for a process that runs models on the CPU: an explicit, process-wide opt-in.

By default glibc gives each large buffer a memory map of its own, so every forward or training
step has the kernel map and zero its feature maps afresh (a fifth to a third of the time of a
512x512 forward or step on the CPU). :func:`reuse_freed_memory` has malloc serve buffers below a
threshold from its heap instead, where freed memory is reused; the process then keeps its largest
heap. It changes the whole process for its lifetime, so the library never calls it on its own:

- the batch CLI verbs (``knet predict``, ``test``, ``benchmark``, ``train``, ``demo``) call
  :func:`apply_cli_allocator`, which does unless the environment says
  ``KNET_ALLOCATOR=default``;
- a Python program opts in by calling :func:`reuse_freed_memory` itself;
- a long-running process that keeps glibc's defaults (``knet serve``) can hand its free heap
  back with :func:`release_free_memory` when it falls idle.

Benchmark figures: ``benchmarks/results/``.
"""
from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "ALLOCATOR_ENV",
    "AllocatorSetting",
    "INFERENCE",
    "LOW_MEMORY_TRAINING",
    "TRAINING",
    "apply_cli_allocator",
    "current_setting",
    "release_free_memory",
    "reuse_freed_memory",
]

# glibc's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_NEVER = 2 ** 31 - 1  # mallopt takes a C int

ALLOCATOR_ENV = "KNET_ALLOCATOR"
_ENV_VALUES = ("reuse", "default")


@dataclass(frozen=True)
class AllocatorSetting:
    """Buffers under ``mmap_threshold`` bytes come from the heap and reuse freed memory; with
    ``give_back_top`` the heap's free top goes back to the system whenever it is free."""

    mmap_threshold: int
    give_back_top: bool = False


# Every buffer up to 1 GiB from the heap: the fastest setting for inference and training.
INFERENCE = AllocatorSetting(2 ** 30)
TRAINING = AllocatorSetting(2 ** 30)
# Larger freed buffers go back to the system, so that they leave no holes that raise the peak.
LOW_MEMORY_TRAINING = AllocatorSetting(64 * 2 ** 20)

_chosen: Optional[AllocatorSetting] = None


def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6 / mallopt)
        return None


def reuse_freed_memory(setting: AllocatorSetting = TRAINING) -> bool:
    """Have glibc's malloc serve every buffer under ``setting.mmap_threshold`` bytes from its heap,
    where freed memory is reused by the next allocations; larger buffers get memory maps of their
    own, unmapped when freed. Process-wide and permanent: call it only for a process that is
    yours to tune (a script, a batch job). Returns whether it applied (Linux with glibc only)."""
    global _chosen
    libc = _libc()
    if libc is None:
        return False
    applied = (bool(libc.mallopt(_M_MMAP_THRESHOLD, int(setting.mmap_threshold)))
               and bool(libc.mallopt(_M_TRIM_THRESHOLD, 0 if setting.give_back_top else _NEVER)))
    if applied:
        _chosen = setting
    return applied


def current_setting() -> Optional[AllocatorSetting]:
    """The setting :func:`reuse_freed_memory` applied in this process, or None (glibc's own)."""
    return _chosen


def apply_cli_allocator(setting: AllocatorSetting = INFERENCE) -> bool:
    """The batch CLI verbs' policy: ``setting`` unless ``KNET_ALLOCATOR=default`` (glibc's own
    behaviour) or a setting was chosen already in this process. Returns whether it applied."""
    choice = os.environ.get(ALLOCATOR_ENV, "reuse").strip().lower() or "reuse"
    if choice not in _ENV_VALUES:
        from ..errors import KnetError

        raise KnetError(f"{ALLOCATOR_ENV}={choice!r} is not one of: {', '.join(_ENV_VALUES)}")
    if choice == "default" or _chosen is not None:
        return False
    return reuse_freed_memory(setting)


def release_free_memory() -> bool:
    """Give the free memory at the heap's top and in its free pages back to the system
    (glibc's ``malloc_trim(0)``); the process's settings stay as they are. Returns whether any
    memory was released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))

"""glibc's malloc for a process that trains or runs models on the CPU: freed memory is reused, not
unmapped.

A training step allocates and frees the same feature maps every iteration, tens of GiB in all at
512x512. By default glibc gives each buffer above its mmap threshold (which rises as such buffers
are freed, up to 32 MiB) a memory map of its own: every allocation faults its pages in anew, the
kernel zeroing each one, and every free unmaps them. That kernel work was a fifth to a third of
an R50-FCN or Swin-T UPerNet training step (batch 2, 512x512, 2 threads). :func:`reuse_freed_memory` fixes the threshold, so
that the buffers below it come from glibc's heap and reuse the memory freed there. An inference
forward pays the same: 0.6-0.9 s of kernel time in a 2.0-2.6 s forward of R50-FCN, R50-UPerNet or
Swin-T UPerNet at 512x512 (Intel Xeon, 2 threads), so the predict path sets it too.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Optional, Tuple

# glibc's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Training: every buffer up to 1 GiB from the heap (knet train --low-memory passes less).
TRAINING_MMAP_THRESHOLD = 2 ** 30
_NEVER = 2 ** 31 - 1  # mallopt takes a C int
# The (mmap_threshold, give_back_top) this process set, if any.
_chosen: Optional[Tuple[int, bool]] = None


def reuse_freed_memory(mmap_threshold: int = TRAINING_MMAP_THRESHOLD, give_back_top: bool = False,
                       unless_chosen: bool = False) -> bool:
    """Have glibc's malloc serve every buffer under ``mmap_threshold`` bytes from its heap, where
    freed memory is reused by the next allocations; larger buffers get memory maps of their own,
    unmapped when freed. ``give_back_top``: the top of the heap goes back to the system whenever
    it is free (trim threshold 0); else never. Process-wide and permanent: the process keeps its
    largest heap for reuse. Returns whether it applied (Linux with glibc only). ``unless_chosen``:
    leave a setting made earlier in this process as it is (the predict path inside a
    ``--low-memory`` training run keeps that run's thresholds) and return False.

    Inference (:class:`knet.inference.pipeline.TorchRunner`, on the CPU), one forward at 512x512,
    Intel Xeon, 2 threads, alternating processes: R50-FCN 2.07-2.27 -> 1.61-1.83 s (kernel time
    0.60-0.73 -> 0.01 s a forward; peak 1.7 -> 2.1 GB), R50-UPerNet 2.32-2.60 -> 1.95-2.07 s,
    Swin-T UPerNet 2.38-2.65 -> 2.03-2.21 s.

    Measured on the CPU (AMD EPYC, 2 threads, batch 2, 512x512, ``knet benchmark --train``, one
    run each, 2026-11-26), against glibc's defaults with PyTorch's buffers on transparent huge
    pages (knet's setting before): R50-FCN 23.8 -> 16.3 s a step (peak 5.3 -> 5.6 GB), Swin-T
    UPerNet 26.4 -> 17.6 s (5.1 -> 6.0 GB). For ``low_memory``'s thresholds see
    :data:`knet.engine.training.LOW_MEMORY_ALLOCATOR`."""
    global _chosen
    if not sys.platform.startswith("linux") or (unless_chosen and _chosen is not None):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        applied = (bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
                   and bool(libc.mallopt(_M_TRIM_THRESHOLD, 0 if give_back_top else _NEVER)))
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6 / mallopt)
        return False
    if applied:
        _chosen = (int(mmap_threshold), bool(give_back_top))
    return applied

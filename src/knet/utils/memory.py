"""glibc's malloc for a process that trains on the CPU: freed memory is reused, not unmapped.

A training step allocates and frees the same feature maps every iteration, tens of GiB in all at
512x512. By default glibc gives each buffer above its mmap threshold (which rises as such buffers
are freed, up to 32 MiB) a memory map of its own: every allocation faults its pages in anew, the
kernel zeroing each one, and every free unmaps them. That kernel work was a fifth to a third of
an R50-FCN or Swin-T UPerNet training step (batch 2, 512x512, 2 threads). :func:`reuse_freed_memory` fixes the threshold, so
that the buffers below it come from glibc's heap and reuse the memory freed there.
"""
from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Training: every buffer up to 1 GiB from the heap (knet train --low-memory passes less).
TRAINING_MMAP_THRESHOLD = 2 ** 30
_NEVER = 2 ** 31 - 1  # mallopt takes a C int


def reuse_freed_memory(mmap_threshold: int = TRAINING_MMAP_THRESHOLD, give_back_top: bool = False) -> bool:
    """Have glibc's malloc serve every buffer under ``mmap_threshold`` bytes from its heap, where
    freed memory is reused by the next allocations; larger buffers get memory maps of their own,
    unmapped when freed. ``give_back_top``: the top of the heap goes back to the system whenever
    it is free (trim threshold 0); else never. Process-wide and permanent (for processes that
    train); returns whether it applied (Linux with glibc only).

    Measured on the CPU (AMD EPYC, 2 threads, batch 2, 512x512, ``knet benchmark --train``, one
    run each, 2026-11-26), against glibc's defaults with PyTorch's buffers on transparent huge
    pages (knet's setting before): R50-FCN 23.8 -> 16.3 s a step (peak 5.3 -> 5.6 GB), Swin-T
    UPerNet 26.4 -> 17.6 s (5.1 -> 6.0 GB). For ``low_memory``'s thresholds see
    :data:`knet.engine.training.LOW_MEMORY_MMAP_THRESHOLDS`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return (bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
                and bool(libc.mallopt(_M_TRIM_THRESHOLD, 0 if give_back_top else _NEVER)))
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6 / mallopt)
        return False

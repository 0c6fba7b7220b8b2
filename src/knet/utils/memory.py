"""The process's memory allocator, for training on the CPU: large buffers on transparent huge
pages, and large freed buffers back to the operating system."""
from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameter; allocations of at least this many bytes get memory maps of their own.
_M_MMAP_THRESHOLD = -3
LARGE_BUFFER_BYTES = 16 * 2 ** 20
# PyTorch's own switch (c10's alloc_cpu): when it is 1, CPU buffers of 2 MiB or more are
# page-aligned and advised MADV_HUGEPAGE. PyTorch reads it once, at its first CPU allocation.
TORCH_HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
# Above glibc's largest mmap threshold (32 MiB), so glibc maps it on its own and, unless PyTorch
# asks for page alignment, returns it 64 bytes into a page. Never touched: it costs no memory.
_PROBE_BYTES = 64 * 2 ** 20
_PAGE_BYTES = 4096
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def use_huge_pages() -> bool:
    """Put PyTorch's CPU buffers of 2 MiB or more on transparent huge pages; returns whether they
    are (Linux only, and only when the kernel's setting is not ``never``).

    A 2 MiB page takes one fault and one TLB entry where 4 KiB pages take 512: measured on R50-FCN's
    training step (batch 2, 512x512, the CPU), 27.2 s -> 24.2 s, peak memory 5.1 -> 5.4 GB. The
    inference forward gained nothing (Swin-T UPerNet lost ~15%), so only training turns it on.

    PyTorch fixes the choice at its first CPU allocation in the process, so this must run before
    any tensor exists; afterwards it changes nothing and returns False (unless the process already
    had it, e.g. ``THP_MEM_ALLOC_ENABLE=1`` in the environment). ``THP_MEM_ALLOC_ENABLE=0`` in
    the environment turns it off. The variable is restored afterwards, so child processes choose
    for themselves."""
    import torch

    previous = os.environ.get(TORCH_HUGE_PAGES_VARIABLE)
    if previous == "0" or not huge_pages_available():
        return False
    os.environ[TORCH_HUGE_PAGES_VARIABLE] = "1"
    try:
        probe = torch.empty(_PROBE_BYTES, dtype=torch.uint8)
        return probe.data_ptr() % _PAGE_BYTES == 0
    finally:
        if previous is None:
            del os.environ[TORCH_HUGE_PAGES_VARIABLE]
        else:
            os.environ[TORCH_HUGE_PAGES_VARIABLE] = previous


def huge_pages_available() -> bool:
    """Whether the kernel gives transparent huge pages to the memory that asks for them (Linux,
    its setting ``always`` or ``madvise``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(_THP_SETTING) as setting:
            return "[never]" not in setting.read()
    except OSError:  # a kernel without transparent huge pages
        return False


def release_large_buffers(threshold_bytes: int = LARGE_BUFFER_BYTES) -> bool:
    """Have glibc's ``malloc`` give every buffer of ``threshold_bytes`` or more a memory map of
    its own, unmapped when it is freed; returns whether it applied (Linux with glibc only).

    By default glibc raises that threshold each time such a buffer is freed, up to 32 MiB, so a
    training step's feature maps (a few MiB to tens of MiB each, allocated and freed in a
    different order every pass) come from its heap, whose freed holes stay resident: measured on
    R50-FCN at batch 2, 512x512, the peak resident memory was 5.1 GB with the default and 4.3 GB
    with a 4 MiB threshold. Each buffer above the threshold is mapped afresh, page by page, at
    every allocation, which costs time: with the stages of ``knet train --low-memory``
    recomputed, 4 MiB took 35 s a step and 16 MiB 30 s (on average over two alternating runs),
    for about the same peak (3.7 and 3.6 GB). Process-wide, and it stays so: for processes that
    train (``knet train --low-memory``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6 / mallopt)
        return False

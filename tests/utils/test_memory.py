"""``release_large_buffers`` (glibc's mmap threshold, set through mallopt) and ``use_huge_pages``
(PyTorch's switch for transparent huge pages): process-wide, so each test runs a fresh process."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from knet.utils.memory import huge_pages_available


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_large_buffers_leave_the_resident_memory():
    """In a fresh process: once one 24 MiB buffer has been freed, glibc's default threshold rises
    (it may, up to 32 MiB) and later 24 MiB buffers come from the heap, whose freed holes stay
    resident; above our threshold each has a map of its own, and freeing it gives the memory back."""
    script = """
import ctypes, sys
from knet.utils.memory import LARGE_BUFFER_BYTES, release_large_buffers
if sys.argv[1] == "on":
    assert release_large_buffers()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2 ** 20
def touch(p, n):
    ctypes.memset(p, 1, n)
size = LARGE_BUFFER_BYTES * 3 // 2
assert size < 32 * 2 ** 20  # glibc's default threshold may rise to it
first = libc.malloc(size)
touch(first, size)
libc.free(first)  # by default, the threshold rises to the size here
blocks = [libc.malloc(size) for _ in range(8)]
for p in blocks:
    touch(p, size)
before = rss()
for p in blocks[:-1]:
    libc.free(p)
print((before - rss()) * 2 ** 20 // size)  # buffers given back
"""
    given_back = {}
    for mode in ("off", "on"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        given_back[mode] = int(done.stdout.strip())
    assert given_back["on"] >= 6  # 7 unmapped
    assert given_back["off"] < given_back["on"]


def test_returns_whether_it_applied():
    """In a fresh process: the setting is process-wide, and this one runs the other tests."""
    done = subprocess.run([sys.executable, "-c", "from knet.utils.memory import release_large_buffers as r; "
                                                 "print(r())"], capture_output=True, text=True, check=True)
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert done.stdout.strip() == str(expected)


HUGE_PAGES = huge_pages_available()
PROBE = """
import os, sys, torch
from knet.utils.memory import use_huge_pages
if sys.argv[1] == "late":
    torch.ones(8)  # PyTorch has chosen, without huge pages
print(use_huge_pages(), os.environ.get("THP_MEM_ALLOC_ENABLE"))
buffers = [torch.empty(2 ** k * 2 ** 20, dtype=torch.uint8) for k in range(1, 7)]  # 2-64 MiB
print(all(b.data_ptr() % 4096 == 0 for b in buffers))  # page-aligned: advised as huge pages
"""


@pytest.mark.parametrize("when, variable, expected", [("early", None, HUGE_PAGES), ("late", None, False),
                                                      ("early", "0", False)])
def test_huge_pages_only_before_the_first_tensor(when, variable, expected):
    """In fresh processes: before PyTorch's first allocation it takes (and large buffers are then
    page-aligned, which PyTorch does only with huge pages); after it, or with the variable at 0,
    it does not. The environment variable is restored either way, for child processes."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if variable is not None:
        env["THP_MEM_ALLOC_ENABLE"] = variable
    done = subprocess.run([sys.executable, "-c", PROBE, when], capture_output=True, text=True, check=True, env=env)
    applied, restored, aligned = done.stdout.split()
    assert applied == str(expected) and aligned == str(expected)
    assert restored == str(variable)

"""``release_large_buffers``: glibc's mmap threshold, set through mallopt."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest



@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_large_buffers_leave_the_resident_memory():
    """In a fresh process: once one 8 MiB buffer has been freed, glibc's default threshold rises
    and later 8 MiB buffers come from the heap, whose freed holes stay resident; with the 4 MiB
    threshold each has a map of its own, and freeing it gives the memory back."""
    script = """
import ctypes, sys
from knet.utils.memory import release_large_buffers
if sys.argv[1] == "on":
    assert release_large_buffers()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2 ** 20
def touch(p, n):
    ctypes.memset(p, 1, n)
size = 8 * 2 ** 20
first = libc.malloc(size)
touch(first, size)
libc.free(first)  # by default, the threshold rises to 8 MiB here
blocks = [libc.malloc(size) for _ in range(16)]
for p in blocks:
    touch(p, size)
before = rss()
for p in blocks[:-1]:
    libc.free(p)
print(before - rss())
"""
    freed = {}
    for mode in ("off", "on"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        freed[mode] = int(done.stdout.strip())
    assert freed["on"] >= 100  # 15 x 8 MiB unmapped
    assert freed["off"] < freed["on"]


def test_returns_whether_it_applied():
    """In a fresh process: the setting is process-wide, and this one runs the other tests."""
    done = subprocess.run([sys.executable, "-c", "from knet.utils.memory import release_large_buffers as r; "
                                                 "print(r())"], capture_output=True, text=True, check=True)
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert done.stdout.strip() == str(expected)

"""``reuse_freed_memory`` (glibc's mmap and trim thresholds, set through mallopt): process-wide,
so each test runs a fresh process."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import GLIBC

# Allocates and fills two 48 MiB buffers (above glibc's own largest mmap threshold, 32 MiB); frees
# the first and then allocates, fills and frees 48 MiB eight times more. Prints the page faults of those eight rounds and the resident memory (MiB)
# given back when the last one is freed.
ROUNDS = """
import ctypes, resource, sys
from knet.utils import memory
mode = sys.argv[1]
low_memory = (32 * 2 ** 20, True)
settings = {"training": (), "low_memory": low_memory, "low_memory_then_runner": low_memory}
if mode in settings:
    assert memory.reuse_freed_memory(*settings[mode])
if mode.endswith("runner"):  # the predict path's runner on the CPU, as knet predict / test build it
    import torch
    from knet import build_model
    from knet.inference.pipeline import TorchRunner
    torch.manual_seed(0)
    TorchRunner(build_model("knet-r50-fcn-tiny"))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 48 * 2 ** 20
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2 ** 20
first, live = libc.malloc(size), libc.malloc(size)  # the heap grows upwards: the first lies lower
ctypes.memset(first, 1, size)
ctypes.memset(live, 1, size)
libc.free(first)  # a hole in the heap, below the live buffer, not its top
before = faults()
for _ in range(8):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    held = rss()
    libc.free(p)
print(faults() - before, held - rss())
"""


def _rounds(mode):
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    faults, given_back = map(int, done.stdout.split())
    return faults, given_back


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_buffers_are_reused_below_the_threshold_and_given_back_above():
    pages = 48 * 2 ** 20 // 4096
    default_faults, _ = _rounds("default")
    reused_faults, reused_given_back = _rounds("training")
    mapped_faults, mapped_given_back = _rounds("low_memory")
    assert default_faults > 4 * pages  # glibc's default: a fresh map, faulted in, each round
    assert reused_faults < pages // 4 and reused_given_back < 8  # the freed hole, reused
    assert mapped_faults > 4 * pages and mapped_given_back >= 40  # 48 MiB > 32 MiB: its own map, unmapped when freed


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_predict_path_reuses_freed_memory_unless_the_process_chose_a_setting():
    pages = 48 * 2 ** 20 // 4096
    runner_faults, _ = _rounds("runner")
    low_memory_faults, low_memory_given_back = _rounds("low_memory_then_runner")
    assert runner_faults < pages // 4  # a CPU runner: freed buffers reused
    assert low_memory_faults > 4 * pages and low_memory_given_back >= 40  # --low-memory's setting kept


def test_returns_whether_it_applied():
    """In a fresh process: the setting is process-wide, and this one runs the other tests."""
    done = subprocess.run([sys.executable, "-c", "from knet.utils.memory import reuse_freed_memory as r; print(r())"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(GLIBC)

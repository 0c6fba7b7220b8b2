"""``knet.utils.memory`` (glibc's mmap and trim thresholds, set through mallopt): process-wide,
so each test runs a fresh process."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import GLIBC

# Allocates and fills two 48 MiB buffers (above glibc's own largest mmap threshold, 32 MiB); frees
# the first and then allocates, fills and frees 48 MiB eight times more. Prints the page faults of
# those eight rounds and the resident memory (MiB) given back when the last one is freed.
ROUNDS = """
import ctypes, os, resource, sys
from knet.utils import memory
mode = sys.argv[1]
settings = {"training": memory.TRAINING, "low_memory": memory.AllocatorSetting(32 * 2 ** 20, True)}
if mode in settings:
    assert memory.reuse_freed_memory(settings[mode])
if mode.startswith("segmenter"):  # the library's predict path: a Segmenter built and run on the CPU
    import numpy as np
    import torch
    from knet import Segmenter, build_model
    if mode == "segmenter_opted_in":
        assert memory.reuse_freed_memory()
    torch.manual_seed(0)
    Segmenter(build_model("knet-r50-fcn-tiny"), device="cpu")(np.zeros((64, 80, 3), np.uint8))
if mode.startswith("cli"):  # what a batch CLI verb does before its work
    os.environ[memory.ALLOCATOR_ENV] = mode.split("_", 1)[1]
    print(int(memory.apply_cli_allocator()), end=" ")
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
    return tuple(map(int, done.stdout.split()))


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
def test_a_segmenter_leaves_the_allocator_as_it_found_it_unless_the_program_opts_in():
    pages = 48 * 2 ** 20 // 4096
    untouched_faults, untouched_given_back = _rounds("segmenter")
    opted_in_faults, _ = _rounds("segmenter_opted_in")
    assert untouched_faults > 4 * pages and untouched_given_back >= 40  # glibc's default: mapped, unmapped
    assert opted_in_faults < pages // 4


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_cli_policy_reuses_freed_memory_unless_the_environment_says_default():
    pages = 48 * 2 ** 20 // 4096
    applied, reused_faults, _ = _rounds("cli_reuse")
    skipped, default_faults, _ = _rounds("cli_default")
    assert (applied, skipped) == (1, 0)
    assert reused_faults < pages // 4 and default_faults > 4 * pages


def test_an_unknown_allocator_choice_is_refused(monkeypatch):
    from knet.errors import KnetError
    from knet.utils import memory

    monkeypatch.setenv(memory.ALLOCATOR_ENV, "jemalloc")
    with pytest.raises(KnetError, match="KNET_ALLOCATOR='jemalloc'"):
        memory.apply_cli_allocator()


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_release_free_memory_gives_the_heap_back_without_changing_settings():
    code = ("import ctypes; from knet.utils import memory; libc = ctypes.CDLL('libc.so.6');"
            "libc.malloc.restype = ctypes.c_void_p; libc.malloc.argtypes = [ctypes.c_size_t];"
            "libc.free.argtypes = [ctypes.c_void_p]; memory.reuse_freed_memory();"
            "ptrs = [libc.malloc(2 ** 20) for _ in range(200)]; [ctypes.memset(p, 1, 2 ** 20) for p in ptrs];"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 // 2 ** 20;"
            "[libc.free(p) for p in ptrs]; before = rss(); memory.release_free_memory();"
            "print(before - rss(), memory.current_setting() == memory.TRAINING)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    given_back, kept = done.stdout.split()
    assert int(given_back) >= 150 and kept == "True"


def test_returns_whether_it_applied():
    """In a fresh process: the setting is process-wide, and this one runs the other tests."""
    done = subprocess.run([sys.executable, "-c", "from knet.utils.memory import reuse_freed_memory as r; print(r())"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(GLIBC)

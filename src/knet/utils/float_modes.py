"""Flush-to-zero for the CPU threads that run knet's work, scoped to a block.

A float32 matrix product whose inputs hold denormal numbers (magnitudes below 1.2e-38, which
softmaxes, sigmoids and GELU tails of a trained model produce) runs up to a hundred times slower
on x86 CPUs. With flush-to-zero and denormals-are-zero (FTZ/DAZ) set, such values count as zero,
which changes a float32 result by less than its rounding. The mode is a register of each thread,
and ``torch.set_flush_denormal`` sets it for the calling thread only, not for the OpenMP threads
that run torch's kernels; :func:`flush_denormals` sets it on every thread of the calling thread's
OpenMP team (through GNU OpenMP's ``GOMP_parallel``) and gives each thread its own mode back at
the end of the block, so the process is left as it was.
"""
from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

__all__ = ["calling_thread_float_environment", "denormals_flushed", "flush_denormals"]

_SMALLEST_DENORMAL_PROBE = 1e-39
_local = threading.local()  # the depth of nested blocks on this thread
_gomp: Any = None
_supported: Optional[bool] = None  # whether this CPU has the mode (probed once)
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _openmp() -> Any:
    """The GNU OpenMP runtime torch's kernels run on (already loaded with torch), or None."""
    global _gomp
    if _gomp is None:
        _gomp = False
        try:
            with open("/proc/self/maps") as maps:
                paths = sorted({line.split()[-1] for line in maps if "libgomp" in line and "/" in line})
        except OSError:
            paths = []
        if paths:
            try:
                library = ctypes.CDLL(paths[0])
                library.GOMP_parallel.restype = None
                library.GOMP_parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                _gomp = library
            except (OSError, AttributeError):
                _gomp = False
    return _gomp or None


def denormals_flushed() -> bool:
    """Whether the calling thread flushes denormal floats to zero now."""
    import torch

    return float((torch.tensor([_SMALLEST_DENORMAL_PROBE]) * 1.0).item()) == 0.0


def _on_every_thread(function: Any, threads: int) -> None:
    """Run ``function()`` once on each thread of a team of ``threads`` OpenMP threads (the calling
    thread included), or on the calling thread alone without GNU OpenMP."""
    gomp = _openmp()
    if gomp is None or threads <= 1:
        function()
        return
    gomp.GOMP_parallel(_CALLBACK(lambda _: function()), None, threads, 0)


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Within the block, the calling thread and torch's CPU threads flush denormal floats to zero;
    afterwards each of them has its own mode back. Nested blocks apply once. A no-op when
    ``enabled`` is False or the CPU has no such mode."""
    import torch

    global _supported
    if _supported is None:
        _supported = torch.set_flush_denormal(denormals_flushed())  # probes support, changes nothing
    depth = getattr(_local, "depth", 0)
    if not enabled or not _supported:
        yield
        return
    if depth > 0:  # inside an applied block: the threads flush already
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth = depth
        return
    threads = torch.get_num_threads()
    before: Dict[int, bool] = {}
    lock = threading.Lock()

    def flush() -> None:
        state = denormals_flushed()
        with lock:
            before[threading.get_ident()] = state
        torch.set_flush_denormal(True)

    def restore() -> None:
        torch.set_flush_denormal(before.get(threading.get_ident(), False))

    _local.depth = 1
    _on_every_thread(flush, threads)
    try:
        yield
    finally:
        _local.depth = 0
        _on_every_thread(restore, threads)


def _threads_flushing(threads: int) -> List[bool]:
    """Each team thread's mode (for the tests)."""
    states: List[bool] = []
    lock = threading.Lock()

    def probe() -> None:
        with lock:
            states.append(denormals_flushed())

    _on_every_thread(probe, threads)
    return states


@contextmanager
def calling_thread_float_environment() -> Iterator[None]:
    """Give the calling thread its floating-point environment (rounding, exception masks and, on
    x86, flush-to-zero) back after the block, with C's ``fegetenv``/``fesetenv``; no torch needed.
    For libraries that change it as a side effect (ONNX Runtime's ``set_denormal_as_zero``)."""
    try:
        libc = ctypes.CDLL(None)
        fegetenv, fesetenv = libc.fegetenv, libc.fesetenv
    except (OSError, AttributeError):
        yield
        return
    environment = ctypes.create_string_buffer(256)  # larger than any platform's fenv_t
    saved = fegetenv(environment) == 0
    try:
        yield
    finally:
        if saved:
            fesetenv(environment)

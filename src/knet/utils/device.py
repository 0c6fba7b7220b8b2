"""Which torch device a ``--device`` value means (every verb and the Python API use this)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..errors import KnetError

if TYPE_CHECKING:  # imported where used: the command line's options need no torch (ONNX Runtime)
    import torch

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (default: auto: CUDA, then MPS, then the CPU)"


def resolve_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """The torch device for a ``--device`` value.

    ``auto`` picks CUDA when available, then Apple's MPS, then the CPU. ``cuda``, ``cuda:N`` and
    ``mps`` fail with a clear message when that device is not available.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_available():
            raise KnetError("device 'mps' requested but Apple's MPS backend is not available here")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise KnetError(f"device {name!r} requested but CUDA is not available here (use --device cpu)")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise KnetError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KnetError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise KnetError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps")


def mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters are (the CPU for a module without parameters)."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


# /proc/cpuinfo flags of 8-bit dot-product instructions, which ONNX Runtime's int8 convolutions and
# matrix products use: x86's VNNI (AVX-512 or AVX) and AMX, Arm's SDOT/UDOT.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


# /proc/cpuinfo flags of native bfloat16 arithmetic, which oneDNN's bf16 convolutions and matrix
# products use: AMX (Intel Sapphire Rapids and later) and AVX512-BF16 (also AMD Zen 4 and later).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Optional[str] = None) -> frozenset:
    """The feature flags of ``/proc/cpuinfo`` (or of ``cpuinfo`` when given); empty where that file
    cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_has_int8_dot_product(cpuinfo: Optional[str] = None) -> bool:
    """Whether this CPU has 8-bit dot-product instructions (:data:`INT8_DOT_PRODUCT_FLAGS` in
    ``/proc/cpuinfo``, or in ``cpuinfo`` when given); False where that file cannot be read."""
    return not cpu_flags(cpuinfo).isdisjoint(INT8_DOT_PRODUCT_FLAGS)


def cpu_has_native_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether this CPU computes bfloat16 natively (:data:`BF16_FLAGS`); elsewhere torch emulates
    it, slower than float32."""
    return not cpu_flags(cpuinfo).isdisjoint(BF16_FLAGS)

"""The runtimes ``knet export --target`` writes for; the target alone decides a file's layout.

    knet export --checkpoint my_model --out model-int8.onnx --quantize int8 --calibration photos/ --target cpu-vnni

- ``cpu`` (default): ONNX Runtime on a CPU without 8-bit dot products. Wide 3x3 convolutions are
  Winograd matrix products, float32 in an int8 file too.
- ``cpu-vnni``: ONNX Runtime on a CPU with 8-bit dot products (x86 VNNI or AMX, Arm SDOT). The
  float32 file is the ``cpu`` one; an int8 file quantizes every convolution, none is Winograd.
- ``gpu``: TensorRT or ONNX Runtime on CUDA, whose own convolutions are fast: no Winograd at all.

The machine that exports never changes the file (it only prints a note when it is not the target,
:func:`target_note`); the target is stored in the file's metadata (``knet.target``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..errors import KnetError
from ..utils.device import cpu_has_int8_dot_product


@dataclass(frozen=True)
class Target:
    """An export target: where the file will run and the Winograd layout that is fastest there."""

    name: str
    description: str
    winograd_fp32: bool  # wide 3x3 convolutions as Winograd in a float32 file
    winograd_int8: bool  # ... in an int8 file (they stay float32 there)
    int8_dot_product: Optional[bool]  # the CPU feature the target assumes; None for a GPU

    def winograd(self, quantized: bool = False) -> bool:
        """Whether a file for this target writes its wide 3x3 convolutions as Winograd."""
        return self.winograd_int8 if quantized else self.winograd_fp32


TARGETS: Dict[str, Target] = {t.name: t for t in (
    # Without 8-bit dot products int8 convolutions gain little, so Winograd's float32 ones stay faster.
    Target("cpu", "a CPU without 8-bit dot products", winograd_fp32=True, winograd_int8=True,
           int8_dot_product=False),
    # With them ONNX Runtime's int8 direct convolutions beat float32 Winograd.
    Target("cpu-vnni", "a CPU with 8-bit dot products (VNNI/AMX)", winograd_fp32=True, winograd_int8=False,
           int8_dot_product=True),
    # GPU runtimes pick their own convolution algorithms (Winograd included), so the decomposition only adds work.
    Target("gpu", "TensorRT or ONNX Runtime on CUDA", winograd_fp32=False, winograd_int8=False,
           int8_dot_product=None),
)}
TARGET_NAMES: Tuple[str, ...] = tuple(TARGETS)
DEFAULT_TARGET = "cpu"


def get_target(name: str) -> Target:
    """The :class:`Target` called ``name``, or a one-line KnetError naming the bad value."""
    target = TARGETS.get(name) if isinstance(name, str) else None
    if target is None:
        raise KnetError(f"target {name!r}: not an export target; valid: {', '.join(TARGET_NAMES)}")
    return target


def matching_target() -> str:
    """The CPU target that fits this machine (``cpu-vnni`` with 8-bit dot products, else ``cpu``)."""
    return "cpu-vnni" if cpu_has_int8_dot_product() else "cpu"


def target_note(name: str, quantized: bool = False) -> Optional[str]:
    """A one-line note when CPU target ``name`` does not fit this CPU and its file's layout differs
    from the fitting target's (None otherwise, and for a GPU target): the file is the same either
    way."""
    target = get_target(name)
    if target.int8_dot_product is None:
        return None
    here = matching_target()
    if target.winograd(quantized) == get_target(here).winograd(quantized):
        return None
    has = "has none" if target.int8_dot_product else "has them (VNNI/AMX)"
    return (f"note: --target {target.name} is for {target.description} and this CPU {has}; the file is the same "
            f"on every machine (--target {here} fits this one)")


__all__ = ["DEFAULT_TARGET", "TARGETS", "TARGET_NAMES", "Target", "get_target", "matching_target", "target_note"]

"""Which float format a model runs its convolutions and matrix products in (``--precision``).

- ``fp32``: everything in float32 (the default, and the reference's).
- ``bf16``: convolutions and matrix products in bfloat16 through autocast (weights stored in
  bfloat16, channels-last layout); normalisations, softmaxes, losses and post-processing stay
  float32. On the CPU only where it has native bfloat16 arithmetic (AMX or AVX512-BF16):
  elsewhere torch emulates it, slower than float32, so it is refused.
- ``fp16``: the same in float16, for GPUs (the CPU has no fast float16 convolutions).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..errors import KnetError
from .device import BF16_FLAGS, cpu_has_native_bf16

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_HELP = ("fp32 (default), bf16 (CPUs with AMX or AVX512-BF16, recent GPUs) or fp16 (GPUs): the "
                  "format of convolutions and matrix products; softmaxes and post-processing stay fp32")


def precision_name(precision: Optional[str], option: str = "precision") -> str:
    """``precision`` as one of :data:`PRECISIONS` (None: fp32; case and surrounding spaces ignored);
    :class:`~knet.errors.KnetError` naming ``option`` for anything else."""
    name = (precision or "fp32").strip().lower()
    if name not in PRECISIONS:
        raise KnetError(f"{option} {precision!r} is not one of: {', '.join(PRECISIONS)}")
    return name


def check_precision(precision: Optional[str], device: "torch.device | str" = "cpu",
                    option: str = "precision") -> Optional["torch.dtype"]:
    """The autocast dtype of ``precision`` on ``device``: None for fp32, else bfloat16 or float16.

    Raises :class:`~knet.errors.KnetError` (one line, naming the setting as ``option``: e.g.
    ``--amp`` for training) for an unknown name, for bf16 on a CPU without native bfloat16, for
    fp16 on the CPU and for bf16 on a GPU without it."""
    import torch

    name = precision_name(precision, option)
    if name == "fp32":
        return None
    kind = torch.device(device).type
    if kind == "cpu" and name == "fp16":
        raise KnetError(f"{option} fp16 runs on GPUs; on the CPU use bf16 (with AMX or AVX512-BF16) or fp32")
    if kind == "cpu" and not cpu_has_native_bf16():
        raise KnetError(f"{option} bf16: this CPU has no native bfloat16 arithmetic ({' or '.join(BF16_FLAGS)}); "
                        "torch would emulate it, slower than fp32: use fp32")
    if kind == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise KnetError(f"{option} bf16: this GPU does not support bfloat16; use fp16")
    if kind not in ("cpu", "cuda"):
        raise KnetError(f"{option} {name} is available on the CPU and CUDA, not on {kind}: use fp32")
    return torch.bfloat16 if name == "bf16" else torch.float16


__all__ = ["PRECISIONS", "PRECISION_HELP", "check_precision", "precision_name"]

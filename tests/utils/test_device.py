"""``--device`` values: auto, cpu, and clear errors for devices that are not here."""
import pytest
import torch

from knet.errors import KnetError
from knet.utils.device import resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(KnetError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(KnetError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cpu_has_int8_dot_product_reads_the_flags():
    from knet.utils.device import cpu_has_int8_dot_product

    assert cpu_has_int8_dot_product("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert cpu_has_int8_dot_product("flags\t: fpu avx2 avx_vnni\n")
    assert cpu_has_int8_dot_product("Features\t: fp asimd asimddp\n")  # Arm's SDOT/UDOT
    assert not cpu_has_int8_dot_product("flags\t: fpu sse2 avx2 fma avx512f\n")
    assert not cpu_has_int8_dot_product("model name\t: avx512_vnni in a name is not a flag\n")
    assert isinstance(cpu_has_int8_dot_product(), bool)  # this machine's /proc/cpuinfo, or False without it

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

"""Shared fixtures. The reference's golden files live in ../shared/goldens beside the checkout
(override with KNET_GOLDENS); tests that need them skip with a message when they are missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = Path(os.environ.get("KNET_GOLDENS", ROOT.parent / "shared" / "goldens"))

PRESET_ROWS = [
    "knet-r50-fcn",
    "knet-r50-pspnet",
    "knet-r50-deeplabv3",
    "knet-r50-upernet",
    "knet-swin-t-upernet",
    "knet-swin-l-upernet",
    "knet-swin-l-upernet-640",
]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread: on a small CPU shared with other processes, several threads per process
    can be an order of magnitude slower (they wait for each other's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small synthetic folder dataset: 4 classes, 8 training and 2 validation 64x64 scenes."""
    from knet.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("toy"), num_classes=4, num_train=8, num_val=2,
                                  size=(64, 64), seed=0)


def golden_path(name: str) -> Path:
    """Path of a golden file; skips the test (saying what is missing) when it is absent."""
    path = GOLDENS / name
    if not path.exists():
        pytest.skip(f"golden file {path} is missing (the reference outputs in ../shared/goldens)")
    return path


def logits_tolerance(reference) -> float:
    """The issue's tolerance: 1e-4 x max(1, max |reference logit|)."""
    return 1e-4 * max(1.0, float(abs(reference).max()))

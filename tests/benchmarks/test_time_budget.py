"""benchmarks/time_budget.py's arithmetic: the FLOPs it gives a Winograd convolution are the
products the convolution runs, and an inference copy's opaque Winograd operator is counted once."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from knet.models.winograd import WinogradConv2d, transform_weight, use_winograd

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def time_budget():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports machine.py from beside it
    try:
        spec = importlib.util.spec_from_file_location("time_budget", BENCHMARKS / "time_budget.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def flops(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


@pytest.mark.parametrize("shape, dilation", [((1, 128, 20, 28), 1), ((2, 128, 17, 9), 2)])
def test_winograd_flops_are_the_products_the_convolution_runs(time_budget, shape, dilation):
    torch.manual_seed(0)
    conv = WinogradConv2d.from_conv(nn.Conv2d(128, 160, 3, padding=dilation, dilation=dilation))
    x = torch.randn(shape, requires_grad=True)  # the autograd path: torch operators the counter sees
    products = flops(lambda: conv(x)) - flops(lambda: transform_weight(conv.weight))
    assert products == time_budget.winograd_flops(shape, 160, dilation) > 0


def test_an_inference_copys_winograd_operator_is_counted_once(time_budget):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 64, 1)).eval()
    x = torch.randn(1, 128, 24, 32)
    direct = 2 * 24 * 32 * 128 * (128 * 9 + 64)
    with torch.no_grad():
        assert time_budget.counted_flops(lambda: model(x)) == direct
        assert use_winograd(model, freeze=True) == 1
        expected = time_budget.winograd_flops((1, 128, 24, 32), 128) + 2 * 24 * 32 * 128 * 64
        assert time_budget.counted_flops(lambda: model(x), model) == expected

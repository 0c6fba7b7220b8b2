"""Winograd F(4x4, 3x3) convolutions (:mod:`knet.models.winograd`): the direct convolution's
result, for every dilation, odd sizes, batches and bands of tiles, and only where supported."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import knet
from knet.models import winograd
from knet.models.winograd import WinogradConv2d, use_winograd


def _conv(channels_in, channels_out, dilation=1, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(channels_in, channels_out, 3, padding=dilation, dilation=dilation, bias=bias).eval()


@torch.no_grad()
def _relative_error(got, conv, x):
    expected = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                        padding=conv.padding, dilation=conv.dilation)
    return float((got.double() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("dilation", [1, 2, 4])
@pytest.mark.parametrize("size", [(16, 16), (13, 21), (3, 5)])
def test_matches_the_direct_convolution(dilation, size):
    conv = _conv(24, 40, dilation)
    x = torch.randn(2, 24, *size)
    got = WinogradConv2d(conv)(x)
    assert got.shape == (2, 40, *size)
    assert got.is_contiguous(memory_format=torch.channels_last) or min(size) == 1
    assert _relative_error(got, conv, x) < 3e-5


def test_channels_last_input_and_no_bias():
    conv = _conv(16, 8, bias=False)
    x = torch.randn(1, 16, 20, 12).contiguous(memory_format=torch.channels_last)
    assert _relative_error(WinogradConv2d(conv)(x), conv, x) < 3e-5


def test_bands_of_tile_rows_give_the_same_result(monkeypatch):
    conv = _conv(8, 8, dilation=2)
    x = torch.randn(2, 8, 37, 29)
    whole = WinogradConv2d(conv)(x)
    monkeypatch.setattr(winograd, "TRANSFORM_BUDGET_BYTES", 1)  # one tile row per band
    assert torch.equal(WinogradConv2d(conv)(x), whole)


def test_gradients_reach_the_input():
    conv = _conv(8, 4)
    x = torch.randn(1, 8, 9, 9, requires_grad=True)
    WinogradConv2d(conv)(x).square().sum().backward()
    y = x.detach().requires_grad_()
    conv(y).square().sum().backward()
    assert torch.allclose(x.grad, y.grad, rtol=1e-4, atol=1e-4 * float(y.grad.abs().max()))


@pytest.mark.parametrize("conv", [nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 1),
                                  nn.Conv2d(8, 8, 3, padding=0), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                                  nn.Conv2d(8, 8, 3, padding=2, dilation=1)])
def test_unsupported_convolutions_are_refused(conv):
    assert not WinogradConv2d.supports(conv)
    with pytest.raises(ValueError, match="3x3, stride-1"):
        WinogradConv2d(conv)


def test_use_winograd_replaces_only_wide_supported_convolutions():
    model = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1),
                          nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.Conv2d(128, 128, 1),
                          nn.Conv2d(128, 128, 3, padding=2, dilation=2))
    assert use_winograd(model) == 2
    assert [type(m).__name__ for m in model] == ["Conv2d", "WinogradConv2d", "Conv2d", "Conv2d", "WinogradConv2d"]


def test_a_whole_model_keeps_its_logits():
    torch.manual_seed(0)
    model = knet.build_model("knet-r50-upernet-tiny").eval()
    fast = knet.build_model("knet-r50-upernet-tiny").eval()
    fast.load_state_dict(model.state_dict())
    assert use_winograd(fast, min_channels=1) > 10
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())

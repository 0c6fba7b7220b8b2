"""Deformable convolution v1: the vectorised op against a direct, loop-based evaluation of the formula."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from knet.models.backbones.deform_conv import DeformConv2dPack, deform_conv2d


def _bilinear_zero_padded(img: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """img (C, H, W) sampled at the real point (y, x): bilinear over the 4 neighbours, a neighbour
    outside the image counting as 0. Returns (C,)."""
    _, h, w = img.shape
    y0, x0 = math.floor(float(y.detach())), math.floor(float(x.detach()))
    ly, lx = y - y0, x - x0
    value = img.new_zeros(img.shape[0])
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                value = value + wy * wx * img[:, yy, xx]
    return value


def _reference(x, offset, weight, stride, padding, dilation, deform_groups):
    """out[b, :, oy, ox] = sum over taps (i, j) and groups g of
    W[:, group g channels, i, j] @ x_g(oy*s - p + i*d + dy, ox*s - p + j*d + dx),
    with (dy, dx) = offset[b, g*2*K + 2k : g*2*K + 2k + 2, oy, ox], k = i*kw + j."""
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    taps = kh * kw
    out_h = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    per_group = c // deform_groups
    out = x.new_zeros(n, out_c, out_h, out_w)
    for b in range(n):
        for oy in range(out_h):
            for ox in range(out_w):
                acc = x.new_zeros(out_c)
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        for g in range(deform_groups):
                            dy = offset[b, g * 2 * taps + 2 * k, oy, ox]
                            dx = offset[b, g * 2 * taps + 2 * k + 1, oy, ox]
                            py = oy * stride - padding + i * dilation + dy
                            px = ox * stride - padding + j * dilation + dx
                            channels = slice(g * per_group, (g + 1) * per_group)
                            sample = _bilinear_zero_padded(x[b, channels], py, px)
                            acc = acc + weight[:, channels, i, j] @ sample
                out[b, :, oy, ox] = acc
    return out


def _random_offsets(n, channels, h, w, generator):
    offset = 2.0 * torch.randn(n, channels, h, w, generator=generator, dtype=torch.float64)
    # Some sample points far outside the image, some just across its border.
    far = torch.rand(offset.shape, generator=generator, dtype=torch.float64) < 0.1
    offset[far] = torch.sign(offset[far]) * 7.5
    return offset


CASES = [  # (stride, padding, dilation, deform_groups, H, W)
    (1, 1, 1, 1, 6, 7),
    (2, 1, 1, 1, 9, 8),
    (2, 1, 1, 2, 7, 6),
    (1, 2, 2, 2, 6, 5),
    (1, 0, 1, 1, 5, 5),
]


@pytest.mark.parametrize("stride,padding,dilation,groups,h,w", CASES)
def test_matches_loop_reference(stride, padding, dilation, groups, h, w):
    gen = torch.Generator().manual_seed(stride * 100 + padding * 10 + dilation + groups * 7)
    n, c, out_c = 2, 4, 3
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = 0.3 * torch.randn(out_c, c, 3, 3, generator=gen, dtype=torch.float64)
    out_h = (h + 2 * padding - dilation * 2 - 1) // stride + 1
    out_w = (w + 2 * padding - dilation * 2 - 1) // stride + 1
    offset = _random_offsets(n, groups * 18, out_h, out_w, gen)
    expected = _reference(x, offset, weight, stride, padding, dilation, groups)
    got = deform_conv2d(x.float(), offset.float(), weight.float(), stride, padding, dilation, groups)
    assert got.shape == (n, out_c, out_h, out_w)
    assert float((got.double() - expected).abs().max()) <= 1e-5


def test_gradients_match_loop_reference():
    """Autograd through the op (x, weight and offsets: what training a DCN backbone needs)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    offset = _random_offsets(1, 18, 3, 3, gen).requires_grad_(True)
    upstream = torch.randn(1, 3, 3, 3, generator=gen, dtype=torch.float64)
    grads_fast = torch.autograd.grad((deform_conv2d(x, offset, weight, 2, 1, 1) * upstream).sum(), (x, weight, offset))
    grads_ref = torch.autograd.grad((_reference(x, offset, weight, 2, 1, 1, 1) * upstream).sum(), (x, weight, offset))
    for fast, ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_zero_offsets_equal_plain_conv(stride, dilation):
    x = torch.randn(2, 5, 11, 10)
    weight = torch.randn(4, 5, 3, 3)
    out_h = (11 + 2 * dilation - 2 * dilation - 1) // stride + 1
    out_w = (10 + 2 * dilation - 2 * dilation - 1) // stride + 1
    offset = torch.zeros(2, 18, out_h, out_w)
    got = deform_conv2d(x, offset, weight, stride, dilation, dilation)
    expected = F.conv2d(x, weight, stride=stride, padding=dilation, dilation=dilation)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_offset_channels_are_dy_then_dx():
    """A 1x1 kernel with offset (dy, dx) = (1, 0) reads the pixel below; (0, -1) the pixel to the
    left; zero where that leaves the image."""
    x = torch.arange(12.0).view(1, 1, 3, 4)
    weight = torch.ones(1, 1, 1, 1)
    down = torch.zeros(1, 2, 3, 4)
    down[:, 0] = 1.0
    expected_down = torch.tensor([[4.0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 0, 0]])
    torch.testing.assert_close(deform_conv2d(x, down, weight)[0, 0], expected_down)
    left = torch.zeros(1, 2, 3, 4)
    left[:, 1] = -1.0
    expected_left = torch.tensor([[0.0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]])
    torch.testing.assert_close(deform_conv2d(x, left, weight)[0, 0], expected_left)
    half = torch.zeros(1, 2, 3, 4)
    half[:, 0] = 0.5  # halfway to the row below; the last row mixes with the zero outside
    expected_half = torch.tensor([[2.0, 3, 4, 5], [6, 7, 8, 9], [4, 4.5, 5, 5.5]])
    torch.testing.assert_close(deform_conv2d(x, half, weight)[0, 0], expected_half)


def test_pack_module_keys_init_and_shapes():
    conv = DeformConv2dPack(8, 6, 3, stride=2, padding=1)
    assert set(conv.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    assert conv.weight.shape == (6, 8, 3, 3)
    assert conv.conv_offset.weight.shape == (18, 8, 3, 3) and conv.conv_offset.bias.shape == (18,)
    assert not conv.conv_offset.weight.any() and not conv.conv_offset.bias.any()
    x = torch.randn(2, 8, 13, 10)
    out = conv(x)
    assert out.shape == (2, 6, 7, 5)
    torch.testing.assert_close(out, F.conv2d(x, conv.weight, stride=2, padding=1), rtol=1e-5, atol=1e-5)


def test_pack_module_uses_its_offset_conv():
    conv = DeformConv2dPack(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.conv_offset.weight.normal_(0.0, 0.3)
        conv.conv_offset.bias.normal_(0.0, 1.0)
    x = torch.randn(1, 3, 6, 5)
    expected = deform_conv2d(x, conv.conv_offset(x), conv.weight, 1, 1, 1)
    torch.testing.assert_close(conv(x), expected)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, padding=1), atol=1e-3)


def test_bad_shapes_are_rejected():
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match="offset has shape"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.randn(2, 4, 3, 3), padding=1)
    with pytest.raises(ValueError, match="deform groups"):
        deform_conv2d(x, torch.zeros(1, 54, 6, 6), torch.randn(2, 4, 3, 3), padding=1, deform_groups=3)

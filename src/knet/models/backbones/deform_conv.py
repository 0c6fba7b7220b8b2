"""Deformable convolution v1 (Dai et al. 2017) in plain PyTorch, with mmcv 1.x's semantics.

``out(p) = sum_k w_k * x(p0 + p_k + dp_k)`` where ``p0 = p * stride - padding`` is the top-left tap
of output position ``p``, ``p_k = (i * dilation, j * dilation)`` runs over the kernel taps
(row-major, ``k = i * kw + j``) and ``dp_k = (dy, dx)`` is a learned, per-position, fractional
offset. ``x(.)`` is bilinear interpolation with zeros outside the image (a sample point in
``(-1, H)`` mixes real pixels with zeros; one at or beyond ``-1`` / ``H`` reads 0).

Offset layout (mmcv ``deform_conv``, ``DeformConv2dPack``): ``(N, G * 2 * kh * kw, Ho, Wo)`` with,
for deform group ``g`` and tap ``k``, channel ``g * 2*kh*kw + 2k`` = dy and ``+ 1`` = dx
(``[y0, x0, y1, x1, ...]``). Deform group ``g`` moves input channels ``g * C/G .. (g+1) * C/G - 1``.

No compiled extension: the ``kh * kw`` sample points of every output position are gathered with
``F.grid_sample`` (bilinear, zero padding; autograd gives the offset gradient), then contracted
with the weight by one matmul.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

IntPair = Union[int, Tuple[int, int]]


def _pair(v: IntPair) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride: IntPair = 1,
                  padding: IntPair = 0, dilation: IntPair = 1, deform_groups: int = 1) -> torch.Tensor:
    """Deformable convolution (no bias, one convolution group).

    x: (N, C, H, W); offset: (N, G*2*kh*kw, Ho, Wo) as in the module docstring; weight:
    (O, C, kh, kw). Returns (N, O, Ho, Wo), with Ho = (H + 2*ph - dh*(kh-1) - 1) // sh + 1 (as
    ``F.conv2d``).
    """
    n, c, h, w = x.shape
    out_c, w_in, kh, kw = weight.shape
    if w_in != c:
        raise ValueError(f"weight expects {w_in} input channels, x has {c}")
    if c % deform_groups:
        raise ValueError(f"{c} input channels do not split into {deform_groups} deform groups")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    taps = kh * kw
    if offset.shape != (n, deform_groups * 2 * taps, out_h, out_w):
        raise ValueError(f"offset has shape {tuple(offset.shape)}, expected "
                         f"{(n, deform_groups * 2 * taps, out_h, out_w)}")

    # Undeformed sample positions (pixel units, pixel centres at integers): (taps, Ho, Wo) each.
    dtype, device = x.dtype, x.device
    tap_y = (torch.arange(kh, device=device, dtype=dtype) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=device, dtype=dtype) * dw).repeat(kh)
    base_y = torch.arange(out_h, device=device, dtype=dtype) * sh - ph
    base_x = torch.arange(out_w, device=device, dtype=dtype) * sw - pw
    grid_y = tap_y[:, None, None] + base_y[None, :, None]  # (taps, Ho, 1)
    grid_x = tap_x[:, None, None] + base_x[None, None, :]  # (taps, 1, Wo)

    offset = offset.view(n, deform_groups, taps, 2, out_h, out_w)
    pos_y = grid_y + offset[:, :, :, 0]  # (N, G, taps, Ho, Wo)
    pos_x = grid_x + offset[:, :, :, 1]
    # grid_sample with align_corners=False maps pixel index p to (2p + 1) / size - 1; zero padding
    # reproduces mmcv's bilinear, which treats every out-of-image neighbour as 0.
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)
    grid = grid.view(n * deform_groups, taps * out_h, out_w, 2)
    group_x = x.reshape(n * deform_groups, c // deform_groups, h, w)
    sampled = F.grid_sample(group_x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # (N*G, C/G, taps*Ho, Wo) -> columns (N, C*taps, Ho*Wo), channel-major as weight.view(O, C*taps).
    columns = sampled.view(n, c * taps, out_h * out_w)
    out = torch.matmul(weight.reshape(out_c, c * taps), columns)
    return out.view(n, out_c, out_h, out_w)


class DeformConv2dPack(nn.Module):
    """Deformable 3x3-style convolution whose offsets come from a plain conv of the same input
    (mmcv ``DeformConv2dPack``, config ``type='DCN'``).

    ``weight``: (O, C, kh, kw), no bias; ``conv_offset``: Conv2d(C -> G*2*kh*kw, same kernel,
    stride, padding and dilation, with bias), zero-initialised so a fresh module is a plain
    convolution. (N, C, H, W) -> (N, O, Ho, Wo).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, deform_groups: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * 2 * self.kernel_size[0] * self.kernel_size[1],
                                     self.kernel_size, stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight as mmcv's ``DeformConv2d`` (uniform +-1/sqrt(fan_in)); offsets start at zero."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        self.reset_offset()

    def reset_offset(self) -> None:
        """Zero offsets: the module then computes a plain convolution."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.conv_offset(x), self.weight, self.stride, self.padding, self.dilation,
                             self.deform_groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, deform_groups={self.deform_groups}")

"""Winograd F(4x4, 3x3) convolution: an inference-only replacement for wide 3x3 convolutions on CPU.

A 3x3 stride-1 convolution computes each 4x4 block of outputs from a 6x6 block of inputs. Winograd's
minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016) does it with 36 multiplications per (input channel, output channel) pair instead of 144:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (per 6x6 input tile d, 3x3 filter g)

Summed over input channels, the elementwise product becomes 36 independent matrix products
(tiles x C) @ (C x K), which is where the time goes; the transforms are small matrix products.
On the CPUs knet runs on, oneDNN's direct convolution does not use Winograd, and the wide 3x3
convolutions of K-Net's heads (UPerNet's 2048 -> 512 bottleneck at stride 4, FCN's 2048 -> 512)
and of the dilated ResNet's last stages are most of a forward: this halves their time.

Dilation ``d`` is handled without any extra arithmetic: the outputs whose coordinates are equal
modulo ``d`` form an undilated convolution over the inputs with the same residue, so tiles are
taken with a stride of ``d`` inside them.

The result differs from the direct convolution by float rounding only (the transforms' constants
are exact in binary except 1/6, 1/12 and 1/24, applied to the weights in float64): about 1e-5 of
the output's magnitude in float32, against ~5e-6 for the direct convolution. Tensors are laid out
channels-last (N, H, W, C) internally and the output is a channels-last (N, K, H, W) tensor.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_TILE = 4  # m in F(m x m, 3 x 3)
INPUT_TILE = OUTPUT_TILE + 2  # alpha = m + r - 1

# Lavin & Gray's F(4, 3) matrices, points 0, +-1, +-2 and infinity.
_B_T = [[4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0],
      [-1 / 6, -1 / 6, -1 / 6],
      [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6],
      [1 / 24, -1 / 12, 1 / 6],
      [0, 0, 1]]
_A_T = [[1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1]]

# Bytes of transformed input (36 x tiles x C floats) one matrix product may use; larger inputs
# (big images, batches of sliding windows) go through in bands of tile rows.
TRANSFORM_BUDGET_BYTES = 256 * 2 ** 20


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) filters -> (36, C, K): ``G g G^T`` for each pair, computed in float64."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ij,kcjl,ml->imck", g, weight.detach().double(), g)
    return u.reshape(INPUT_TILE * INPUT_TILE, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


class WinogradConv2d(nn.Module):
    """The 3x3, stride-1, 'same'-padded convolution ``conv`` computed with Winograd F(4x4, 3x3).

    Input (N, C, H, W) float, any memory layout; output (N, K, H, W), channels-last. Holds the
    transformed filters (36, C, K) and the bias (K,) as buffers: it is for inference (gradients
    flow to the input but not to the filters)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not self.supports(conv):
            raise ValueError(f"WinogradConv2d takes a 3x3, stride-1, ungrouped convolution with "
                             f"padding equal to its dilation, not {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.dilation = conv.dilation[0]
        kind = dict(dtype=conv.weight.dtype, device=conv.weight.device)
        self.register_buffer("transformed_weight", transform_weight(conv.weight))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.register_buffer("input_transform", torch.kron(*(2 * [torch.tensor(_B_T, **kind)])))
        self.register_buffer("output_transform", torch.kron(*(2 * [torch.tensor(_A_T, **kind)])))

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.groups == 1 and conv.dilation[0] == conv.dilation[1]
                and conv.padding == conv.dilation and conv.padding_mode == "zeros")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), dilation={self.dilation}, "
                f"bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        d, m, a = self.dilation, OUTPUT_TILE, INPUT_TILE
        tiles_y, tiles_x = math.ceil(height / (d * m)), math.ceil(width / (d * m))
        out_h, out_w = tiles_y * d * m, tiles_x * d * m
        # Channels-last, zero-padded by the convolution's padding plus up to whole tiles.
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, d, d + out_w - width, d, d + out_h - height))
        s_n, s_h, s_w, s_c = padded.stride()
        out = padded.new_empty((batch, out_h, out_w, self.out_channels))
        tiles_per_row = d * d * tiles_x
        rows_per_band = max(1, TRANSFORM_BUDGET_BYTES // (a * a * tiles_per_row * channels * padded.element_size()))
        for n in range(batch):
            for row in range(0, tiles_y, rows_per_band):
                rows = min(rows_per_band, tiles_y - row)
                # Tile (residue ry, tile row t, residue rx, tile column u), element (i, j) is input
                # pixel (ry + d * (t * m + i), rx + d * (u * m + j)) of the padded image.
                tiles = padded[n].as_strided(
                    (d, rows, a, d, tiles_x, a, channels),
                    (s_h, s_h * d * m, s_h * d, s_w, s_w * d * m, s_w * d, s_c),
                    padded.storage_offset() + n * s_n + row * d * m * s_h)
                count = d * rows * d * tiles_x
                data = tiles.permute(2, 5, 0, 1, 3, 4, 6).reshape(a * a, count * channels)
                transformed = (self.input_transform @ data).view(a * a, count, channels)
                products = torch.bmm(transformed, self.transformed_weight)  # (36, tiles, K)
                blocks = (self.output_transform @ products.view(a * a, -1)).view(m, m, d, rows, d, tiles_x, -1)
                # Output row ry + d * (t * m + i): ordered by (t, i, ry); columns likewise.
                band = blocks.permute(3, 0, 2, 5, 1, 4, 6).reshape(rows * m * d, out_w, self.out_channels)
                out[n, row * m * d:(row + rows) * m * d] = band
        out = out[:, :height, :width]
        if self.bias is not None:
            out = out + self.bias
        return out.permute(0, 3, 1, 2)


def use_winograd(model: nn.Module, min_channels: int = 128) -> int:
    """Replace, in place, every float32 ``nn.Conv2d`` that :class:`WinogradConv2d` supports and
    whose input and output widths are at least ``min_channels`` (narrower ones are faster
    direct); returns how many. For an inference copy on CPU (see ``knet.models.fuse``)."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (WinogradConv2d.supports(child) and child.weight.dtype == torch.float32
                    and min(child.in_channels, child.out_channels) >= min_channels):
                setattr(module, name, WinogradConv2d(child))
                replaced += 1
    return replaced


__all__ = ["WinogradConv2d", "use_winograd", "transform_weight"]

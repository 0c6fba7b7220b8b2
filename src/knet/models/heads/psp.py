"""PSPNet head: a pyramid pooling module over the last backbone stage."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .base import SegHead
from ..layers import ConvBNReLU, resize


class PyramidPooling(nn.ModuleList):
    """Average-pool to each scale, 1x1 ConvBNReLU, upsample back: a list of (N, channels, h, w)."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int,
                 align_corners: bool = False) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(in_channels, channels, 1))
            for scale in pool_scales
        )
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [resize(stage(x), x.shape[2:], self.align_corners) for stage in self]


class PSPHead(SegHead):
    """Last stage (N, C, h, w) -> (N, channels, h, w) features; ``cls_seg`` -> logits."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout_ratio: float = 0.1,
                 align_corners: bool = False) -> None:
        super().__init__(channels, num_classes, dropout_ratio)
        self.psp_modules = PyramidPooling(pool_scales, in_channels, channels, align_corners)
        self.bottleneck = ConvBNReLU(in_channels + len(pool_scales) * channels, channels, 3, padding=1)

    def forward_features(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        x = inputs[-1]
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

"""DeepLabV3 head: atrous spatial pyramid pooling plus image-level pooling."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .base import SegHead
from ..layers import ConvBNReLU, resize


class ASPPHead(SegHead):
    """Last stage (N, C, h, w) -> (N, channels, h, w) features; ``cls_seg`` -> logits."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 dilations: Sequence[int] = (1, 12, 24, 36), dropout_ratio: float = 0.1,
                 align_corners: bool = False) -> None:
        super().__init__(channels, num_classes, dropout_ratio)
        self.align_corners = align_corners
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3, padding=1)

    def forward_features(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        x = inputs[-1]
        pooled = resize(self.image_pool(x), x.shape[2:], self.align_corners)
        return self.bottleneck(torch.cat([pooled, *(m(x) for m in self.aspp_modules)], dim=1))

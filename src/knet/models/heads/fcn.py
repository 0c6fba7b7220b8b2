"""FCN head: a stack of 3x3 ConvBNReLU, optionally concatenated with its input."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .base import SegHead
from ..layers import ConvBNReLU


class FCNHead(SegHead):
    """Features of one backbone stage -> (N, channels, h, w); ``cls_seg`` gives class logits.

    Used as K-Net's kernel-generate head (2 convs, input concatenated) and as the auxiliary head
    (1 conv) on stage 3.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int = -1,
                 num_convs: int = 2, concat_input: bool = True, dropout_ratio: float = 0.1) -> None:
        super().__init__(channels, num_classes, dropout_ratio)
        self.in_index = in_index
        convs = [ConvBNReLU(in_channels, channels, 3, padding=1)]
        convs += [ConvBNReLU(channels, channels, 3, padding=1) for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, 3, padding=1) if concat_input else None

    def forward_features(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        x = inputs[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out

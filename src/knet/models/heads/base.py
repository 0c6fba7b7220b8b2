"""What every kernel-generate head shares: a dropout and a 1x1 classifier whose weights are
K-Net's initial kernels."""
from __future__ import annotations

from typing import List

import torch
from torch import nn


class SegHead(nn.Module):
    """Subclasses implement ``forward_features(inputs) -> (N, channels, h, w)``."""

    def __init__(self, channels: int, num_classes: int, dropout_ratio: float) -> None:
        super().__init__()
        self.channels = channels
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        # (num_classes, channels, 1, 1): one kernel per class, reused by the iterative head.
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward_features(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def cls_seg(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, channels, h, w) -> (N, num_classes, h, w) logits."""
        return self.conv_seg(self.dropout(feats))

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.forward_features(inputs))

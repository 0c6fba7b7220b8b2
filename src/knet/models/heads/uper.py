"""UPerNet head: pyramid pooling on the last stage plus a feature pyramid over all four."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .base import SegHead
from ..layers import ConvBNReLU, rebuilt_for_backward, resize, run_block
from .psp import PyramidPooling


class UPerHead(SegHead):
    """Four stages -> (N, channels, h0, w0) features at the first stage's resolution.

    ``recompute_fusion`` (``UPerHeadConfig.recompute_fusion``; off by default, ``knet train
    --low-memory`` turns it on): when training with gradients, the first stage's lateral
    convolution recomputes its activations in the backward pass, and the (N, 4 x channels, h0, w0)
    concatenation the last convolution reads goes through it one image at a time and is rebuilt
    there from the pyramid's maps (kept anyway) instead of kept: at stride 4 these are the largest
    activations of the head, for one 1x1 convolution and three upsamplings more a step."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout_ratio: float = 0.1,
                 align_corners: bool = False, recompute_fusion: bool = False) -> None:
        super().__init__(channels, num_classes, dropout_ratio)
        self.align_corners = align_corners
        self.psp_modules = PyramidPooling(pool_scales, in_channels[-1], channels, align_corners)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, padding=1)
        self.recompute_fusion = recompute_fusion  # a training-time choice, not in the state dict

    def forward_features(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        top = inputs[-1]
        laterals = [run_block(conv, self.recompute_fusion and i == 0, x)
                    for i, (conv, x) in enumerate(zip(self.lateral_convs, inputs))]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        outs.append(laterals[-1])
        size = outs[0].shape[2:]

        def fused(images: slice = slice(None)) -> torch.Tensor:
            return torch.cat([outs[0][images]] + [resize(o[images], size, self.align_corners) for o in outs[1:]], dim=1)

        if not (self.recompute_fusion and self.training and torch.is_grad_enabled()):
            return self.fpn_bottleneck(fused())
        # One image at a time through the convolution, each image's concatenation rebuilt in the
        # backward pass: its backward then holds one image's input and input gradient, not the batch's.
        convolved = []
        for n in range(outs[0].shape[0]):
            features = fused(slice(n, n + 1))
            with rebuilt_for_backward(features, lambda n=n: fused(slice(n, n + 1)).detach()):
                convolved.append(self.fpn_bottleneck.conv(features))
        bottleneck = self.fpn_bottleneck
        return bottleneck.activate(bottleneck.bn(torch.cat(convolved)))

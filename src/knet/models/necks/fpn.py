"""Feature Pyramid Network (Lin et al. 2017) with mmdetection 2.x's ``FPN`` semantics and keys.

Top-down pathway: 1x1 lateral convs bring every used backbone level to ``out_channels``; from the
coarsest level down, each lateral gets the nearest-neighbour upsampled (to its exact size) sum
from the level above; a 3x3 conv then smooths every level. Convs have a bias and no norm or
activation (the K-Net configs' defaults). Optional extra, coarser levels (RetinaNet style) come
from stride-2 3x3 convs or, without extra convs, from stride-2 subsampling.

The K-Net det configs use in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=0,
add_extra_convs='on_input', num_outs=4: four inputs give four outputs, so no extra level (and no
extra conv) exists; the outputs have strides 4, 8, 16, 32.

Keys: ``lateral_convs.{i}.conv.weight/bias``, ``fpn_convs.{i}.conv.weight/bias`` (extra convs
continue the ``fpn_convs`` numbering), as mmdetection's ConvModule-wrapped convs.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

EXTRA_SOURCES = ("on_input", "on_lateral", "on_output")


class ConvBias(nn.Module):
    """A Conv2d with bias held as ``.conv`` (the key layout of mmcv's ConvModule without norm/act)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """(list of backbone maps (N, in_channels[i], H_i, W_i)) -> list of ``num_outs`` maps
    (N, out_channels, H'_l, W'_l), finest first.

    Args:
        in_channels: channels of every backbone level given to ``forward``.
        out_channels: channels of every output level.
        num_outs: number of outputs; more than the used backbone levels adds extra coarser levels.
        start_level: first backbone level used.
        end_level: last backbone level used (inclusive); -1 means the last one. Extra levels are
            only allowed when the last backbone level is used.
        add_extra_convs: False (extra levels by stride-2 subsampling of the last output), True
            (= 'on_input'), or the source of the first extra conv: 'on_input' (the last used
            backbone map), 'on_lateral' (its lateral) or 'on_output' (its FPN output).
        relu_before_extra_convs: apply ReLU to the input of the 2nd and later extra convs.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 end_level: int = -1, add_extra_convs: Union[bool, str] = False,
                 relu_before_extra_convs: bool = False) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        num_ins = len(self.in_channels)
        if end_level == -1 or end_level == num_ins - 1:
            self.backbone_end_level = num_ins
            if num_outs < num_ins - start_level:
                raise ValueError(f"num_outs {num_outs} is below the {num_ins - start_level} used backbone levels")
        else:
            if not start_level <= end_level < num_ins:
                raise ValueError(f"end_level {end_level} is outside [start_level={start_level}, {num_ins})")
            self.backbone_end_level = end_level + 1
            if num_outs != end_level - start_level + 1:
                raise ValueError(f"num_outs {num_outs} must equal the used backbone levels "
                                 f"({end_level - start_level + 1}) when end_level is not the last level")
        self.start_level = start_level
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs is not False and add_extra_convs not in EXTRA_SOURCES:
            raise ValueError(f"add_extra_convs must be a bool or one of {EXTRA_SOURCES}, got {add_extra_convs!r}")
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvBias(self.in_channels[i], out_channels, 1))
            self.fpn_convs.append(ConvBias(out_channels, out_channels, 3, padding=1))
        num_extra = num_outs - (self.backbone_end_level - start_level)
        if add_extra_convs and num_extra > 0:
            for i in range(num_extra):
                from_input = i == 0 and add_extra_convs == "on_input"
                extra_in = self.in_channels[self.backbone_end_level - 1] if from_input else out_channels
                self.fpn_convs.append(ConvBias(extra_in, out_channels, 3, stride=2, padding=1))
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform weights and zero biases (mmdetection's FPN init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} input levels, got {len(inputs)}")
        laterals = [conv(inputs[self.start_level + i]) for i, conv in enumerate(self.lateral_convs)]
        used = len(laterals)
        for i in range(used - 1, 0, -1):
            # Upsample to the finer level's exact size: odd sizes do not double exactly. In place:
            # no backward pass needs the lateral convolution's output.
            laterals[i - 1] += F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]

        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))  # kernel 1: plain subsampling
            else:
                if self.add_extra_convs == "on_input":
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == "on_lateral":
                    source = laterals[-1]
                else:
                    source = outs[-1]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](prev))
        return outs

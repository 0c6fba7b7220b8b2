"""ResNetV1c: ResNet with a deep stem (three 3x3 convs), optionally dilated ("D8" form).

Parameter names equal the reference's (``stem.0``, ``layer1.0.conv1`` ...), so its checkpoints and
ImageNet files load without renaming.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation; "pytorch" style) -> 1x1, expansion 4."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module = None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(in_channels: int, planes: int, num_blocks: int, stride: int, dilation: int,
                contract_dilation: bool) -> nn.Sequential:
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    # With contract_dilation the first block of a dilated stage uses half the dilation, which
    # avoids gridding artefacts where the stride would have been.
    first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
    blocks = [Bottleneck(in_channels, planes, stride, first_dilation, downsample)]
    blocks += [Bottleneck(out_channels, planes, 1, dilation) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class ResNetV1c(nn.Module):
    """Returns the four stage outputs; ``out_channels`` and ``strides`` describe them.

    Input (N,3,H,W) -> [(N,4b,H/4,W/4), (N,8b,H/8,..), (N,16b,..), (N,32b,..)] for the plain form
    (b = base_channels); the D8 form keeps the last two stages at 1/8.
    """

    def __init__(self, depth: int = 50, stem_channels: int = 64, base_channels: int = 64,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 contract_dilation: bool = False, norm_eval: bool = False) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNetV1c depth {depth} is not supported; valid: {sorted(DEPTHS)}")
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.norm_eval = norm_eval
        in_channels = stem_channels
        self.out_channels: List[int] = []
        self.strides: List[int] = []
        total_stride = 4
        for i, num_blocks in enumerate(DEPTHS[depth]):
            planes = base_channels * 2 ** i
            layer = _make_layer(in_channels, planes, num_blocks, strides[i], dilations[i], contract_dilation)
            self.add_module(f"layer{i + 1}", layer)
            in_channels = planes * Bottleneck.expansion
            total_stride *= strides[i]
            self.out_channels.append(in_channels)
            self.strides.append(total_stride)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs

    def train(self, mode: bool = True) -> "ResNetV1c":
        super().train(mode)
        if mode and self.norm_eval:  # keep BatchNorm statistics frozen while fine-tuning
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

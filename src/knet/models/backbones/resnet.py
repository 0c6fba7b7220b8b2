"""ResNet (bottleneck, "pytorch" style: the stride sits on the 3x3 conv) in the two forms K-Net uses.

* :class:`ResNet` with the plain stem (7x7 stride-2 ``conv1`` + ``bn1`` + ReLU + 3x3 max-pool), as
  mmdetection's ``ResNet`` builds it for the panoptic / instance models. Its keys (``conv1``,
  ``bn1``, ``layerX.Y.conv1/bn1/conv2/bn2/conv3/bn3``, ``layerX.0.downsample.0/1``) equal
  mmdetection's and torchvision's ImageNet layout (less ``fc``). Optional deformable 3x3 convs
  (``dcn_stages``, mmcv's ``DCN``: keys ``conv2.weight`` and ``conv2.conv_offset.*``), frozen early
  stages and frozen BatchNorm statistics.
* :class:`ResNetV1c`, the same network with the deep stem (three 3x3 convs, keys ``stem.*``) and
  optional dilation ("D8" form), as the semantic models use (mmsegmentation's ``ResNetV1c``).

Both return the four stage outputs; ``out_channels`` and ``strides`` describe them.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import run_block
from .deform_conv import DeformConv2dPack

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation; "pytorch" style) -> 1x1, expansion 4.

    With ``dcn`` the 3x3 conv is deformable (also when strided: mmdet's ``fallback_on_stride=False``).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, dcn: bool = False, deform_groups: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if dcn:
            self.conv2 = DeformConv2dPack(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                                          deform_groups=deform_groups)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                                   bias=False)
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
        # In place (no backward pass needs bn3's output, and a copy costs a pass over memory) unless
        # the sum must be promoted to the identity's wider dtype.
        out = out.add_(identity) if out.dtype == identity.dtype else out + identity
        return self.relu(out)


def _make_layer(in_channels: int, planes: int, num_blocks: int, stride: int, dilation: int,
                contract_dilation: bool, dcn: bool = False, deform_groups: int = 1) -> nn.Sequential:
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
    blocks = [Bottleneck(in_channels, planes, stride, first_dilation, downsample, dcn, deform_groups)]
    blocks += [Bottleneck(out_channels, planes, 1, dilation, dcn=dcn, deform_groups=deform_groups)
               for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Bottleneck ResNet returning the four stage outputs.

    ``prefers_channels_last``: an inference copy of a model with this backbone runs channels-last
    (:func:`knet.models.fuse.inference_copy`): oneDNN's convolutions, pooling and resizes, and
    Winograd's tile copies, are faster in that layout.

    Input (N,3,H,W) -> [(N,4b,H/4,W/4), (N,8b,H/8,..), (N,16b,H/16,..), (N,32b,H/32,..)] with
    b = ``base_channels`` and the default strides (sizes round up like the convs do); dilated
    stages keep the previous stride.

    Args:
        depth: 50 or 101.
        stem_channels: channels after the stem; None means ``base_channels`` (mmdetection's rule).
        base_channels: width of layer1's bottleneck (stage i uses ``base_channels * 2**i``).
        deep_stem: three 3x3 convs (``stem.*``, ResNetV1c) instead of one 7x7 conv (``conv1``/``bn1``).
        strides, dilations: per stage; ``contract_dilation`` halves the first block's dilation.
        dcn_stages: per stage, whether every bottleneck's 3x3 conv is deformable.
        deform_groups: offset groups of those deformable convs.
        frozen_stages: -1 freezes nothing; k >= 0 freezes the stem and layer1..layerk (no
            gradients, kept in eval mode).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) while training.
        zero_init_residual: initialise each block's last BN weight to 0 (mmdetection's default when
            training from scratch; irrelevant once ImageNet weights are loaded).
        recompute_stages: stages (0-3) whose blocks recompute their activations in the backward
            pass instead of keeping them (:func:`~knet.models.layers.run_block`): less memory for
            more time, the same values, gradients and BatchNorm statistics.
    """

    prefers_channels_last = True

    def __init__(self, depth: int = 50, stem_channels: Optional[int] = None, base_channels: int = 64,
                 deep_stem: bool = False, strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1), contract_dilation: bool = False,
                 dcn_stages: Sequence[bool] = (False, False, False, False), deform_groups: int = 1,
                 frozen_stages: int = -1, norm_eval: bool = False, zero_init_residual: bool = False,
                 recompute_stages: Sequence[int] = ()) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth {depth} is not supported; valid: {sorted(DEPTHS)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        for name, value in (("strides", strides), ("dilations", dilations), ("dcn_stages", dcn_stages)):
            if len(value) != 4:
                raise ValueError(f"{name} needs one entry per stage (4), got {tuple(value)}")
        if any(not 0 <= i < 4 for i in recompute_stages):
            raise ValueError(f"recompute_stages must be stages 0-3, got {tuple(recompute_stages)}")
        stem_channels = base_channels if stem_channels is None else stem_channels
        self.deep_stem = deep_stem
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        # A training-time choice, not in the state dict; may be changed after building.
        self.recompute_stages: Tuple[int, ...] = tuple(recompute_stages)
        if deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels),
                nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_channels)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = stem_channels
        self.out_channels: List[int] = []
        self.strides: List[int] = []
        total_stride = 4
        for i, num_blocks in enumerate(DEPTHS[depth]):
            planes = base_channels * 2 ** i
            layer = _make_layer(in_channels, planes, num_blocks, strides[i], dilations[i], contract_dilation,
                                dcn=bool(dcn_stages[i]), deform_groups=deform_groups)
            self.add_module(f"layer{i + 1}", layer)
            in_channels = planes * Bottleneck.expansion
            total_stride *= strides[i]
            self.out_channels.append(in_channels)
            self.strides.append(total_stride)
        self._init_weights(zero_init_residual)
        self._freeze_stages()

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2dPack)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformConv2dPack):
                m.reset_offset()  # undo the generic conv init above: start as a plain conv
            elif zero_init_residual and isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [self.stem] if self.deep_stem else [self.conv1, self.bn1]
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i in range(4):
            for block in getattr(self, f"layer{i + 1}"):
                x = run_block(block, i in self.recompute_stages, x)
            outs.append(x)
        return outs

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._freeze_stages()  # frozen stages stay in eval mode whatever the caller asks
        if mode and self.norm_eval:  # keep BatchNorm statistics frozen while fine-tuning
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


class ResNetV1c(ResNet):
    """ResNet with the deep stem (``stem.*``) and optional dilation, as the semantic models use.

    Input (N,3,H,W) -> [(N,4b,H/4,W/4), (N,8b,H/8,..), (N,16b,..), (N,32b,..)] for the plain form
    (b = base_channels); the D8 form keeps the last two stages at 1/8.
    """

    def __init__(self, depth: int = 50, stem_channels: int = 64, base_channels: int = 64,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 contract_dilation: bool = False, norm_eval: bool = False, frozen_stages: int = -1,
                 recompute_stages: Sequence[int] = ()) -> None:
        super().__init__(depth=depth, stem_channels=stem_channels, base_channels=base_channels, deep_stem=True,
                         strides=strides, dilations=dilations, contract_dilation=contract_dilation,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, recompute_stages=recompute_stages)

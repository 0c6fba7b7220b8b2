"""The panoptic/instance K-Net's kernel head (the reference's ``ConvKernelHead``, its "rpn_head").

From the FPN's four levels it builds one stride-8 feature map, the initial mask logits of the
learned proposal kernels, and the semantic logits whose classifier rows double as the stuff
kernels of the panoptic model. Attribute names equal the reference's state-dict keys after
``rpn_head.``.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence

import torch
from torch import nn

from ..layers import run_block


def sine_positional_encoding(batch: int, height: int, width: int, num_feats: int, temperature: float = 10000.0,
                             scale: float = 2 * math.pi, eps: float = 1e-6,
                             device: torch.device | None = None) -> torch.Tensor:
    """DETR's normalised sine encoding of an unpadded (height, width) grid -> (batch, 2*num_feats, H, W).

    Channels: num_feats for y, then num_feats for x; within each, sin and cos interleaved
    (sin of even frequency indices, cos of odd ones). Positions count from 1 and are normalised
    to (0, scale]. The arithmetic follows the reference's float32 order step by step.
    """
    ones = torch.ones(batch, height, width, device=device)
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    # The last row/column (the largest count) taken as a max, not a [-1:] slice: the same values,
    # and a size-1 axis that the ONNX exporter knows broadcasts, for every input size.
    y_embed = y_embed / (y_embed.amax(dim=1, keepdim=True) + eps) * scale
    x_embed = x_embed / (x_embed.amax(dim=2, keepdim=True) + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).reshape(batch, height, width, -1)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).reshape(batch, height, width, -1)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class ConvGNReLU(nn.Module):
    """Conv2d (no bias) -> GroupNorm -> ReLU; ``conv``/``gn`` as the reference's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_groups: int,
                 stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.gn(self.conv(x)))


class SemanticFPNWrapper(nn.Module):
    """Panoptic-FPN-style fusion of the four FPN levels into one map at level ``out_level``'s stride.

    Level 0 (stride 4) goes through ``out_level`` stride-2 3x3 convs (one plain conv when
    out_level = 0); level i >= 1 through i 3x3 convs, the first ``i - out_level`` each followed by
    a x2 bilinear upsampling. The coarsest level first gets a normalised sine positional encoding
    added (2 * pos_num_feats must equal in_channels). The fused sum feeds two 1x1 conv branches:
    ``conv_pred`` (localisation) and ``aux_convs[0]`` (semantics).

    ``forward(feats)``: four (B, in_channels, H/4/2**l, W/4/2**l) maps -> [loc, sem], each
    (B, out_channels, H/4/2**out_level, W/4/2**out_level).
    """

    def __init__(self, in_channels: int = 256, feat_channels: int = 256, out_channels: int = 256,
                 num_groups: int = 32, out_level: int = 1, num_levels: int = 4,
                 pos_num_feats: int | None = 128) -> None:
        super().__init__()
        if out_level not in (0, 1):
            # The reference's layer rule gives inconsistent strides for a coarser output level.
            raise ValueError(f"out_level must be 0 or 1 (stride 4 or 8), got {out_level}")
        if pos_num_feats is not None and 2 * pos_num_feats != in_channels:
            raise ValueError(f"the positional encoding has 2*{pos_num_feats} channels, the features {in_channels}")
        self.out_level = out_level
        self.pos_num_feats = pos_num_feats
        self.convs_all_levels = nn.ModuleList()
        for level in range(num_levels):
            convs = nn.Sequential()
            if level == 0:
                for j in range(max(out_level, 1)):
                    convs.add_module(f"conv{j}", ConvGNReLU(in_channels if j == 0 else feat_channels, feat_channels,
                                                            3, num_groups, stride=2 if out_level else 1))
            else:
                for j in range(level):
                    convs.add_module(f"conv{j}", ConvGNReLU(in_channels if j == 0 else feat_channels, feat_channels,
                                                            3, num_groups))
                    if j < level - out_level:
                        convs.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear",
                                                                     align_corners=False))
            self.convs_all_levels.append(convs)
        self.conv_pred = ConvGNReLU(feat_channels, out_channels, 1, num_groups)
        self.aux_convs = nn.ModuleList([ConvGNReLU(feat_channels, out_channels, 1, num_groups)])

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        fused = 0
        for level, (x, convs) in enumerate(zip(feats, self.convs_all_levels)):
            if level == len(self.convs_all_levels) - 1 and self.pos_num_feats is not None:
                batch, _, height, width = x.shape
                x = x + sine_positional_encoding(batch, height, width, self.pos_num_feats, device=x.device).to(x.dtype)
            fused = fused + convs(x)
        return [self.conv_pred(fused), self.aux_convs[0](fused)]


class KernelHeadOutput(NamedTuple):
    """What the kernel head gives the update stages.

    kernels: (B, K, C, 1, 1) initial kernels, K = num_proposals (+ num_stuff_classes, panoptic).
    feats: (B, C, h, w) stride-8 features (semantic + localisation), input of every stage.
    mask_logits: (B, K, h, w) initial mask logits (panoptic: the stuff classes' semantic logits
        appended after the proposals').
    semantic_logits: (B, num_thing_classes + num_stuff_classes, h, w) ``conv_seg`` logits.
    """

    kernels: torch.Tensor
    feats: torch.Tensor
    mask_logits: torch.Tensor
    semantic_logits: torch.Tensor


class ConvKernelHead(nn.Module):
    """FPN features -> initial kernels, features, initial masks and semantic logits.

    The localisation branch (``conv_pred`` -> ``loc_convs``) gives the initial masks through
    ``init_kernels`` (one learned 1x1 kernel per proposal); the semantic branch (``aux_convs`` ->
    ``seg_convs``) gives the semantic logits through ``conv_seg``. Each proposal kernel starts as
    its ``init_kernels`` weight plus the SUM of the (semantic + localisation) features under its
    binarised initial mask (sigmoid > 0.5). Panoptic (``num_stuff_classes > 0``): the stuff rows
    of ``conv_seg`` are appended as kernels, their semantic logits as their masks.
    """

    def __init__(self, in_channels: int = 256, channels: int = 256, num_proposals: int = 100,
                 num_thing_classes: int = 80, num_stuff_classes: int = 53, num_groups: int = 32,
                 fpn_num_groups: int | None = None, pos_num_feats: int | None = None,
                 num_loc_convs: int = 1, num_seg_convs: int = 1, recompute_fusion: bool = False) -> None:
        super().__init__()
        self.recompute_fusion = recompute_fusion  # a training-time choice, not in the state dict
        self.num_proposals = num_proposals
        self.num_thing_classes = num_thing_classes
        self.num_stuff_classes = num_stuff_classes
        self.localization_fpn = SemanticFPNWrapper(
            in_channels, channels, channels, num_groups=fpn_num_groups or num_groups,
            pos_num_feats=pos_num_feats if pos_num_feats is not None else in_channels // 2)
        self.init_kernels = nn.Conv2d(channels, num_proposals, 1, bias=False)
        self.conv_seg = nn.Conv2d(channels, num_thing_classes + num_stuff_classes, 1)
        self.loc_convs = nn.ModuleList(ConvGNReLU(channels, channels, 1, num_groups) for _ in range(num_loc_convs))
        self.seg_convs = nn.ModuleList(ConvGNReLU(channels, channels, 1, num_groups) for _ in range(num_seg_convs))

    def init_weights(self, kernel_init_std: float = 1.0, prior_prob: float = 0.01) -> None:
        """The reference's initialisation: every conv N(0, 0.01) with zero bias, the proposal
        kernels N(0, kernel_init_std) (1 in the configs), ``conv_seg``'s bias at the focal prior."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.init_kernels.weight, 0.0, kernel_init_std)
        nn.init.constant_(self.conv_seg.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[torch.Tensor]) -> KernelHeadOutput:
        loc_feats, sem_feats = run_block(self.localization_fpn, self.recompute_fusion, feats)
        for conv in self.loc_convs:
            loc_feats = conv(loc_feats)
        for conv in self.seg_convs:
            sem_feats = conv(sem_feats)
        mask_logits = self.init_kernels(loc_feats)
        semantic_logits = self.conv_seg(sem_feats)
        x_feats = sem_feats + loc_feats

        batch = x_feats.shape[0]
        binary_masks = (mask_logits.sigmoid() > 0.5).to(x_feats.dtype)
        object_feats = torch.einsum("bnhw,bchw->bnc", binary_masks, x_feats)
        kernels = self.init_kernels.weight[None] + object_feats[..., None, None]  # (B, N, C, 1, 1)

        if self.num_stuff_classes > 0:
            stuff_kernels = self.conv_seg.weight[self.num_thing_classes:]
            kernels = torch.cat([kernels, stuff_kernels[None].expand(batch, *stuff_kernels.shape)], dim=1)
            mask_logits = torch.cat([mask_logits, semantic_logits[:, self.num_thing_classes:]], dim=1)
        return KernelHeadOutput(kernels, x_feats, mask_logits, semantic_logits)

"""K-Net's decode head: a kernel-generate head followed by iterative kernel-update stages."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ...config import KernelGenerateHeadConfig, KernelUpdateConfig
from ..heads import build_kernel_generate_head
from .kernel_update_head import KernelUpdateHead


class IterativeDecodeHead(nn.Module):
    """Backbone features -> class logits of every stage.

    The kernel-generate head's classifier weights (num_classes, C, 1, 1) are the initial kernels
    and its logits the initial masks; each stage refines both.
    ``forward`` returns a list of num_stages + 1 logits (B, num_classes, h, w), initial first;
    with ``all_stages=False`` only the last stage's (the earlier ones are dropped as soon as the
    next stage has used them).
    """

    def __init__(self, head_cfg: KernelGenerateHeadConfig, update_cfg: KernelUpdateConfig,
                 in_channels: Sequence[int], num_classes: int, align_corners: bool = False) -> None:
        super().__init__()
        self.kernel_generate_head = build_kernel_generate_head(head_cfg, in_channels, num_classes, align_corners)
        channels = head_cfg.channels
        self.kernel_update_head = nn.ModuleList(
            KernelUpdateHead(
                in_channels=channels,
                out_channels=channels,
                num_heads=update_cfg.num_heads,
                feedforward_channels=update_cfg.feedforward_channels,
                updator_channels=update_cfg.updator_channels,
                num_ffn_fcs=update_cfg.num_ffn_fcs,
                num_mask_fcs=update_cfg.num_mask_fcs,
                conv_kernel_size=update_cfg.conv_kernel_size,
                dropout=update_cfg.dropout,
            )
            for _ in range(update_cfg.num_stages)
        )
        self._init_update_heads()

    def _init_update_heads(self) -> None:
        # As the reference: Xavier-uniform for every matrix of the kernel-update stages.
        for p in self.kernel_update_head.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, inputs: List[torch.Tensor], all_stages: bool = True) -> List[torch.Tensor]:
        head = self.kernel_generate_head
        feats = head.forward_features(inputs)
        masks = head.cls_seg(feats)
        kernels = head.conv_seg.weight.clone()[None].expand(feats.shape[0], *head.conv_seg.weight.shape)
        stage_masks = [masks]
        for stage in self.kernel_update_head:
            masks, kernels = stage(feats, kernels, masks)
            stage_masks = stage_masks + [masks] if all_stages else [masks]
        return stage_masks

"""One K-Net stage: assemble group features with the current masks, update the kernels, let the
kernels attend to each other, and predict new masks with the updated kernels.

The same stage serves the semantic model (the reference's ``knet/seg`` head) and the panoptic and
instance models (``knet/det``). They differ only in how masks gather features (``mask_gather``:
a softmax across the kernels vs. each kernel's own binarised sigmoid) and in the class branch the
panoptic/instance stages add (``num_classes``); parameter names equal the reference's in both.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import resize
from .kernel_updator import KernelUpdator


class KernelAttention(nn.Module):
    """Multi-head self-attention among the kernels of one image, with a residual connection."""

    def __init__(self, embed_dims: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        return x + self.attn(x, x, x, need_weights=False)[0]


class FFN(nn.Module):
    """Two-layer MLP with a residual connection; ``layers.0.0``/``layers.1`` as in the reference."""

    def __init__(self, embed_dims: int, feedforward_channels: int, num_fcs: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if num_fcs < 2:
            raise ValueError(f"FFN needs at least 2 fully connected layers, got num_fcs={num_fcs}")
        layers = []
        in_channels = embed_dims
        for _ in range(num_fcs - 1):
            layers.append(nn.Sequential(nn.Linear(in_channels, feedforward_channels), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout)))
            in_channels = feedforward_channels
        layers += [nn.Linear(feedforward_channels, embed_dims), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class FeatTransform(nn.Module):
    """1x1 conv (with bias, no norm, no activation) applied to the features before each stage."""

    def __init__(self, channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _linear_norm_relu_blocks(channels: int, num_blocks: int) -> nn.Sequential:
    """``num_blocks`` x (Linear without bias -> LayerNorm -> ReLU); keys ``{3i}.weight``,
    ``{3i+1}.weight/bias`` as the reference's ModuleLists."""
    layers = []
    for _ in range(num_blocks):
        layers += [nn.Linear(channels, channels, bias=False), nn.LayerNorm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class KernelUpdateHead(nn.Module):
    """A kernel-update stage.

    ``forward(feats, kernels, masks)``:
        feats: (B, C, H, W) features; kernels: (B, N, C, K, K); masks: (B, N, h, w) logits.
    Returns new mask logits (B, N, H, W) and updated kernels (B, N, C, K, K).
    ``class_logits(kernels)`` gives the stage's (B, N, num_classes) class logits from the updated
    kernels (stages built with ``num_classes``).

    Args:
        mask_gather: how the previous masks weight the features each kernel assembles:
            ``"softmax"`` (semantic K-Net: the class masks compete at every pixel) or ``"binary"``
            (panoptic/instance K-Net: each kernel sums the features where its own
            sigmoid(mask) > ``hard_mask_thr``).
        num_classes: width of the class branch (``cls_fcs`` -> ``fc_cls``, sigmoid outputs);
            None for no class branch (semantic K-Net).
        num_cls_fcs: Linear-LayerNorm-ReLU blocks before ``fc_cls``.
        updator_channels: the KernelUpdator's width; kernels wider than it are updated as
            independent chunks (the semantic models' 512-wide kernels in two 256-wide halves).
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 256, num_heads: int = 8,
                 feedforward_channels: int = 2048, updator_channels: int = 256, num_ffn_fcs: int = 2,
                 num_mask_fcs: int = 1, conv_kernel_size: int = 1, dropout: float = 0.0,
                 mask_gather: str = "softmax", hard_mask_thr: float = 0.5,
                 num_classes: Optional[int] = None, num_cls_fcs: int = 1) -> None:
        super().__init__()
        if mask_gather not in ("softmax", "binary"):
            raise ValueError(f"mask_gather must be 'softmax' or 'binary', got {mask_gather!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_kernel_size = conv_kernel_size
        self.mask_gather = mask_gather
        self.hard_mask_thr = hard_mask_thr
        self.num_classes = num_classes
        embed = in_channels * conv_kernel_size ** 2
        self.attention = KernelAttention(embed, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(embed)
        self.kernel_update_conv = KernelUpdator(updator_channels, updator_channels, updator_channels)
        self.feat_transform = FeatTransform(in_channels)
        self.ffn = FFN(in_channels, feedforward_channels, num_ffn_fcs, dropout)
        self.ffn_norm = nn.LayerNorm(in_channels)
        if num_classes is not None:
            self.cls_fcs = _linear_norm_relu_blocks(in_channels, num_cls_fcs)
            self.fc_cls = nn.Linear(in_channels, num_classes)
        self.mask_fcs = _linear_norm_relu_blocks(in_channels, num_mask_fcs)
        self.fc_mask = nn.Linear(in_channels, out_channels)

    def init_weights(self, prior_prob: float = 0.01) -> None:
        """The reference's initialisation of a panoptic/instance stage: Xavier-uniform for every
        matrix, and the class bias set so that every sigmoid output starts at ``prior_prob`` (focal
        loss prior). Norm layers and the other biases keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if self.num_classes is not None:
            nn.init.constant_(self.fc_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: torch.Tensor, kernels: torch.Tensor,
                masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch, num_kernels = kernels.shape[:2]
        k = self.conv_kernel_size
        feats = self.feat_transform(feats)
        height, width = feats.shape[-2:]

        # Group feature assembling: every mask pools the features it covers into one vector.
        # The weights are laid out (B, H W, N): the softmax over the kernels is then over the last
        # axis, and the pooling a plain (B, C, H W) @ (B, H W, N) product. ONNX Runtime's softmax
        # over the second of four axes and its einsum were each ~10% of Swin-T UPerNet's forward.
        weights = resize(masks, (height, width)).flatten(2).transpose(1, 2)
        if self.mask_gather == "softmax":
            if weights.dtype in (torch.bfloat16, torch.float16):
                weights = weights.float()  # the softmax in float32 under bf16/fp16 autocast
            weights = weights.softmax(dim=-1)
        else:
            weights = (weights.sigmoid() > self.hard_mask_thr).to(feats.dtype)
        group_feats = torch.matmul(feats.flatten(2), weights).transpose(1, 2)  # (B, N, C)

        # (B, N, C, K, K) -> (B, N, K*K, C)
        kernels = kernels.reshape(batch, num_kernels, self.in_channels, -1).permute(0, 1, 3, 2)
        kernels = self.kernel_update_conv(group_feats, kernels)

        # Kernel interaction: attention over the N kernels of each image.
        kernels = kernels.reshape(batch, num_kernels, -1)
        kernels = self.attention_norm(self.attention(kernels))
        kernels = kernels.reshape(batch, num_kernels, -1, self.in_channels)  # (B, N, K*K, C)
        kernels = self.ffn_norm(self.ffn(kernels))

        mask_kernels = self.fc_mask(self.mask_fcs(kernels)).permute(0, 1, 3, 2)  # (B, N, C_out, K*K)
        new_masks = self._dynamic_conv(feats, mask_kernels.reshape(batch, num_kernels, self.out_channels, k, k))
        kernels = kernels.permute(0, 1, 3, 2).reshape(batch, num_kernels, self.in_channels, k, k)
        return new_masks, kernels

    def class_logits(self, kernels: torch.Tensor) -> torch.Tensor:
        """(B, N, C, K, K) updated kernels -> (B, N, num_classes) logits (before the sigmoid).

        A kernel's K*K positions are summed into one vector before the class branch.
        """
        if self.num_classes is None:
            raise RuntimeError("this stage was built without a class branch (num_classes=None)")
        return self.fc_cls(self.cls_fcs(kernels.flatten(3).sum(-1)))

    @staticmethod
    def _dynamic_conv(feats: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Each image convolved with its own kernels, in one batched op.

        feats (B, C, H, W), kernels (B, N, C, K, K) -> (B, N, H, W).
        """
        batch, num_kernels, channels, k, _ = kernels.shape
        height, width = feats.shape[-2:]
        if k == 1:
            out = torch.matmul(kernels.reshape(batch, num_kernels, channels), feats.flatten(2))
            return out.view(batch, num_kernels, height, width)
        out = F.conv2d(feats.reshape(1, batch * channels, height, width),
                       kernels.reshape(batch * num_kernels, channels, k, k), padding=k // 2, groups=batch)
        return out.reshape(batch, num_kernels, height, width)

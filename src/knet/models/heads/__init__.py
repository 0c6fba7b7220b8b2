"""Kernel-generate heads, by config kind. Each takes the backbone's four feature maps.

``HEADS`` maps a head config's ``kind`` (see ``knet.config.HEAD_CONFIGS``) to a builder taking
that kind's config dataclass, the backbone's ``out_channels``, the number of classes and
``align_corners``.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from torch import nn

from ...config import ASPPHeadConfig, FCNHeadConfig, KernelGenerateHeadConfig, PSPHeadConfig, UPerHeadConfig
from ...errors import KnetError
from .aspp import ASPPHead
from .base import SegHead
from .fcn import FCNHead
from .psp import PSPHead
from .uper import UPerHead


def _fcn(cfg: FCNHeadConfig, in_channels: Sequence[int], num_classes: int, align_corners: bool) -> SegHead:
    return FCNHead(in_channels[-1], cfg.channels, num_classes, in_index=-1, num_convs=cfg.num_convs,
                   concat_input=cfg.concat_input, dropout_ratio=cfg.dropout_ratio)


def _psp(cfg: PSPHeadConfig, in_channels: Sequence[int], num_classes: int, align_corners: bool) -> SegHead:
    return PSPHead(in_channels[-1], cfg.channels, num_classes, cfg.pool_scales, cfg.dropout_ratio, align_corners)


def _aspp(cfg: ASPPHeadConfig, in_channels: Sequence[int], num_classes: int, align_corners: bool) -> SegHead:
    return ASPPHead(in_channels[-1], cfg.channels, num_classes, cfg.dilations, cfg.dropout_ratio, align_corners)


def _uper(cfg: UPerHeadConfig, in_channels: Sequence[int], num_classes: int, align_corners: bool) -> SegHead:
    return UPerHead(in_channels, cfg.channels, num_classes, cfg.pool_scales, cfg.dropout_ratio, align_corners,
                    recompute_fusion=cfg.recompute_fusion)


HEADS: Dict[str, Callable[..., SegHead]] = {"fcn": _fcn, "psp": _psp, "aspp": _aspp, "uper": _uper}


def build_kernel_generate_head(cfg: KernelGenerateHeadConfig, in_channels: Sequence[int], num_classes: int,
                               align_corners: bool = False) -> nn.Module:
    if cfg.kind not in HEADS:
        raise KnetError(f"decode_head.kind: unknown head {cfg.kind!r}; valid: {', '.join(HEADS)}")
    return HEADS[cfg.kind](cfg, list(in_channels), num_classes, align_corners)


__all__ = ["HEADS", "build_kernel_generate_head", "FCNHead", "PSPHead", "ASPPHead", "UPerHead", "SegHead"]

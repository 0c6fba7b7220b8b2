"""Backbones and their builders.

``BACKBONES`` maps a config's ``kind`` to a builder taking that kind's config dataclass;
:func:`build_backbone` dispatches on ``cfg.kind``. Every backbone returns a list of four feature
maps and declares ``out_channels`` and ``strides``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from torch import nn

from ...config import PlainResNetConfig, ResNetConfig, SwinConfig
from ...errors import KnetError
from .resnet import ResNet, ResNetV1c
from .swin import SwinTransformer

__all__ = ["BACKBONES", "ResNet", "ResNetV1c", "SwinTransformer", "build_backbone"]


def _build_resnet_v1c(cfg: ResNetConfig) -> ResNetV1c:
    return ResNetV1c(depth=cfg.depth, stem_channels=cfg.stem_channels, base_channels=cfg.base_channels,
                     strides=tuple(cfg.strides), dilations=tuple(cfg.dilations),
                     contract_dilation=cfg.contract_dilation, norm_eval=cfg.norm_eval,
                     recompute_stages=tuple(cfg.recompute_stages))


def _build_resnet(cfg: PlainResNetConfig) -> ResNet:
    return ResNet(depth=cfg.depth, base_channels=cfg.base_channels, dcn_stages=tuple(cfg.dcn_stages),
                  deform_groups=cfg.deform_groups, frozen_stages=cfg.frozen_stages, norm_eval=cfg.norm_eval,
                  recompute_stages=tuple(cfg.recompute_stages))


def _build_swin(cfg: SwinConfig) -> SwinTransformer:
    return SwinTransformer(embed_dims=cfg.embed_dims, depths=tuple(cfg.depths), num_heads=tuple(cfg.num_heads),
                           window_size=cfg.window_size, patch_size=cfg.patch_size, mlp_ratio=cfg.mlp_ratio,
                           qkv_bias=cfg.qkv_bias, drop_rate=cfg.drop_rate, attn_drop_rate=cfg.attn_drop_rate,
                           drop_path_rate=cfg.drop_path_rate, recompute_stages=tuple(cfg.recompute_stages))


BACKBONES: Dict[str, Callable[[Any], nn.Module]] = {
    "resnet_v1c": _build_resnet_v1c,
    "resnet": _build_resnet,
    "swin": _build_swin,
}


def build_backbone(cfg: Any) -> nn.Module:
    """Build the backbone described by ``cfg`` (a :class:`ResNetConfig`, :class:`PlainResNetConfig`
    or :class:`SwinConfig`)."""
    kind = getattr(cfg, "kind", None)
    if kind not in BACKBONES:
        raise KnetError(f"unknown backbone kind {kind!r}; valid kinds: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[kind](cfg)

"""The seven rows of K-Net's ADE20K results table, and a ``-tiny`` twin of each.

A ``-tiny`` preset keeps every structural feature of its row (dilations, strides, pool scales,
shifted windows, three kernel-update stages, 150 classes, the auxiliary head) and shrinks only the
widths, to exactly those of the reference's golden files in ``shared/goldens``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List

from .errors import KnetError
from .config import (
    HEAD_CONFIGS,
    DataConfig,
    KNetConfig,
    ResNetConfig,
    SwinConfig,
    TrainConfig,
)

# Parameters whose reference key contains one of these get no weight decay in the Swin recipes.
SWIN_NO_DECAY_KEYS = ("norm", "relative_position_bias_table", "absolute_pos_embed")


def _resnet_d8() -> ResNetConfig:
    return ResNetConfig(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))


def _resnet_plain() -> ResNetConfig:
    return ResNetConfig(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))


def _swin_t() -> SwinConfig:
    return SwinConfig(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)


def _swin_l() -> SwinConfig:
    return SwinConfig(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.4)


def _swin_train() -> TrainConfig:
    return TrainConfig(lr=6e-5, betas=(0.9, 0.999), weight_decay=5e-4, no_decay_keys=SWIN_NO_DECAY_KEYS)


def _data_640() -> DataConfig:
    return DataConfig(crop_size=(640, 640), train_scale=(2048, 640), test_scale=(2048, 640))


def _row(name: str, backbone, head_kind: str, train: TrainConfig = None, data: DataConfig = None) -> KNetConfig:
    return KNetConfig(
        name=name,
        backbone=backbone,
        decode_head=HEAD_CONFIGS[head_kind](),
        train=train or TrainConfig(),
        data=data or DataConfig(),
    )


_FULL: Dict[str, Callable[[], KNetConfig]] = {
    "knet-r50-fcn": lambda: _row("knet-r50-fcn", _resnet_d8(), "fcn"),
    "knet-r50-pspnet": lambda: _row("knet-r50-pspnet", _resnet_d8(), "psp"),
    "knet-r50-deeplabv3": lambda: _row("knet-r50-deeplabv3", _resnet_d8(), "aspp"),
    "knet-r50-upernet": lambda: _row("knet-r50-upernet", _resnet_plain(), "uper"),
    "knet-swin-t-upernet": lambda: _row("knet-swin-t-upernet", _swin_t(), "uper", _swin_train()),
    "knet-swin-l-upernet": lambda: _row("knet-swin-l-upernet", _swin_l(), "uper", _swin_train()),
    "knet-swin-l-upernet-640": lambda: _row(
        "knet-swin-l-upernet-640", _swin_l(), "uper", _swin_train(), _data_640()
    ),
}

# Reference checkpoint of each row (users download them; see README).
REFERENCE_CHECKPOINTS: Dict[str, str] = {
    name: "https://download.openmmlab.com/mmsegmentation/v0.5/knet/" + path
    for name, path in {
        "knet-r50-fcn": "knet_s3_fcn_r50-d8_8x2_512x512_adamw_80k_ade20k/knet_s3_fcn_r50-d8_8x2_512x512_adamw_80k_ade20k_20220228_043751-abcab920.pth",
        "knet-r50-pspnet": "knet_s3_pspnet_r50-d8_8x2_512x512_adamw_80k_ade20k/knet_s3_pspnet_r50-d8_8x2_512x512_adamw_80k_ade20k_20220228_054634-d2c72240.pth",
        "knet-r50-deeplabv3": "knet_s3_deeplabv3_r50-d8_8x2_512x512_adamw_80k_ade20k/knet_s3_deeplabv3_r50-d8_8x2_512x512_adamw_80k_ade20k_20220228_041642-00c8fbeb.pth",
        "knet-r50-upernet": "knet_s3_upernet_r50-d8_8x2_512x512_adamw_80k_ade20k/knet_s3_upernet_r50-d8_8x2_512x512_adamw_80k_ade20k_20220304_125657-215753b0.pth",
        "knet-swin-t-upernet": "knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k/knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k_20220303_133059-7545e1dc.pth",
        "knet-swin-l-upernet": "knet_s3_upernet_swin-l_8x2_512x512_adamw_80k_ade20k/knet_s3_upernet_swin-l_8x2_512x512_adamw_80k_ade20k_20220303_154559-d8da9a90.pth",
        "knet-swin-l-upernet-640": "knet_s3_upernet_swin-l_8x2_640x640_adamw_80k_ade20k/knet_s3_upernet_swin-l_8x2_640x640_adamw_80k_ade20k_20220301_220747-8787fc71.pth",
    }.items()
}

# Published ADE20K results (mIoU, mIoU ms+flip) and parameter counts of the reference.
RESULTS_TABLE: Dict[str, Dict[str, float]] = {
    "knet-r50-fcn": {"mIoU": 43.60, "mIoU_ms_flip": 45.12, "params_m": 62.81},
    "knet-r50-pspnet": {"mIoU": 44.18, "mIoU_ms_flip": 45.58, "params_m": 62.29},
    "knet-r50-deeplabv3": {"mIoU": 45.06, "mIoU_ms_flip": 46.11, "params_m": 81.43},
    "knet-r50-upernet": {"mIoU": 43.45, "mIoU_ms_flip": 44.07, "params_m": 79.73},
    "knet-swin-t-upernet": {"mIoU": 45.84, "mIoU_ms_flip": 46.27, "params_m": 73.15},
    "knet-swin-l-upernet": {"mIoU": 52.05, "mIoU_ms_flip": 53.24, "params_m": 246.97},
    "knet-swin-l-upernet-640": {"mIoU": 52.21, "mIoU_ms_flip": 53.34, "params_m": 246.97},
}


def _tiny(cfg: KNetConfig) -> KNetConfig:
    """Shrink the widths to those of the golden files; keep every structural feature."""
    if isinstance(cfg.backbone, ResNetConfig):
        backbone = dataclasses.replace(cfg.backbone, stem_channels=16, base_channels=8)
    else:
        backbone = dataclasses.replace(cfg.backbone, embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    return dataclasses.replace(
        cfg,
        name=cfg.name + "-tiny",
        backbone=backbone,
        decode_head=dataclasses.replace(cfg.decode_head, channels=32),
        kernel_update=dataclasses.replace(
            cfg.kernel_update, num_heads=4, feedforward_channels=64, updator_channels=16
        ),
        auxiliary_head=dataclasses.replace(cfg.auxiliary_head, channels=16),
    )


PRESETS: Dict[str, Callable[[], KNetConfig]] = dict(_FULL)
PRESETS.update({name + "-tiny": (lambda build=build: _tiny(build())) for name, build in _FULL.items()})


class UnknownPresetError(KnetError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


def list_presets() -> List[str]:
    return list(PRESETS)


def get_config(name: str, overrides: Dict[str, Any] = None, **kwargs: Any) -> KNetConfig:
    """The config of preset ``name`` with overrides (dotted keys or nested dicts) applied."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown model {name!r}; valid names: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    if overrides or kwargs:
        cfg = cfg.replace(overrides, **kwargs)
    return cfg

"""The rows of K-Net's results tables, and a ``-tiny`` twin of each.

Semantic segmentation: the seven ADE20K rows (:class:`KNetConfig`). Panoptic and instance
segmentation: the nine COCO rows of the reference's ``knet/det`` (:class:`KNetMaskConfig`).

A ``-tiny`` preset keeps every structural feature of its row (dilations, strides, pool scales,
shifted windows, deformable convs, three kernel-update stages, the classes, the auxiliary head) and
shrinks only the widths, to exactly those of the reference's golden files in ``shared/goldens``
(``shared/goldens/det`` for the COCO rows).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from .errors import KnetError
from .config import (
    HEAD_CONFIGS,
    DataConfig,
    KNetConfig,
    KNetMaskConfig,
    MaskDataConfig,
    ModelConfig,
    PlainResNetConfig,
    ResNetConfig,
    SwinConfig,
    TrainConfig,
    schedule_1x,
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

# The download address of each row's published checkpoint (users download them themselves); the
# addresses hold dates and hashes, so they are data, with the backbones' ImageNet weights.
_DOWNLOADS = json.loads((Path(__file__).parent / "data" / "checkpoints.json").read_text())
REFERENCE_CHECKPOINTS: Dict[str, str] = dict(_DOWNLOADS["checkpoints"])
BACKBONE_WEIGHTS: Dict[str, str] = dict(_DOWNLOADS["backbones"])

# Published ADE20K results (mIoU, mIoU ms+flip) and parameter counts of the reference.
_SEMANTIC_RESULTS: Dict[str, Dict[str, float]] = {
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


# --------------------------------------------------------------------------------------------
# Panoptic and instance segmentation (COCO)
# --------------------------------------------------------------------------------------------
def _dcn_c3_c5(depth: int) -> PlainResNetConfig:
    """Deformable 3x3 convs in every bottleneck of stages 2-4 ("dcn-c3-c5")."""
    return PlainResNetConfig(depth=depth, dcn_stages=(False, True, True, True))


def _swin_l_det() -> SwinConfig:
    return SwinConfig(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.2)


def _schedule_ms_3x() -> TrainConfig:
    """The reference's "ms-3x": 12 epochs of a 3x repeated dataset with drops after 9 and 11,
    i.e. 36 epochs with drops after 27 and 33; otherwise as 1x."""
    return dataclasses.replace(schedule_1x(), epochs=36, milestone_epochs=(27, 33))


def _data_1x() -> MaskDataConfig:
    return MaskDataConfig(train_scales=((1333, 800),))


def _data_ms() -> MaskDataConfig:
    """Multi-scale training: short side drawn in [640, 800], long side at most 1333."""
    return MaskDataConfig(train_scales=((1333, 640), (1333, 800)), multiscale_mode="range")


def _mask_row(name: str, task: str, backbone: Any, multiscale: bool) -> KNetMaskConfig:
    from .data.coco_categories import COCO_INSTANCE, COCO_PANOPTIC  # on first use: `import knet` stays quick

    table = COCO_PANOPTIC if task == "panoptic" else COCO_INSTANCE
    return KNetMaskConfig(
        name=name,
        task=task,
        num_thing_classes=table.num_things,
        num_stuff_classes=table.num_stuff,
        backbone=backbone,
        data=_data_ms() if multiscale else _data_1x(),
        train=dataclasses.replace(_schedule_ms_3x() if multiscale else schedule_1x(),
                                  cpu_channels_last=isinstance(backbone, PlainResNetConfig)
                                  and not any(backbone.dcn_stages)),
        class_names=list(table.names),
        palette=[list(colour) for colour in table.palette],
        isthing=list(table.isthing),
        category_ids=list(table.ids),
    )


# name -> (task, backbone, multi-scale training with the 3x schedule).
_MASK_ROWS: Dict[str, Tuple[str, Callable[[], Any], bool]] = {
    "knet-r50-fpn-panoptic": ("panoptic", lambda: PlainResNetConfig(depth=50), False),
    "knet-r50-fpn-panoptic-ms3x": ("panoptic", lambda: PlainResNetConfig(depth=50), True),
    "knet-r101-fpn-panoptic-ms3x": ("panoptic", lambda: PlainResNetConfig(depth=101), True),
    "knet-r101-dcn-fpn-panoptic-ms3x": ("panoptic", lambda: _dcn_c3_c5(101), True),
    "knet-swin-l-fpn-panoptic-ms3x": ("panoptic", _swin_l_det, True),
    "knet-r50-fpn-instance": ("instance", lambda: PlainResNetConfig(depth=50), False),
    "knet-r50-fpn-instance-ms3x": ("instance", lambda: PlainResNetConfig(depth=50), True),
    "knet-r101-fpn-instance-ms3x": ("instance", lambda: PlainResNetConfig(depth=101), True),
    "knet-r101-dcn-fpn-instance-ms3x": ("instance", lambda: _dcn_c3_c5(101), True),
}
_MASK_FULL: Dict[str, Callable[[], KNetMaskConfig]] = {
    name: (lambda name=name, task=task, backbone=backbone, ms=ms: _mask_row(name, task, backbone(), ms))
    for name, (task, backbone, ms) in _MASK_ROWS.items()
}

# The reference's config of each COCO row (configs/det/knet/<name>.py); its checkpoints are
# <base><config>/<config>_<date-hash>.pth. Two rows were published without a checkpoint.
REFERENCE_CONFIGS: Dict[str, str] = {
    "knet-r50-fpn-panoptic": "knet_s3_r50_fpn_1x_coco-panoptic",
    "knet-r50-fpn-panoptic-ms3x": "knet_s3_r50_fpn_ms-3x_coco-panoptic",
    "knet-r101-fpn-panoptic-ms3x": "knet_s3_r101_fpn_ms-3x_coco-panoptic",
    "knet-r101-dcn-fpn-panoptic-ms3x": "knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco-panoptic",
    "knet-swin-l-fpn-panoptic-ms3x": "knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic",
    "knet-r50-fpn-instance": "knet_s3_r50_fpn_1x_coco",
    "knet-r50-fpn-instance-ms3x": "knet_s3_r50_fpn_ms-3x_coco",
    "knet-r101-fpn-instance-ms3x": "knet_s3_r101_fpn_ms-3x_coco",
    "knet-r101-dcn-fpn-instance-ms3x": "knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco",
}

# Published COCO val2017 results (panoptic: PQ; instance: mask AP; the Swin-L row also test-dev PQ)
# and parameter counts (millions) of the reference.
_MASK_RESULTS: Dict[str, Dict[str, Any]] = {
    "knet-r50-fpn-panoptic": {"task": "panoptic", "PQ": 44.3, "params_m": 37.54},
    "knet-r50-fpn-panoptic-ms3x": {"task": "panoptic", "PQ": 47.1, "params_m": 37.54},
    "knet-r101-fpn-panoptic-ms3x": {"task": "panoptic", "PQ": 48.4, "params_m": 56.53},
    "knet-r101-dcn-fpn-panoptic-ms3x": {"task": "panoptic", "PQ": 49.6, "params_m": 57.82},
    "knet-swin-l-fpn-panoptic-ms3x": {"task": "panoptic", "PQ": 54.6, "PQ_test_dev": 55.2, "params_m": 208.78},
    "knet-r50-fpn-instance": {"task": "instance", "AP": 34.0, "params_m": 37.48},
    "knet-r50-fpn-instance-ms3x": {"task": "instance", "AP": 37.8, "params_m": 37.48},
    "knet-r101-fpn-instance-ms3x": {"task": "instance", "AP": 39.2, "params_m": 56.47},
    "knet-r101-dcn-fpn-instance-ms3x": {"task": "instance", "AP": 40.5, "params_m": 57.76},
}


def _mask_tiny(cfg: KNetMaskConfig) -> KNetMaskConfig:
    """The widths of the ``shared/goldens/det`` files (their README's overrides): ResNet
    base_channels 8 / Swin embed_dims 16 with two blocks per stage, FPN 32, 10 proposals, GN(8),
    positional encoding 2x16, stages with 4 heads, FFN 64 and a 32-wide updator, 10 results per image."""
    if isinstance(cfg.backbone, SwinConfig):
        backbone = dataclasses.replace(cfg.backbone, embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    else:
        backbone = dataclasses.replace(cfg.backbone, base_channels=8)
    return dataclasses.replace(
        cfg,
        name=cfg.name + "-tiny",
        backbone=backbone,
        neck=dataclasses.replace(cfg.neck, out_channels=32),
        kernel_head=dataclasses.replace(cfg.kernel_head, num_proposals=10, num_groups=8, pos_num_feats=16),
        kernel_update=dataclasses.replace(cfg.kernel_update, num_heads=4, feedforward_channels=64,
                                          updator_channels=32),
        postprocess=dataclasses.replace(cfg.postprocess, max_per_img=10),
    )


# Published results of every row: its task, then the task's metrics and the parameter count
# (millions). Semantic rows: mIoU and mIoU_ms_flip; panoptic: PQ; instance: AP.
RESULTS_TABLE: Dict[str, Dict[str, Any]] = {
    **{name: {"task": "semantic", **row} for name, row in _SEMANTIC_RESULTS.items()},
    **_MASK_RESULTS,
}

PRESETS: Dict[str, Callable[[], ModelConfig]] = {**_FULL, **_MASK_FULL}
PRESETS.update({name + "-tiny": (lambda build=build: _tiny(build())) for name, build in _FULL.items()})
PRESETS.update({name + "-tiny": (lambda build=build: _mask_tiny(build())) for name, build in _MASK_FULL.items()})


class UnknownPresetError(KnetError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


def unknown_preset(name: str) -> UnknownPresetError:
    """The error of a name that is no preset: the closest preset's name, else an example per task."""
    import difflib

    close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
    if close:
        hint = f"did you mean {close[0]}?"
    else:
        examples = {}
        for preset, build in PRESETS.items():
            examples.setdefault(build().task, preset)
        hint = f"e.g. {', '.join(examples.values())}"
    message = f"unknown model {name!r}; {hint}"
    return UnknownPresetError(f"{message} (knet.list_presets() names all {len(PRESETS)})",
                              cli=f"{message} (`knet models` lists all {len(PRESETS)})")


def list_presets() -> List[str]:
    return list(PRESETS)


def reference_config(name: str) -> str | None:
    """The reference's config name of a COCO preset or its ``-tiny`` twin, else None."""
    return REFERENCE_CONFIGS.get(name[: -len("-tiny")] if name.endswith("-tiny") else name)


def get_config(name: str, overrides: Dict[str, Any] = None, **kwargs: Any) -> ModelConfig:
    """The config of preset ``name`` with overrides (dotted keys or nested dicts) applied."""
    if name not in PRESETS:
        raise unknown_preset(name)
    cfg = PRESETS[name]()
    if overrides or kwargs:
        cfg = cfg.replace(overrides, **kwargs)
    return cfg

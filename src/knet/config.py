"""Typed configuration of the K-Net models and of their training/testing recipes.

Two model configs share one serialisation (:class:`ConfigBase`): :class:`KNetConfig` (semantic
segmentation, the ADE20K models) and :class:`KNetMaskConfig` (panoptic and instance segmentation,
the COCO models of the reference's ``knet/det``). A preset (see :mod:`knet.presets`) is a value of
one of them. Every field can be overridden, in Python with nested keyword arguments or dotted keys,
and on the command line with ``--set dotted.key=value``. Configs serialise to plain JSON
(``to_dict`` / ``from_dict``) so that every checkpoint can carry the config it was built from;
:func:`config_from_dict` picks the class from the dict's ``task``.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from .errors import KnetError

# Default label of pixels that are not trained on nor evaluated (``DataConfig.ignore_index``).
IGNORE_INDEX = 255


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------
@dataclass
class ResNetConfig:
    """ResNetV1c (deep stem of three 3x3 convs). The "D8" form dilates the last two stages."""

    kind: str = "resnet_v1c"
    depth: int = 50
    stem_channels: int = 64
    base_channels: int = 64
    strides: Tuple[int, int, int, int] = (1, 2, 1, 1)
    dilations: Tuple[int, int, int, int] = (1, 1, 2, 4)
    contract_dilation: bool = True
    norm_eval: bool = False
    # Stages (0-3) whose blocks recompute their activations in the backward pass instead of
    # keeping them: less memory for more time, the same values and gradients.
    recompute_stages: Tuple[int, ...] = ()
    # The stages ``low_memory_config`` (``knet train --low-memory``) recomputes: all four, as the
    # dilated last stage keeps 2048-channel maps at stride 8.
    low_memory_recompute_stages: Tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self) -> None:
        _check_stages(self, 4)


@dataclass
class PlainResNetConfig:
    """mmdetection's ResNet, "pytorch" style (7x7 stem, stride on the 3x3 conv), as the panoptic
    and instance models use: four stages at strides 4-32, the stem as wide as ``base_channels``.

    ``frozen_stages``: the stem and layer1..layerN take no gradient (-1: none frozen).
    ``norm_eval``: every BatchNorm keeps its statistics while training. ``dcn_stages``: per stage,
    whether its 3x3 convs are deformable (mmcv's DCN, ``deform_groups`` offset groups).
    ``recompute_stages`` / ``low_memory_recompute_stages``: as :class:`ResNetConfig`'s.
    """

    kind: str = "resnet"
    depth: int = 50
    base_channels: int = 64
    frozen_stages: int = 1
    norm_eval: bool = True
    dcn_stages: Tuple[bool, bool, bool, bool] = (False, False, False, False)
    deform_groups: int = 1
    recompute_stages: Tuple[int, ...] = ()
    # All four, as ResNetConfig's; a frozen stage (``frozen_stages``) keeps no activations anyway.
    low_memory_recompute_stages: Tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self) -> None:
        _check_stages(self, 4)


@dataclass
class SwinConfig:
    """Swin Transformer with shifted windows, padded so that any input size works."""

    kind: str = "swin"
    embed_dims: int = 96
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: int = 4
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.3
    # As :class:`ResNetConfig`'s; recomputing the last stage as well saves no memory, only time.
    recompute_stages: Tuple[int, ...] = ()
    low_memory_recompute_stages: Tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        _check_stages(self, len(self.depths))


def _check_stages(cfg: Any, num_stages: int) -> None:
    for name in ("recompute_stages", "low_memory_recompute_stages"):
        stages = getattr(cfg, name)
        if any(not 0 <= int(i) < num_stages for i in stages):
            raise ConfigError(f"backbone.{name}: stages are 0..{num_stages - 1}, got {tuple(stages)}")


BackboneConfig = Union[ResNetConfig, PlainResNetConfig, SwinConfig]
BACKBONE_CONFIGS: Dict[str, type] = {"resnet_v1c": ResNetConfig, "resnet": PlainResNetConfig, "swin": SwinConfig}


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------
@dataclass
class FCNHeadConfig:
    """FCN kernel-generate head: a stack of 3x3 convs, optionally concatenated with its input."""

    kind: str = "fcn"
    channels: int = 512
    dropout_ratio: float = 0.1
    num_convs: int = 2
    concat_input: bool = True


@dataclass
class PSPHeadConfig:
    """PSPNet kernel-generate head: pyramid pooling over the last backbone stage."""

    kind: str = "psp"
    channels: int = 512
    dropout_ratio: float = 0.1
    pool_scales: Tuple[int, ...] = (1, 2, 3, 6)


@dataclass
class ASPPHeadConfig:
    """DeepLabV3 kernel-generate head: atrous spatial pyramid pooling."""

    kind: str = "aspp"
    channels: int = 512
    dropout_ratio: float = 0.1
    dilations: Tuple[int, ...] = (1, 12, 24, 36)


@dataclass
class UPerHeadConfig:
    """UPerNet kernel-generate head: pyramid pooling plus a feature pyramid over all four stages.

    ``recompute_fusion``: when training, the stride-4 maps the fusion reads are rebuilt in the
    backward pass instead of kept (less memory for more time; ``low_memory_config`` turns it on)."""

    kind: str = "uper"
    channels: int = 512
    dropout_ratio: float = 0.1
    pool_scales: Tuple[int, ...] = (1, 2, 3, 6)
    recompute_fusion: bool = False


# The semantic head whose classifier weights become K-Net's initial kernels, by ``kind``. Input
# channels are not configured: they follow the backbone's ``out_channels``.
KernelGenerateHeadConfig = Union[FCNHeadConfig, PSPHeadConfig, ASPPHeadConfig, UPerHeadConfig]
HEAD_CONFIGS: Dict[str, type] = {"fcn": FCNHeadConfig, "psp": PSPHeadConfig, "aspp": ASPPHeadConfig,
                                 "uper": UPerHeadConfig}
# Release 0.1 wrote one flat head config holding every kind's fields; those that do not belong to
# a file's head kind were never read, and are dropped when such a file is loaded.
_RELEASE_0_1_HEAD_FIELDS = ("num_convs", "concat_input", "pool_scales", "dilations")

# Kind-keyed groups of settings: the field name -> the kind -> dataclass table. A dict without
# ``kind`` gets the kind of the field's default (release 0.1 files name no kind).
KIND_KEYED: Dict[str, Dict[str, type]] = {
    "backbone": BACKBONE_CONFIGS,
    "decode_head": HEAD_CONFIGS,
}


@dataclass
class KernelUpdateConfig:
    """The iterative kernel-update stages. Their width is the kernel-generate head's ``channels``."""

    num_stages: int = 3
    num_heads: int = 8
    feedforward_channels: int = 2048
    updator_channels: int = 256  # KernelUpdator in/feat/out channels (half the kernel width)
    num_ffn_fcs: int = 2
    num_mask_fcs: int = 1
    conv_kernel_size: int = 1
    dropout: float = 0.0


@dataclass
class AuxiliaryHeadConfig:
    """FCN auxiliary head on a backbone stage, used for its training loss only."""

    enabled: bool = True
    in_index: int = 2
    channels: int = 256
    num_convs: int = 1
    dropout_ratio: float = 0.1
    loss_weight: float = 0.4


# --------------------------------------------------------------------------------------------
# Panoptic / instance models: neck, kernel head, stages, post-processing
# --------------------------------------------------------------------------------------------
@dataclass
class FPNConfig:
    """The FPN neck: four levels (strides 4-32) from the backbone's four stages. Its width is the
    width of the whole head: the kernel head, the kernels and the update stages."""

    out_channels: int = 256


@dataclass
class KernelHeadConfig:
    """The kernel head (the reference's ``rpn_head``): learned proposal kernels and the semantic
    branch whose stuff rows become the stuff kernels.

    ``num_groups``: GroupNorm groups of its convs. ``pos_num_feats``: per-axis channels of the
    sine positional encoding added to the coarsest FPN level; None means half the FPN width (128
    in the reference). ``recompute_fusion``: when training, the semantic FPN that fuses the four
    levels at stride 8 recomputes its activations in the backward pass instead of keeping them
    (less memory for more time; ``low_memory_config`` turns it on).
    """

    num_proposals: int = 100
    num_groups: int = 32
    pos_num_feats: Optional[int] = None
    recompute_fusion: bool = False


@dataclass
class MaskKernelUpdateConfig(KernelUpdateConfig):
    """The kernel-update stages of the panoptic/instance models: the semantic stages' settings
    (``updator_channels`` is the full kernel width here, 256) plus the class branch's
    Linear-LayerNorm-ReLU blocks. The kernels are 1x1 (``conv_kernel_size`` must stay 1)."""

    num_cls_fcs: int = 1


@dataclass
class MaskPostprocessConfig:
    """Test-time thresholds, those the reference's code reads.

    Panoptic: a thing segment needs a score >= ``instance_score_thr`` and must keep at least
    ``overlap_thr`` of its mask after the pixel-wise competition; its mask area is counted at a
    fixed 0.5 probability, as in the reference. Instance: the ``max_per_img`` best (kernel, class)
    pairs, their masks thresholded at ``mask_thr``.
    """

    instance_score_thr: float = 0.3
    overlap_thr: float = 0.6
    mask_thr: float = 0.5
    max_per_img: int = 100


@dataclass
class MaskLossConfig:
    """Training loss weights and Hungarian matching costs of the panoptic/instance models; the
    defaults are the official ``knet/det`` values.

    Losses: ``cls_weight`` the stages' sigmoid focal class loss, ``mask_weight`` mask BCE,
    ``dice_weight`` dice, ``rank_weight`` the per-pixel rank loss (panoptic only), ``seg_weight``
    the kernel head's semantic focal loss; ``focal_alpha``/``focal_gamma`` serve both focal losses
    and the focal class cost. ``stage_weights``: a multiplier per kernel-update stage (None: 1 each).
    Matching: ``cls_cost`` (focal, from the second stage on), ``mask_cost`` and ``dice_cost``.
    """

    cls_weight: float = 2.0
    mask_weight: float = 1.0
    dice_weight: float = 4.0
    rank_weight: float = 0.1
    seg_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    stage_weights: Optional[Tuple[float, ...]] = None
    cls_cost: float = 2.0
    mask_cost: float = 1.0
    dice_cost: float = 4.0


# --------------------------------------------------------------------------------------------
# Recipe: data and schedule
# --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Pipelines of the reference: sizes are (width, height) as the reference writes them."""

    crop_size: Tuple[int, int] = (512, 512)
    train_scale: Tuple[int, int] = (2048, 512)
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    test_scale: Tuple[int, int] = (2048, 512)
    tta_ratios: Tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    # The one label value of pixels that are neither trained on nor evaluated: datasets, losses and
    # metrics all read it from here.
    ignore_index: int = IGNORE_INDEX


@dataclass
class MaskDataConfig:
    """Pipelines of the panoptic/instance models (mmdetection 2.x), sizes (width, height).

    Test: keep-ratio resize to fit ``test_scale``, normalise with ``mean``/``std`` (RGB order:
    mmdetection's ``to_rgb=True`` on its BGR reads), pad bottom/right to a multiple of
    ``size_divisor`` with 0. Train: keep-ratio resize to one of ``train_scales`` (one scale: that
    scale; two with ``multiscale_mode="range"``: long and short sides drawn uniformly between
    theirs; ``"value"``: one of them at random), horizontal flip with ``flip_prob``, then as at
    test time. Semantic maps use ``ignore_index`` for unlabelled pixels and padding: the COCO
    datasets, the training padding and collate and the losses all read it from here. Maps are
    uint8, so it must lie in 0..255 and above every class label (``>= num_classes``).
    """

    test_scale: Tuple[int, int] = (1333, 800)
    size_divisor: int = 32
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    train_scales: Tuple[Tuple[int, int], ...] = ((1333, 800),)
    multiscale_mode: str = "range"
    flip_prob: float = 0.5
    ignore_index: int = IGNORE_INDEX


@dataclass
class TrainConfig:
    """AdamW with linear warm-up, step decay and gradient clipping, as the published runs."""

    iters: int = 80000
    batch_size: int = 2  # per process
    lr: float = 1e-4
    weight_decay: float = 5e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    # Zero weight decay for parameters whose reference key contains one of these (Swin presets).
    no_decay_keys: Tuple[str, ...] = ()
    warmup_iters: int = 1000
    warmup_ratio: float = 1e-3
    milestones: Tuple[int, ...] = (60000, 72000)
    gamma: float = 0.1
    clip_grad_norm: float = 1.0
    val_interval: int = 8000
    checkpoint_interval: int = 8000
    log_interval: int = 50
    # Learning-rate multiplier of the backbone's parameters (0.25 in the panoptic/instance recipes).
    backbone_lr_mult: float = 1.0
    # An epoch-based schedule (the panoptic/instance recipes): when ``epochs`` is set, the run lasts
    # that many passes over the training set and the lr drops after each of ``milestone_epochs``;
    # the trainer converts both to iterations from the dataset size, and ``iters`` and
    # ``milestones`` are not used. Warm-up stays in iterations.
    epochs: Optional[int] = None
    milestone_epochs: Tuple[int, ...] = ()
    # On the CPU, train in float32 channels-last too (oneDNN's (N, H, W, C) convolutions; under
    # ``--amp`` always): the plain ResNet panoptic/instance presets' steps are so faster and smaller.
    # ``knet train --channels-last/--no-channels-last`` overrides it.
    cpu_channels_last: bool = False


def schedule_1x() -> TrainConfig:
    """The reference's COCO schedule "1x", the panoptic/instance models' default: AdamW lr 1e-4,
    weight decay 0.05, backbone lr x0.25, clip 1, 1000 warm-up iterations from 0.001; 12 epochs,
    lr x0.1 after epochs 8 and 11; 2 images per GPU."""
    return TrainConfig(lr=1e-4, weight_decay=0.05, backbone_lr_mult=0.25, clip_grad_norm=1.0, warmup_iters=1000,
                       warmup_ratio=1e-3, batch_size=2, epochs=12, milestone_epochs=(8, 11))


# --------------------------------------------------------------------------------------------
# Serialisation shared by the model configs
# --------------------------------------------------------------------------------------------
class ConfigError(KnetError, ValueError):
    """An unknown config key or a value that does not fit its field."""


class ConfigBase:
    """``to_dict`` / ``to_json`` / ``from_dict`` / ``replace`` of a model config dataclass.

    Subclasses are dataclasses with a ``task`` field; :data:`CONFIG_CLASSES` maps each task to its
    class, so a dict is always read into the class of its task (see :func:`config_from_dict`).
    """

    task: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Any:
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a mapping, got {data!r}")
        data = cls._upgrade(data)
        task = data.get("task")  # missing: the class's default task
        expected = CONFIG_CLASSES.get(task)
        if expected is not None and expected is not cls:
            raise ConfigError(f"a {task!r} config is a {expected.__name__}, not a {cls.__name__} "
                              "(knet.config.config_from_dict reads any config)")
        return _from_dict(cls, data, path="")

    @classmethod
    def _upgrade(cls, data: Dict[str, Any]) -> Dict[str, Any]:
        """A dict as an older release wrote it -> today's layout (identity unless overridden)."""
        return data

    def replace(self, overrides: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Any:
        """A copy with overrides applied: dotted keys (``"backbone.drop_path_rate"``) or nested
        dicts (``backbone={"drop_path_rate": 0.0}``). Values may be strings (as from the command
        line); they are parsed to the field's type."""
        data = self.to_dict()
        items = dict(overrides or {})
        items.update(kwargs)
        for key, value in items.items():
            _apply(data, type(self), key, value)
        return type(self).from_dict(data)


# --------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------
@dataclass
class KNetConfig(ConfigBase):
    """A semantic segmentation K-Net: backbone, kernel-generate head, kernel-update stages."""

    name: str = "knet"
    # Which task the model serves (a key of knet.tasks.TASKS): it picks the losses, the
    # post-processing and the evaluation; every checkpoint carries it inside its config.
    task: str = "semantic"
    num_classes: int = 150
    backbone: BackboneConfig = field(default_factory=ResNetConfig)
    decode_head: KernelGenerateHeadConfig = field(default_factory=FCNHeadConfig)
    kernel_update: KernelUpdateConfig = field(default_factory=KernelUpdateConfig)
    auxiliary_head: AuxiliaryHeadConfig = field(default_factory=AuxiliaryHeadConfig)
    align_corners: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Names and RGB colours of the classes; None means the ADE20K ones when num_classes == 150.
    class_names: Optional[List[str]] = None
    palette: Optional[List[List[int]]] = None

    def __post_init__(self) -> None:
        if self.task != "semantic":
            raise ConfigError(f"task: a KNetConfig is a semantic model, got task {self.task!r} "
                              "(panoptic and instance models are KNetMaskConfig)")

    @classmethod
    def _upgrade(cls, data: Dict[str, Any]) -> Dict[str, Any]:
        return _upgrade_release_0_1(data)


@dataclass
class KNetMaskConfig(ConfigBase):
    """A panoptic or instance K-Net (the reference's ``knet/det``): backbone, FPN, kernel head,
    kernel-update stages predicting a mask and class scores per kernel.

    ``task``: "panoptic" (things and stuff; one kernel per stuff class after the proposals) or
    "instance" (things only, ``num_stuff_classes`` = 0). Labels are contiguous: things
    ``0..num_thing_classes-1``, then stuff. ``num_classes`` is their sum (read only). Per class:
    ``class_names``, ``palette`` (RGB), ``isthing`` and the dataset's ``category_ids`` (COCO ids);
    None where unknown.
    """

    name: str = "knet-mask"
    task: str = "panoptic"
    num_thing_classes: int = 80
    num_stuff_classes: int = 53
    backbone: BackboneConfig = field(default_factory=PlainResNetConfig)
    neck: FPNConfig = field(default_factory=FPNConfig)
    kernel_head: KernelHeadConfig = field(default_factory=KernelHeadConfig)
    kernel_update: MaskKernelUpdateConfig = field(default_factory=MaskKernelUpdateConfig)
    postprocess: MaskPostprocessConfig = field(default_factory=MaskPostprocessConfig)
    # Configs written before this group existed (no "loss" key) load with these defaults.
    loss: MaskLossConfig = field(default_factory=MaskLossConfig)
    data: MaskDataConfig = field(default_factory=MaskDataConfig)
    train: TrainConfig = field(default_factory=schedule_1x)
    class_names: Optional[List[str]] = None
    palette: Optional[List[List[int]]] = None
    isthing: Optional[List[bool]] = None
    category_ids: Optional[List[int]] = None

    @property
    def num_classes(self) -> int:
        """Things + stuff: the width of every class prediction."""
        return self.num_thing_classes + self.num_stuff_classes

    def __post_init__(self) -> None:
        if self.task not in MASK_TASKS:
            raise ConfigError(f"task: a KNetMaskConfig is a panoptic or instance model, got {self.task!r}")
        if self.num_thing_classes < 1:
            raise ConfigError(f"num_thing_classes must be at least 1, got {self.num_thing_classes}")
        if self.task == "instance" and self.num_stuff_classes != 0:
            raise ConfigError(f"an instance model has no stuff classes, got num_stuff_classes={self.num_stuff_classes}")
        if self.task == "panoptic" and self.num_stuff_classes < 1:
            raise ConfigError("a panoptic model needs stuff classes (num_stuff_classes >= 1); "
                              "without stuff use task 'instance'")
        for name in ("class_names", "palette", "isthing", "category_ids"):
            values = getattr(self, name)
            if values is not None and len(values) != self.num_classes:
                raise ConfigError(f"{name} has {len(values)} entries but the model has {self.num_classes} classes "
                                  f"({self.num_thing_classes} things + {self.num_stuff_classes} stuff)")
        things_first = [True] * self.num_thing_classes + [False] * self.num_stuff_classes
        if self.isthing is not None and list(self.isthing) != things_first:
            raise ConfigError(f"isthing must list the {self.num_thing_classes} things first, then the "
                              f"{self.num_stuff_classes} stuff classes")
        if self.kernel_update.conv_kernel_size != 1:
            raise ConfigError("kernel_update.conv_kernel_size: the panoptic/instance kernel head makes 1x1 "
                              f"kernels, got {self.kernel_update.conv_kernel_size}")
        check_mask_ignore_index(self.data.ignore_index, self.num_classes)
        stage_weights = self.loss.stage_weights
        if stage_weights is not None and len(stage_weights) != self.kernel_update.num_stages:
            raise ConfigError(f"loss.stage_weights has {len(stage_weights)} values but the model has "
                              f"{self.kernel_update.num_stages} kernel-update stages")


def check_mask_ignore_index(ignore_index: int, num_classes: int) -> None:
    """A ConfigError unless ``ignore_index`` fits the uint8 semantic maps of a panoptic/instance
    model of ``num_classes`` classes: in 0..255 and not one of the labels 0..num_classes-1."""
    if not 0 <= ignore_index <= 255:
        raise ConfigError(f"data.ignore_index={ignore_index}: semantic maps are 8-bit, so it must be in 0..255")
    if ignore_index < num_classes:
        raise ConfigError(f"data.ignore_index={ignore_index} is the label of a class (the model has {num_classes} "
                          f"classes, labels 0..{num_classes - 1}); choose a value in {num_classes}..255")


ModelConfig = Union[KNetConfig, KNetMaskConfig]
MASK_TASKS = ("panoptic", "instance")
# The config class of each task; a dict without a task is a semantic config (release 0.1).
CONFIG_CLASSES: Dict[str, type] = {"semantic": KNetConfig, "panoptic": KNetMaskConfig, "instance": KNetMaskConfig}


def config_from_dict(data: Dict[str, Any]) -> ModelConfig:
    """Read a config dict (``to_dict``, a checkpoint's ``config``) into the class of its ``task``."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {data!r}")
    task = data.get("task", "semantic")
    if task not in CONFIG_CLASSES:
        raise ConfigError(f"task: unknown task {task!r}; valid: {', '.join(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[task].from_dict(data)


def low_memory_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` for training with less memory, for more time (``knet train --low-memory``): the
    backbone recomputes its ``low_memory_recompute_stages`` in the backward pass (unless
    ``recompute_stages`` already names some), and a head that can rebuild its largest maps in the
    backward pass (``recompute_fusion``: UPerNet, the panoptic/instance kernel head) does. Values,
    gradients and BatchNorm statistics stay those of the plain model."""
    backbone = cfg.backbone
    if not backbone.recompute_stages and backbone.low_memory_recompute_stages:
        cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(
            backbone, recompute_stages=tuple(backbone.low_memory_recompute_stages)))
    for name in ("decode_head", "kernel_head"):
        head = getattr(cfg, name, None)
        if hasattr(head, "recompute_fusion") and not head.recompute_fusion:
            cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(head, recompute_fusion=True)})
    return cfg


def _field_types(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _default_kind(owner: type, name: str) -> Optional[str]:
    """The ``kind`` of the default value of field ``name`` of dataclass ``owner``, if it has one."""
    for f in dataclasses.fields(owner):
        if f.name == name and f.default_factory is not dataclasses.MISSING:
            return getattr(f.default_factory(), "kind", None)
    return None


def _kind_class(group: str, data: Dict[str, Any], path: str, default: Optional[str]) -> type:
    """The dataclass of a kind-keyed group (``backbone``, ``decode_head``) from its ``kind``."""
    table = KIND_KEYED[group]
    kind = data.get("kind", default)
    if kind not in table:
        raise ConfigError(f"{path or group}.kind: unknown {group} kind {kind!r}; valid: {', '.join(sorted(table))}")
    return table[kind]


def _upgrade_release_0_1(data: Dict[str, Any]) -> Dict[str, Any]:
    """A config dict as written by release 0.1 -> today's layout (other dicts pass unchanged)."""
    head = data.get("decode_head") if isinstance(data, dict) else None
    if not isinstance(head, dict) or head.get("kind", "fcn") not in HEAD_CONFIGS:
        return data
    own = {f.name for f in dataclasses.fields(HEAD_CONFIGS[head.get("kind", "fcn")])}
    head = {k: v for k, v in head.items() if k in own or k not in _RELEASE_0_1_HEAD_FIELDS}
    return {**data, "decode_head": head}


def _from_dict(cls: type, data: Dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(_join(path, k) for k in unknown)}; "
            f"valid keys at {path or 'top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, _join(path, name), _default_kind(cls, name))
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, path: str, default_kind: Optional[str] = None) -> Any:
    """Convert JSON-ish ``value`` to type ``tp`` (dataclass, tuple, list, optional, scalar)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    group = _kind_keyed_group(tp)
    if group is not None:
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _from_dict(_kind_class(group, value, path, default_kind), value, path)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _from_dict(tp, value, path)
    if origin is Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(inner, value, path)
    if isinstance(value, str) and origin in (tuple, list):
        value = _parse_sequence(value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, path) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_convert(a, v, path) for a, v in zip(args, value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(args[0], v, path) for v in value]
    if tp is Any:
        return value
    return _convert_scalar(tp, value, path)


def _parse_sequence(text: str, path: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text if text.startswith("[") else f"[{text}]")
    except json.JSONDecodeError:
        return [t.strip() for t in text.strip("()[]").split(",") if t.strip()]


def _convert_scalar(tp: type, value: Any, path: str) -> Any:
    try:
        if tp is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {value!r} is not a valid {tp.__name__}") from None
    return value


def _apply(data: Dict[str, Any], cls: type, key: str, value: Any) -> None:
    """Set ``data[dotted.key] = value`` after checking every part of the key exists. Setting the
    ``kind`` of a kind-keyed group (``backbone.kind``) keeps only the settings the new kind has."""
    parts = key.split(".")
    node, node_cls, path, group = data, cls, "", None
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(node_cls)}
        if part not in names:
            raise ConfigError(
                f"unknown config key {key!r}: {part!r} is not a field of "
                f"{path or 'the model config'}; valid: {', '.join(sorted(names))}"
            )
        path = _join(path, part)
        last = i == len(parts) - 1
        if last:
            current = node.get(part)
            if part == "kind" and group is not None:
                _switch_kind(node, group, value)
            elif isinstance(value, dict) and isinstance(current, dict):
                sub_group = _kind_keyed_group(_field_types(node_cls)[part])
                if sub_group is not None and "kind" in value:  # the kind first: it decides the fields
                    _switch_kind(current, sub_group, value["kind"])
                sub_cls = _sub_class(node_cls, part, current)
                for sub_key, sub_value in value.items():
                    if not (sub_key == "kind" and sub_group is not None):
                        _apply(current, sub_cls, sub_key, sub_value)
            else:
                node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {path} is not a group of settings")
        group = _kind_keyed_group(_field_types(node_cls)[part])
        node_cls = _sub_class(node_cls, part, child)
        node = child


def _switch_kind(node: Dict[str, Any], group: str, kind: Any) -> None:
    """Set the ``kind`` of a kind-keyed group's dict, dropping the settings the new kind does not
    have and those left at the old kind's default, which the new kind's default replaces (an
    unknown kind is reported when the dict is read)."""
    old_cls = KIND_KEYED[group].get(node.get("kind"))
    node["kind"] = kind
    new_cls = KIND_KEYED[group].get(kind)
    if new_cls is not None:
        own = {f.name for f in dataclasses.fields(new_cls)}
        old_defaults = {f.name: f.default for f in dataclasses.fields(old_cls)
                        if f.default is not dataclasses.MISSING} if old_cls is not None else {}
        for name in [name for name in node if name != "kind"]:
            if name not in own or (name in old_defaults and _same_value(node[name], old_defaults[name])):
                del node[name]


def _same_value(a: Any, b: Any) -> bool:
    """Equality of config values, a list equal to a tuple of the same items."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def _kind_keyed_group(tp: Any) -> Optional[str]:
    """The KIND_KEYED group whose union of dataclasses ``tp`` is, else None."""
    if typing.get_origin(tp) is not Union:
        return None
    members = set(typing.get_args(tp))
    for group, table in KIND_KEYED.items():
        if members == set(table.values()):
            return group
    return None


def _sub_class(cls: type, name: str, value: Dict[str, Any]) -> type:
    tp = _field_types(cls)[name]
    group = _kind_keyed_group(tp)
    if group is not None:
        return _kind_class(group, value, name, _default_kind(cls, name))
    return tp


def parse_set_options(items: List[str]) -> Dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}`` (command-line ``--set``)."""
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides

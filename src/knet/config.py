"""Typed configuration of a K-Net model and of its training/testing recipe.

A preset (see :mod:`knet.presets`) is a :class:`KNetConfig` value. Every field can be overridden,
in Python with nested keyword arguments or dotted keys, and on the command line with
``--set dotted.key=value``. Configs serialise to plain JSON (``to_dict`` / ``from_dict``) so that
every checkpoint can carry the config it was built from.
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


BackboneConfig = Union[ResNetConfig, SwinConfig]
BACKBONE_CONFIGS: Dict[str, type] = {"resnet_v1c": ResNetConfig, "swin": SwinConfig}


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
    """UPerNet kernel-generate head: pyramid pooling plus a feature pyramid over all four stages."""

    kind: str = "uper"
    channels: int = 512
    dropout_ratio: float = 0.1
    pool_scales: Tuple[int, ...] = (1, 2, 3, 6)


# The semantic head whose classifier weights become K-Net's initial kernels, by ``kind``. Input
# channels are not configured: they follow the backbone's ``out_channels``.
KernelGenerateHeadConfig = Union[FCNHeadConfig, PSPHeadConfig, ASPPHeadConfig, UPerHeadConfig]
HEAD_CONFIGS: Dict[str, type] = {"fcn": FCNHeadConfig, "psp": PSPHeadConfig, "aspp": ASPPHeadConfig,
                                 "uper": UPerHeadConfig}
# Release 0.1 wrote one flat head config holding every kind's fields; those that do not belong to
# a file's head kind were never read, and are dropped when such a file is loaded.
_RELEASE_0_1_HEAD_FIELDS = ("num_convs", "concat_input", "pool_scales", "dilations")

# Kind-keyed groups of settings: the field name -> (the kind -> dataclass table, default kind).
KIND_KEYED: Dict[str, Tuple[Dict[str, type], str]] = {
    "backbone": (BACKBONE_CONFIGS, "resnet_v1c"),
    "decode_head": (HEAD_CONFIGS, "fcn"),
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


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
@dataclass
class KNetConfig:
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

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "KNetConfig":
        return _from_dict(cls, _upgrade_release_0_1(data), path="")

    def replace(self, overrides: Optional[Dict[str, Any]] = None, **kwargs: Any) -> "KNetConfig":
        """A copy with overrides applied: dotted keys (``"backbone.drop_path_rate"``) or nested
        dicts (``backbone={"drop_path_rate": 0.0}``). Values may be strings (as from the command
        line); they are parsed to the field's type."""
        data = self.to_dict()
        items = dict(overrides or {})
        items.update(kwargs)
        for key, value in items.items():
            _apply(data, type(self), key, value)
        return KNetConfig.from_dict(data)


class ConfigError(KnetError, ValueError):
    """An unknown config key or a value that does not fit its field."""


def _field_types(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind_class(group: str, data: Dict[str, Any], path: str) -> type:
    """The dataclass of a kind-keyed group (``backbone``, ``decode_head``) from its ``kind``."""
    table, default = KIND_KEYED[group]
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
        kwargs[name] = _convert(hints[name], value, _join(path, name))
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Convert JSON-ish ``value`` to type ``tp`` (dataclass, tuple, list, optional, scalar)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    group = _kind_keyed_group(tp)
    if group is not None:
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _from_dict(_kind_class(group, value, path), value, path)
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
    """Set ``data[dotted.key] = value`` after checking every part of the key exists."""
    parts = key.split(".")
    node, node_cls, path = data, cls, ""
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
            if isinstance(value, dict) and isinstance(current, dict):
                sub_cls = _sub_class(node_cls, part, current)
                for sub_key, sub_value in value.items():
                    _apply(current, sub_cls, sub_key, sub_value)
            else:
                node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {path} is not a group of settings")
        node_cls = _sub_class(node_cls, part, child)
        node = child


def _kind_keyed_group(tp: Any) -> Optional[str]:
    """The KIND_KEYED group whose union of dataclasses ``tp`` is, else None."""
    if typing.get_origin(tp) is not Union:
        return None
    members = set(typing.get_args(tp))
    for group, (table, _) in KIND_KEYED.items():
        if members == set(table.values()):
            return group
    return None


def _sub_class(cls: type, name: str, value: Dict[str, Any]) -> type:
    tp = _field_types(cls)[name]
    group = _kind_keyed_group(tp)
    if group is not None:
        return _kind_class(group, value, name)
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

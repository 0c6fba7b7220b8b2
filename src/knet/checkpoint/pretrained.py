"""ImageNet backbone weights for training from scratch.

Four file layouts are recognised from their keys:

* ``resnet_v1c``: the reference's ResNetV1c file, ``{'state_dict': {'stem.0.weight', ...,
  'layer4.2.bn3.*', 'fc.weight', 'fc.bias'}}``. The classifier ``fc.*`` is dropped.
* ``resnet_torchvision``: torchvision's ImageNet ResNet-50/101 (``torchvision://resnet50``, what
  the panoptic/instance models start from), a flat dict ``conv1.weight``, ``bn1.*``,
  ``layerX.Y.conv1/bn1/.../downsample.*``, ``fc.*`` for the plain-stem :class:`ResNet`. The
  classifier ``fc.*`` is dropped; the offset convs of deformable stages (``conv2.conv_offset.*``)
  are not in such a file and keep their zero initialisation (a deformable conv then starts as
  the plain one).
* ``swin_converted``: the reference's converted Swin file, a flat dict with the backbone's own
  names (``patch_embed.projection.*``, ``stages.N.blocks.M.attn.w_msa.*``, ``ffn.layers.*``,
  ``stages.N.downsample.*``). It has no ``norm0..3``; those keep their initial weight 1 / bias 0.
* ``swin_original``: the original Swin release, ``{'model': {'patch_embed.proj.*',
  'layers.N.blocks.M.attn.qkv.*', 'mlp.fc1.*', ...}}``, converted by :func:`convert_swin_original`
  (an explicit rename table; patch-merging weights are re-ordered to the unfold layout).

Any of them may also be wrapped in ``state_dict`` / ``model``, and prefixed with ``module.`` or
``backbone.`` (a whole-segmentor checkpoint: only its ``backbone.*`` keys are used). After
conversion the backbone is loaded strictly: every file key must be a backbone key of the same
shape, and every backbone key must be in the file, except the documented exceptions
(``norm0..3`` of a Swin backbone and the deformable offsets of a ResNet, which ImageNet files
do not have).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError
from .reference import extract_state_dict
from .safe_load import safe_load
from ..models.backbones.resnet import ResNet, ResNetV1c
from ..models.backbones.swin import SwinTransformer

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, Path]

RESNET_V1C = "resnet_v1c"
RESNET_TORCHVISION = "resnet_torchvision"
SWIN_CONVERTED = "swin_converted"
SWIN_ORIGINAL = "swin_original"


# --------------------------------------------------------------------------------------------
# Original Swin release -> the reference's names
# --------------------------------------------------------------------------------------------
def _merge_weight_to_unfold(weight: torch.Tensor) -> torch.Tensor:
    """Patch-merging reduction weight (out, 4C) from the original group order to the unfold order.

    The original concatenates four C-channel groups (top-left, bottom-left, top-right,
    bottom-right); the reference's unfold puts input ``c * 4 + k`` with k = (top-left, top-right,
    bottom-left, bottom-right). So: split into groups, swap groups 1 and 2, interleave channels.
    """
    out, in4 = weight.shape
    c = in4 // 4
    return weight.reshape(out, 4, c)[:, [0, 2, 1, 3]].transpose(1, 2).reshape(out, in4)


def _merge_norm_to_unfold(vector: torch.Tensor) -> torch.Tensor:
    """Patch-merging LayerNorm weight or bias (4C,) from the original group order to unfold order."""
    c = vector.shape[0] // 4
    return vector.reshape(4, c)[[0, 2, 1, 3]].transpose(0, 1).reshape(4 * c)


_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)\."
_NEW_BLOCK = r"stages.\1.blocks.\2."
_Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]

# (pattern on the original key, replacement, value transform). Every original key must match
# exactly one row here or one row of _SWIN_ORIGINAL_DROPPED.
_SWIN_ORIGINAL_RENAMES: List[Tuple[str, str, _Transform]] = [
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.projection.\1", None),
    (r"patch_embed\.norm\.(weight|bias)", r"patch_embed.norm.\1", None),
    (_BLOCK + r"norm1\.(weight|bias)", _NEW_BLOCK + r"norm1.\3", None),
    (_BLOCK + r"norm2\.(weight|bias)", _NEW_BLOCK + r"norm2.\3", None),
    (_BLOCK + r"attn\.relative_position_bias_table", _NEW_BLOCK + r"attn.w_msa.relative_position_bias_table", None),
    (_BLOCK + r"attn\.qkv\.(weight|bias)", _NEW_BLOCK + r"attn.w_msa.qkv.\3", None),
    (_BLOCK + r"attn\.proj\.(weight|bias)", _NEW_BLOCK + r"attn.w_msa.proj.\3", None),
    (_BLOCK + r"mlp\.fc1\.(weight|bias)", _NEW_BLOCK + r"ffn.layers.0.0.\3", None),
    (_BLOCK + r"mlp\.fc2\.(weight|bias)", _NEW_BLOCK + r"ffn.layers.1.\3", None),
    (r"layers\.(\d+)\.downsample\.reduction\.weight", r"stages.\1.downsample.reduction.weight",
     _merge_weight_to_unfold),
    (r"layers\.(\d+)\.downsample\.norm\.(weight|bias)", r"stages.\1.downsample.norm.\2", _merge_norm_to_unfold),
]

# (pattern, reason) of original keys that are deliberately not loaded.
_SWIN_ORIGINAL_DROPPED: List[Tuple[str, str]] = [
    (r"head\.(weight|bias)", "ImageNet classifier"),
    (r"norm\.(weight|bias)", "final norm before the classifier; the backbone norms each output with norm0..3"),
    (_BLOCK + r"attn_mask", "shifted-window mask, recomputed for each padded input size"),
    (_BLOCK + r"attn\.relative_position_index", "constant buffer, recomputed by the backbone"),
]

# Backbone keys the original file cannot provide; they keep their computed / initial values.
_SWIN_ORIGINAL_NOT_LOADED = re.compile(r"stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index")
_SWIN_OUTPUT_NORMS = re.compile(r"norm[0-3]\.(weight|bias)")
_DCN_OFFSETS = re.compile(r"layer\d\.\d+\.conv2\.conv_offset\.(weight|bias)")


def _resnet_may_be_missing(key: str) -> bool:
    return bool(_DCN_OFFSETS.fullmatch(key))


def _swin_converted_may_be_missing(key: str) -> bool:
    return bool(_SWIN_OUTPUT_NORMS.fullmatch(key))


def _swin_original_may_be_missing(key: str) -> bool:
    return bool(_SWIN_OUTPUT_NORMS.fullmatch(key) or _SWIN_ORIGINAL_NOT_LOADED.fullmatch(key))


def convert_swin_original(state: Mapping[str, torch.Tensor], source: str = "<state dict>"
                          ) -> Tuple[StateDict, List[str]]:
    """Rename an original Swin release state dict to the reference's (and knet's) names.

    Returns ``(converted, dropped)`` where ``dropped`` lists the original keys deliberately left
    out (classifier, final norm, attention masks, position-index buffers). A key matched by no row
    of the table raises :class:`CheckpointError` naming ``source`` and the keys.
    """
    converted: StateDict = {}
    dropped: List[str] = []
    unknown: List[str] = []
    for key, value in state.items():
        for pattern, reason in _SWIN_ORIGINAL_DROPPED:
            if re.fullmatch(pattern, key):
                dropped.append(key)
                break
        else:
            for pattern, replacement, transform in _SWIN_ORIGINAL_RENAMES:
                if re.fullmatch(pattern, key):
                    converted[re.sub(pattern, replacement, key)] = value if transform is None else transform(value)
                    break
            else:
                unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys of an original Swin file that knet does not know: "
                              f"{_key_list(unknown)}")
    return converted, dropped


# --------------------------------------------------------------------------------------------
# Reading and layout detection
# --------------------------------------------------------------------------------------------
def _key_list(keys: List[str], limit: int = 12) -> str:
    """Readable, bounded list of keys for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _strip_prefixes(state: StateDict) -> Tuple[StateDict, List[str]]:
    """Keep only the ``backbone.*`` part of a segmentor checkpoint. Returns the backbone dict and
    the keys left out."""
    if any(k.startswith("backbone.") for k in state):
        skipped = [k for k in state if not k.startswith("backbone.")]
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        return state, skipped
    return state, []


def detect_layout(state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> str:
    """``resnet_v1c``, ``swin_converted`` or ``swin_original``, from the (unprefixed) keys."""
    keys = list(state)
    if any(k.startswith("patch_embed.projection.") or k.startswith("stages.") for k in keys):
        return SWIN_CONVERTED
    if any(k.startswith("patch_embed.proj.") or re.match(r"layers\.\d+\.blocks\.", k) for k in keys):
        return SWIN_ORIGINAL
    if any(k.startswith("stem.") for k in keys):
        return RESNET_V1C
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in keys):
        return RESNET_TORCHVISION
    raise CheckpointError(
        f"{source}: unknown backbone weight layout (expected a ResNetV1c file with 'stem.*', a "
        f"torchvision ResNet with 'conv1.weight' and 'layer1.*', a converted Swin file with "
        f"'patch_embed.projection.*', or an original Swin release with 'patch_embed.proj.*'); its keys: "
        f"{_key_list(keys)}")


# The first entry the backbone is an instance of decides (ResNetV1c is a ResNet).
_LAYOUTS_FOR: List[Tuple[type, Set[str]]] = [
    (ResNetV1c, {RESNET_V1C}),
    (ResNet, {RESNET_TORCHVISION}),
    (SwinTransformer, {SWIN_CONVERTED, SWIN_ORIGINAL}),
]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _load_checked(backbone: nn.Module, state: StateDict, may_be_missing: Callable[[str], bool],
                  source: str) -> List[str]:
    """Strict load except for the backbone keys ``may_be_missing`` accepts; returns those left at
    their initial values."""
    own = backbone.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not may_be_missing(k)]
    mismatched = [f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_key_list(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the {type(backbone).__name__} backbone: "
                              + "; ".join(problems))
    backbone.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]


def load_backbone_weights(backbone: nn.Module, path: PathLike) -> List[str]:
    """Load an ImageNet weight file into ``backbone`` (a :class:`ResNetV1c`, a plain-stem
    :class:`ResNet` or a :class:`SwinTransformer`), detecting its layout (see the module docstring).

    Returns the file's keys that were deliberately not loaded (classifier, original-release
    buffers, non-backbone keys of a segmentor checkpoint), with their names as in the file. Backbone
    keys left at their initial values (a Swin's ``norm0..3``) are logged.

    Raises :class:`CheckpointError` for a missing or unreadable file, an unknown layout, a layout
    that does not belong to this backbone, and unknown, missing or mis-shaped keys.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weight file {source} does not exist")
    raw = safe_load(path)  # never executes pickled code; raises CheckpointError naming the file

    state = extract_state_dict(raw, source)  # wrappers and a DDP "module." prefix removed
    state, skipped = _strip_prefixes(state)
    if not state:
        raise CheckpointError(f"{source}: no backbone keys")
    layout = detect_layout(state, source)

    expected = next((layouts for cls, layouts in _LAYOUTS_FOR if isinstance(backbone, cls)), None)
    if expected is None:
        raise CheckpointError(f"{source}: cannot load ImageNet weights into a {type(backbone).__name__}; "
                              f"supported backbones: {', '.join(cls.__name__ for cls, _ in _LAYOUTS_FOR)}")
    if layout not in expected:
        raise CheckpointError(f"{source} holds {layout} weights, which do not fit a {type(backbone).__name__} "
                              f"backbone (it takes {', '.join(sorted(expected))})")

    if layout in (RESNET_V1C, RESNET_TORCHVISION):
        dropped = [k for k in state if k.startswith("fc.")]  # ImageNet classifier
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        may_be_missing: Callable[[str], bool] = _resnet_may_be_missing
    elif layout == SWIN_CONVERTED:
        dropped = []
        may_be_missing = _swin_converted_may_be_missing
    else:
        state, dropped = convert_swin_original(state, source)
        may_be_missing = _swin_original_may_be_missing

    left_at_init = _load_checked(backbone, state, may_be_missing, source)
    skipped = skipped + dropped
    logger.info("loaded %s backbone weights from %s; not loaded from the file: %s; kept at initial "
                "values: %s", layout, source, ", ".join(skipped) or "none", ", ".join(left_at_init) or "none")
    return skipped

"""The reference implementation's checkpoints -> knet state dicts: the semantic models'
(mmsegmentation ``.pth``) and the panoptic/instance models' (mmdetection 2.x ``.pth``).

knet's parameter names were chosen equal to the reference's, except the panoptic/instance heads:
the reference's ``rpn_head`` is knet's ``kernel_head`` and its ``roi_head.mask_head.{i}`` knet's
``kernel_update_head.{i}``. The rename table below maps every part of a K-Net checkpoint, of either
family and in either naming; it is also the accounting: every key of a file must match one rule,
and a key matching none is reported by name instead of being silently dropped.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError

# (pattern, replacement): the parts of a K-Net as the reference (or knet itself) names them.
RENAME_RULES: List[Tuple[str, str]] = [
    (r"^backbone\.(.+)$", r"backbone.\1"),
    # semantic K-Net (mmsegmentation): knet's names are the reference's
    (r"^decode_head\.kernel_generate_head\.(.+)$", r"decode_head.kernel_generate_head.\1"),
    (r"^decode_head\.kernel_update_head\.(\d+)\.(.+)$", r"decode_head.kernel_update_head.\1.\2"),
    (r"^auxiliary_head\.(.+)$", r"auxiliary_head.\1"),
    # panoptic / instance K-Net (mmdetection 2.x KNet): FPN, kernel head, kernel-update stages
    (r"^neck\.(.+)$", r"neck.\1"),
    (r"^rpn_head\.(.+)$", r"kernel_head.\1"),
    (r"^roi_head\.mask_head\.(\d+)\.(.+)$", r"kernel_update_head.\1.\2"),
    # the same, as knet's own training checkpoints name them
    (r"^kernel_head\.(.+)$", r"kernel_head.\1"),
    (r"^kernel_update_head\.(\d+)\.(.+)$", r"kernel_update_head.\1.\2"),
]
_COMPILED = [(re.compile(p), r) for p, r in RENAME_RULES]

# Wrappers a state dict may come under: DistributedDataParallel and EMA-style prefixes.
_PREFIXES = ("module.",)


def extract_state_dict(checkpoint: Any, path: str) -> Dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint object (reference or knet training file)."""
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            if key in checkpoint and isinstance(checkpoint[key], Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise CheckpointError(f"{path} holds no state dict (expected a mapping of parameter names to tensors)")
    state = {}
    for key, value in checkpoint.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"{path}: entry {key!r} of the state dict is not a tensor ({type(value).__name__})")
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Apply the rename table. Returns (converted state dict, keys no rule accounts for)."""
    converted, unaccounted = {}, []
    for key, value in state.items():
        for pattern, replacement in _COMPILED:
            if pattern.match(key):
                converted[pattern.sub(replacement, key)] = value
                break
        else:
            unaccounted.append(key)
    return converted, unaccounted


def class_meta(checkpoint: Any) -> Tuple[Optional[List[str]], Optional[List[List[int]]]]:
    """Class names and palette stored in a checkpoint's ``meta`` (mmseg 0.x or 1.x, mmdet 2.x), if
    any. Names are stripped: mmdet 2.x's COCO-panoptic classes spell label 7 ``' truck'``."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return None, None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    names = meta.get("CLASSES", dataset_meta.get("classes"))
    palette = meta.get("PALETTE", dataset_meta.get("palette"))
    try:
        names = [str(n).strip() for n in names] if names is not None else None
        palette = [[int(c) for c in colour] for colour in palette] if palette is not None else None
    except TypeError:  # an unexpected object in meta: these are optional, so ignore them
        return None, None
    return names, palette


def num_classes_of(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The class count of a semantic K-Net state dict (its classifier's rows), else None."""
    weight = state.get("decode_head.kernel_generate_head.conv_seg.weight")
    return int(weight.shape[0]) if weight is not None else None


# A model's family: the state-dict layout its task shares.
SEMANTIC, MASK = "semantic", "panoptic/instance"
_FAMILY_OF_TASK = {"semantic": SEMANTIC, "panoptic": MASK, "instance": MASK}


def family_of_task(task: str) -> Optional[str]:
    """The family of a task's models (None for an unknown task)."""
    return _FAMILY_OF_TASK.get(task)


def family_of_state(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``SEMANTIC`` for a (converted) semantic K-Net state dict, ``MASK`` for a panoptic or
    instance one, None when it is neither."""
    if any(k.startswith("decode_head.") for k in state):
        return SEMANTIC
    if any(k.startswith("kernel_head.") for k in state):
        return MASK
    return None


def presets_fitting(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the presets whose parameter names and shapes equal those of ``state`` (a semantic
    checkpoint's number of classes is taken from it and shown when it is not the preset's)."""
    from ..presets import get_config, list_presets

    family = family_of_state(state)
    num_classes = num_classes_of(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fitting = []
    for name in list_presets():
        task = get_config(name).task
        if family is not None and family_of_task(task) != family:
            continue  # the other family's keys differ: no need to build it
        semantic = task == "semantic"
        if _preset_shapes(name, num_classes if semantic else None) == shapes:
            renamed = semantic and num_classes not in (None, 150)
            fitting.append(f"{name} (num_classes={num_classes})" if renamed else name)
    return fitting


@functools.lru_cache(maxsize=None)
def _preset_shapes(name: str, num_classes: Optional[int]) -> Dict[str, Tuple[int, ...]]:
    """Parameter and buffer shapes of preset ``name`` (with ``num_classes`` if given), from a model
    built on the meta device (no memory; presets do not change, so each is built once)."""
    from ..models.segmentor import build_model

    overrides = {"num_classes": num_classes} if num_classes else {}
    with torch.device("meta"):
        model = build_model(name, overrides)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def reference_config_names(checkpoint: Any) -> List[str]:
    """Names of the reference configs a checkpoint's ``meta`` says it was trained with: the stem of
    a ``*.py`` path in ``exp_name`` (mmdetection's training tool) or in ``config`` (when it is a
    path rather than the config's text)."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return []
    names = []
    for key in ("exp_name", "config"):
        value = meta.get(key)
        if isinstance(value, str) and "\n" not in value and value.strip().endswith(".py"):
            names.append(os.path.splitext(os.path.basename(value.strip()))[0])
    return names

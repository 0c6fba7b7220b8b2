"""The reference implementation's checkpoints (mmsegmentation ``.pth``) -> knet state dicts.

knet's parameter names were chosen equal to the reference's, so the rename table below maps each
part of a K-Net checkpoint onto itself; what it is for is accounting: every key of a file must
match one rule, and a key matching none is reported by name instead of being silently dropped.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError

# (pattern, replacement): the parts of a K-Net segmentor as the reference names them.
RENAME_RULES: List[Tuple[str, str]] = [
    (r"^backbone\.(.+)$", r"backbone.\1"),
    (r"^decode_head\.kernel_generate_head\.(.+)$", r"decode_head.kernel_generate_head.\1"),
    (r"^decode_head\.kernel_update_head\.(\d+)\.(.+)$", r"decode_head.kernel_update_head.\1.\2"),
    (r"^auxiliary_head\.(.+)$", r"auxiliary_head.\1"),
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
    """Class names and palette stored in a checkpoint's ``meta`` (mmseg 0.x or 1.x), if any."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return None, None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    names = meta.get("CLASSES", dataset_meta.get("classes"))
    palette = meta.get("PALETTE", dataset_meta.get("palette"))
    try:
        names = [str(n) for n in names] if names is not None else None
        palette = [[int(c) for c in colour] for colour in palette] if palette is not None else None
    except TypeError:  # an unexpected object in meta: these are optional, so ignore them
        return None, None
    return names, palette


def num_classes_of(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    weight = state.get("decode_head.kernel_generate_head.conv_seg.weight")
    return int(weight.shape[0]) if weight is not None else None


def presets_fitting(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the presets whose parameter names and shapes equal those of ``state`` (with the
    checkpoint's number of classes, shown when it is not the preset's)."""
    from ..models.segmentor import build_model
    from ..presets import list_presets

    num_classes = num_classes_of(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fitting = []
    for name in list_presets():
        overrides = {"num_classes": num_classes} if num_classes else {}
        with torch.device("meta"):
            model = build_model(name, **overrides)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if expected == shapes:
            fitting.append(name if num_classes in (None, 150) else f"{name} (num_classes={num_classes})")
    return fitting

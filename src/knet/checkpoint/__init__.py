"""Checkpoint I/O: the reference's ``.pth`` files, knet training checkpoints, native directories,
for the semantic models and the panoptic/instance models alike.

    knet.load_checkpoint(model, "ref.pth")          # into a model you have; strict by default
    model = knet.checkpoint.load_model("ref.pth", "knet-r50-fcn")   # build + load (torch files only)
    knet.save_pretrained(model, "out_dir")

``knet.load`` (:mod:`knet.inference.loading`) is the one public loader: it builds on
:func:`load_model` and also reads the ``.onnx`` files of ``knet export``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from ..config import ConfigBase, config_from_dict
from ..errors import CheckpointError
from .native import is_native_dir, read_native, save_pretrained, with_class_meta
from .reference import (class_meta, convert_reference_state_dict, extract_state_dict, family_of_state, family_of_task,
                        num_classes_of, presets_fitting, reference_config_names)
from .safe_load import safe_load

PathLike = Union[str, os.PathLike]


@dataclass
class LoadResult:
    """What a load did not use. Empty lists after a strict load."""

    missing: List[str] = field(default_factory=list)  # model keys the file lacks
    unexpected: List[str] = field(default_factory=list)  # file keys the model lacks
    mismatched: List[str] = field(default_factory=list)  # same key, other shape ("key: file vs model")

    @property
    def skipped(self) -> List[str]:
        return self.missing + self.unexpected + self.mismatched

    def __bool__(self) -> bool:
        return bool(self.skipped)


def _names(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Any supported checkpoint -> ``{"state_dict", "config" (KNetConfig, KNetMaskConfig or None),
    "class_names", "palette", "raw"}``, read without executing pickled code."""
    path = os.fspath(path)
    if is_native_dir(path):
        native = read_native(path)
        cfg = native["config"]
        return {"state_dict": native["state_dict"], "config": cfg, "class_names": cfg.class_names,
                "palette": cfg.palette, "raw": None}
    raw = safe_load(path)
    original = extract_state_dict(raw, path)
    state, unaccounted = convert_reference_state_dict(original)
    for key in unaccounted:  # not a part of K-Net: kept so that the load reports it as unexpected
        state[key] = original[key]
    config = None
    if isinstance(raw, Mapping) and isinstance(raw.get("config"), Mapping):  # a knet training checkpoint
        config = config_from_dict(dict(raw["config"]))
    names, palette = class_meta(raw)
    return {"state_dict": state, "config": config, "class_names": names, "palette": palette, "raw": raw}


def load_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True,
                    source: str = "checkpoint") -> LoadResult:
    """Copy ``state`` into ``model``; strict: every key and shape must agree, else CheckpointError
    naming them and the presets the file does fit."""
    own = model.state_dict()
    result = LoadResult(
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
        mismatched=[f"{k}: {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model"
                    for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)],
    )
    if strict and result:
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        fitting = presets_fitting(state)
        hint = (f"presets whose shapes fit it: {', '.join(fitting)}" if fitting
                else "no preset's shapes fit it")
        task = getattr(getattr(model, "config", None), "task", None)
        family = family_of_state(state)
        if family is not None and task is not None and family != family_of_task(task):
            raise CheckpointError(f"{source} is a {family} K-Net checkpoint and does not fit the {task} model "
                                  f"{name} ({hint})")
        problems = []
        if result.missing:
            problems.append(f"{len(result.missing)} missing key(s): {_names(result.missing)}")
        if result.unexpected:
            problems.append(f"{len(result.unexpected)} unexpected key(s): {_names(result.unexpected)}")
        if result.mismatched:
            problems.append(f"{len(result.mismatched)} shape mismatch(es): {_names(result.mismatched, 4)}")
        message = f"{source} does not fit model {name} ({hint}): {'; '.join(problems)}"
        raise CheckpointError(f"{message} (strict=False loads what fits)", cli=message)
    skip = set(result.missing) | {m.split(":")[0] for m in result.mismatched}
    fitting_state = {k: v for k, v in state.items() if k in own and k not in skip}
    model.load_state_dict(fitting_state, strict=False)
    return result


def load_checkpoint(model: torch.nn.Module, path: PathLike, strict: bool = True) -> LoadResult:
    """Load a reference ``.pth``, a knet training checkpoint or a native directory into ``model``.

    Strict by default: missing, unexpected or mis-shaped keys raise CheckpointError listing them by
    name. ``strict=False`` loads what fits and returns the skipped keys (``LoadResult``).
    """
    ckpt = read_checkpoint(path)
    result = load_state_dict(model, ckpt["state_dict"], strict=strict, source=os.fspath(path))
    _adopt_class_meta(model, ckpt)
    return result


def _adopt_class_meta(model: torch.nn.Module, ckpt: Dict[str, Any]) -> None:
    """Give a model without class names those the checkpoint carries, when their number fits."""
    config = getattr(model, "config", None)
    names = ckpt["class_names"]
    if isinstance(config, ConfigBase) and config.class_names is None and names and len(names) == config.num_classes:
        model.config = config.replace(class_names=names, palette=ckpt["palette"])


def load_model(path: PathLike, name: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
               strict: bool = True) -> torch.nn.Module:
    """Build and load a model in one call.

    The config comes from ``name`` (a preset) when given, else from the checkpoint itself (native
    directory or knet training checkpoint), else from the one preset whose shapes fit the file
    (among several, the one whose reference config the file's ``meta`` names).
    """
    from ..models.segmentor import build_model
    from ..presets import get_config, reference_config

    ckpt = read_checkpoint(path)
    # A semantic file's class count (panoptic/instance presets keep theirs: their shapes cannot
    # tell thing from stuff classes).
    num_classes = num_classes_of(ckpt["state_dict"])
    if name is not None:
        config = get_config(name)
        keep = config.task != "semantic" or not num_classes or (overrides or {}).get("num_classes")
        base = {} if keep else {"num_classes": num_classes}
        model = build_model(config, {**base, **(overrides or {})})
    elif ckpt["config"] is not None:
        model = build_model(ckpt["config"], overrides)
    else:
        fitting = presets_fitting(ckpt["state_dict"])
        if len(fitting) > 1:
            named = set(reference_config_names(ckpt["raw"]))
            fitting = [f for f in fitting if reference_config(f.split(" ")[0]) in named] or fitting
        if len(fitting) != 1:
            hint = f"candidates: {', '.join(fitting)}" if fitting else "no preset's shapes fit it"
            message = f"{os.fspath(path)} does not say which model it belongs to; pass the preset's name"
            raise CheckpointError(f"{message} (model=NAME, or --model NAME on the command line); {hint}",
                                  cli=f"{message} (--model NAME); {hint}")
        config = get_config(fitting[0].split(" ")[0])
        base = {"num_classes": num_classes} if config.task == "semantic" and num_classes else {}
        model = build_model(config, {**base, **(overrides or {})})
    try:
        load_state_dict(model, ckpt["state_dict"], strict=strict, source=os.fspath(path))
    except CheckpointError as err:
        carried = ckpt["config"]
        if name is None or carried is None or carried.name == name:
            raise
        # The file names its own model: that, not the shapes, is the advice.
        what = "directory" if is_native_dir(path) else "checkpoint"
        message = f"{os.fspath(path)} does not fit model {name}: the {what} holds {carried.name}"
        raise CheckpointError(f"{message}; leave the model name out (the {what} carries its config)",
                              cli=f"{message}; leave --model out") from err
    _adopt_class_meta(model, ckpt)
    return model


__all__ = ["LoadResult", "load_checkpoint", "load_model", "save_pretrained", "read_checkpoint",
           "load_state_dict", "safe_load", "with_class_meta"]

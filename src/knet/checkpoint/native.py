"""knet's native format: a directory with ``model.safetensors`` and ``config.json``.

``config.json`` is the model's config (:class:`~knet.config.KNetConfig` or
:class:`~knet.config.KNetMaskConfig`, its ``task`` saying which; class names and palette included),
so ``knet.load(directory)`` needs nothing else.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Union

import torch

from ..config import ModelConfig, config_from_dict
from ..errors import CheckpointError
from ..utils.atomic import atomic_path, atomic_write_text

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def with_class_meta(config: ModelConfig) -> ModelConfig:
    """The config with class names and palette filled in (ADE20K's for 150 classes, else generic)."""
    if config.class_names is not None and config.palette is not None:
        return config
    from ..data.ade20k import ADE20K_CLASSES, ADE20K_PALETTE
    from ..data.palette import default_palette

    if config.num_classes == len(ADE20K_CLASSES):
        names, palette = list(ADE20K_CLASSES), [list(c) for c in ADE20K_PALETTE]
    else:
        names = [f"class_{i}" for i in range(config.num_classes)]
        palette = [list(c) for c in default_palette(config.num_classes)]
    return config.replace(class_names=config.class_names or names, palette=config.palette or palette)


def save_pretrained(model: torch.nn.Module, directory: Union[str, os.PathLike]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each file atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = with_class_meta(model.config)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # safetensors writes by file name; atomic_path renames its output into place
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "knet": "1"})
    atomic_write_text(directory / CONFIG_NAME, config.to_json() + "\n")
    return directory


def is_native_dir(path: Union[str, os.PathLike]) -> bool:
    return Path(path).is_dir()


def read_native(directory: Union[str, os.PathLike]) -> Dict[str, Any]:
    """``{"config": KNetConfig or KNetMaskConfig, "state_dict": {...}}`` of a native directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{directory} is not a knet model directory: {path.name} is missing")
    try:
        config = config_from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    try:
        state = load_file(str(weights_path))
    except Exception as err:
        raise CheckpointError(f"cannot read {weights_path}: {err}") from None
    return {"config": config, "state_dict": state}

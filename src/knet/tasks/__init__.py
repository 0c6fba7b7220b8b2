"""Tasks: what turns a model's outputs into losses, predictions and metrics.

``TASKS`` maps a config's ``task`` (semantic, panoptic, instance) to the task's class;
:func:`get_task` builds one and names the valid tasks for an unknown name.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

from ..errors import KnetError
from .base import Evaluator, Task

# task name -> (module, class). The modules are imported on first use, so that a semantic model
# run by ONNX Runtime imports no torch (the panoptic and instance modules import it).
TASKS: Dict[str, Tuple[str, str]] = {
    "semantic": ("knet.tasks.semantic", "SemanticTask"),
    "panoptic": ("knet.tasks.panoptic", "PanopticTask"),
    "instance": ("knet.tasks.instance", "InstanceTask"),
}
_CLASSES = {"SemanticTask": "knet.tasks.semantic", "MaskTask": "knet.tasks.mask",
            "PanopticTask": "knet.tasks.panoptic", "InstanceTask": "knet.tasks.instance"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KnetError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)()


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'knet.tasks' has no attribute {name!r}")


__all__ = ["TASKS", "Evaluator", "Task", "SemanticTask", "MaskTask", "PanopticTask", "InstanceTask", "get_task"]

"""Tasks: what turns a model's outputs into losses, predictions and metrics.

``TASKS`` maps a config's ``task`` (semantic, panoptic, instance) to the task's class;
:func:`get_task` builds one and names the valid tasks for an unknown name.
"""
from __future__ import annotations

from typing import Callable, Dict

from ..errors import KnetError
from .base import Evaluator, Task
from .instance import InstanceTask
from .panoptic import MaskTask, PanopticTask
from .semantic import SemanticTask

TASKS: Dict[str, Callable[[], Task]] = {"semantic": SemanticTask, "panoptic": PanopticTask, "instance": InstanceTask}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KnetError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "Evaluator", "Task", "SemanticTask", "MaskTask", "PanopticTask", "InstanceTask", "get_task"]

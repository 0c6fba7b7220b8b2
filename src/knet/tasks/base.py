"""What a task is: everything that differs between semantic, panoptic and instance segmentation
once the model has produced its :class:`~knet.models.outputs.KNetOutput`.

The trainer, the evaluation loop, ``knet test``, ``knet predict`` and the Segmenter hold a task
and call these methods; none of them tests a task's name.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import KNetConfig
from ..models.outputs import KNetOutput


class Evaluator:
    """Accumulates predictions against the dataset's ground truth (detectron2's interface).

    ``reset()`` empties it, ``process(items, predictions)`` adds a batch (dataset items and the
    task's predictions for them, in order), ``evaluate(dist_info)`` returns the metrics dict,
    combining the statistics of every rank when the run is distributed (call it on every rank).
    Memory stays flat in the number of images.
    """

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[Any]) -> None:
        raise NotImplementedError

    def evaluate(self, dist_info: Any = None) -> Dict[str, Any]:
        raise NotImplementedError


class Task:
    """A segmentation task. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the key of :data:`knet.tasks.TASKS` (and of ``KNetConfig.task``).
        best_metric: the metric (higher is better) that picks the best checkpoint of a run,
            named in its file name (``best_<metric>_iter_<N>.pth``).
        summary_metrics: the metrics logged after each validation.
        class_dependent_keys: state-dict keys whose first dimension is the number of classes:
            re-initialised when fine-tuning onto another class list.
    """

    name: str = ""
    best_metric: str = ""
    summary_metrics: Tuple[str, ...] = ()
    class_dependent_keys: Tuple[str, ...] = ()

    # ---- training ----------------------------------------------------------------------
    def train_transform(self, config: KNetConfig) -> Any:
        """``(image, target, rng) -> (image (3, h, w) float32, target)``: the training augmentation."""
        raise NotImplementedError

    def losses(self, output: KNetOutput, targets: Any, config: KNetConfig) -> Dict[str, torch.Tensor]:
        """The named losses of a forward pass with every stage; their sum is the objective."""
        raise NotImplementedError

    # ---- inference ---------------------------------------------------------------------
    def pipeline(self, model: Any, **options: Any) -> Any:
        """The test pipeline of this task for a model (or model runner): its ``predict(images)``
        maps uint8 (H, W, 3) RGB images to this task's predictions at their original sizes."""
        raise NotImplementedError

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: KNetConfig, score_thr: float = 0.3) -> List[Any]:
        """The :class:`knet.Segmenter`'s result objects of ``images`` (uint8 (H, W, 3) RGB) run
        through ``pipeline``; each has ``write(base, opacity, save_probs)`` and ``overlay()``.
        ``score_thr``: the lowest score an instance needs to be shown and written."""
        raise NotImplementedError

    def evaluator(self, config: KNetConfig, class_names: Optional[List[str]] = None,
                  device: Any = "cpu") -> Evaluator:
        """An empty evaluator for a model of ``config``; it accumulates on ``device``."""
        raise NotImplementedError

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5) -> np.ndarray:
        """uint8 (H, W, 3): ``prediction`` drawn over ``image`` in the colours (and with the class
        names) of ``config``."""
        raise NotImplementedError

    def format_metrics(self, metrics: Dict[str, Any]) -> str:
        """The metrics as the plain-text tables ``knet test`` prints."""
        raise NotImplementedError

"""Instance segmentation: scored masks of the countable things, evaluated by COCO mask AP.

Losses and the test pipeline are those of the panoptic task without stuff (:class:`MaskTask`).
Not yet here: the COCO evaluator and the training augmentation (base class: NotImplementedError).
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from .panoptic import MaskTask


class InstanceTask(MaskTask):
    name = "instance"
    best_metric = "AP"
    output_files = "COCO instance results (<stem>.json) and overlays (<stem>_overlay.png)"
    summary_metrics = ("AP", "AP50", "AP75")

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: Any, score_thr: float = 0.3) -> List[Any]:
        from ..inference.mask_results import ClassMeta, InstanceSegmentationResult

        meta = ClassMeta.of(config)
        return [InstanceSegmentationResult.from_prediction(image, prediction, meta, source, score_thr)
                for image, prediction, source in zip(images, pipeline.predict(images), sources)]

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5,
                  score_thr: float = 0.3) -> np.ndarray:
        """uint8 (H, W, 3): the instances of an :class:`~knet.postprocess.InstanceResult` scoring at
        least ``score_thr`` (mmdetection's display default) over ``image``, each in its own colour,
        outlined and labelled."""
        from ..inference.mask_results import ClassMeta, InstanceSegmentationResult

        result = InstanceSegmentationResult.from_prediction(image, prediction, ClassMeta.of(config), None, score_thr)
        return result.overlay(opacity)

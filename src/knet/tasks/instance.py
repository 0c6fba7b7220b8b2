"""Instance segmentation: scored masks of the countable things, evaluated by COCO mask AP.

Losses and the test pipeline are those of the panoptic task without stuff (:class:`MaskTask`).
Not yet here: the COCO evaluator and the training augmentation (base class: NotImplementedError).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .panoptic import MaskTask, as_numpy, draw_regions, segment_colours


class InstanceTask(MaskTask):
    name = "instance"
    best_metric = "AP"
    summary_metrics = ("AP", "AP50", "AP75")

    def visualize(self, image: np.ndarray, prediction: Any, palette: Sequence[Sequence[int]],
                  opacity: float = 0.5, score_thr: float = 0.3) -> np.ndarray:
        """uint8 (H, W, 3): the instances of an :class:`~knet.postprocess.InstanceResult` scoring
        at least ``score_thr`` (mmdetection's display default 0.3) blended over ``image``, each in
        its own colour (its class's, shifted for further instances of a class) and outlined;
        higher scores are drawn on top."""
        masks = as_numpy(prediction.masks).astype(bool)
        labels = as_numpy(prediction.labels)
        scores = as_numpy(prediction.scores)
        shown = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_thr]
        colours = segment_colours([labels[i] for i in shown], [True] * len(shown), palette)
        # Painted lowest score first, so that the best instances end on top.
        return draw_regions(image, [masks[i] for i in reversed(shown)], list(reversed(colours)), opacity)

"""Panoptic segmentation (things and stuff, scored by PQ) and what it shares with instance
segmentation (:mod:`.instance`): the losses, the test pipeline and the drawing of segments.

Not yet here: the COCO evaluators and the training augmentation (they need the COCO datasets);
those methods are the base class's, which raise NotImplementedError.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import KNetMaskConfig
from ..losses import DetTargets, KNetDetCriterion
from ..models.outputs import KNetOutput
from .base import Task

# The class-count dimension of the panoptic/instance models' weights: the kernel head's semantic
# classifier (whose stuff rows are also the stuff kernels) and each stage's classifier. The
# presets have three stages.
MASK_CLASS_DEPENDENT_KEYS: Tuple[str, ...] = (
    "kernel_head.conv_seg.weight",
    "kernel_head.conv_seg.bias",
    *(f"kernel_update_head.{stage}.fc_cls.{p}" for stage in range(3) for p in ("weight", "bias")),
)


class MaskTask(Task):
    """What the panoptic and instance tasks share: the official ``knet/det`` losses and the
    mmdetection test pipeline (:class:`~knet.inference.mask_pipeline.MaskTestPipeline`)."""

    class_dependent_keys = MASK_CLASS_DEPENDENT_KEYS

    def losses(self, output: KNetOutput, targets: Sequence[DetTargets],
               config: KNetMaskConfig) -> Dict[str, torch.Tensor]:
        """The official losses (:class:`~knet.losses.KNetDetCriterion`), keyed ``s{k}_loss_*`` and
        ``loss_rpn_*``; the stages' ``pos_acc`` accuracies are left out so that the values sum to
        the objective.

        ``output``: a forward pass with every stage (``KNetMaskSegmentor.outputs``);
        ``targets``: one :class:`~knet.losses.DetTargets` per image at stride 4 of the padded
        batch (:func:`knet.losses.prepare_targets`).
        """
        criterion = KNetDetCriterion(
            num_thing_classes=config.num_thing_classes, num_stuff_classes=config.num_stuff_classes,
            num_proposals=config.kernel_head.num_proposals, panoptic=config.task == "panoptic",
            num_stages=config.kernel_update.num_stages, ignore_index=config.data.ignore_index)
        values = criterion(output.mask_logits[0], output.semantic_logits, output.mask_logits[1:],
                           output.cls_logits[1:], targets)
        return {key: value for key, value in values.items() if "loss" in key}

    def pipeline(self, model: Any, **options: Any) -> Any:
        from ..inference.mask_pipeline import MaskTestPipeline

        return MaskTestPipeline(model, **options)


class PanopticTask(MaskTask):
    name = "panoptic"
    best_metric = "PQ"
    output_files = "COCO panoptic PNGs (<stem>.png), segments (<stem>.json) and overlays (<stem>_overlay.png)"
    summary_metrics = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: KNetMaskConfig, score_thr: float = 0.3) -> List[Any]:
        from ..inference.mask_results import ClassMeta, PanopticSegmentationResult

        meta = ClassMeta.of(config)
        return [PanopticSegmentationResult.from_prediction(image, prediction, meta, source)
                for image, prediction, source in zip(images, pipeline.predict(images), sources)]

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5) -> np.ndarray:
        """uint8 (H, W, 3): every segment of a :class:`~knet.postprocess.PanopticResult` over
        ``image`` in its own colour, outlined and labelled (see
        :meth:`knet.inference.mask_results.PanopticSegmentationResult.overlay`)."""
        from ..inference.mask_results import ClassMeta, PanopticSegmentationResult

        return PanopticSegmentationResult.from_prediction(image, prediction, ClassMeta.of(config)).overlay(opacity)

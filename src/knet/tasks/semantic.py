"""Semantic segmentation: one class per pixel, scored by mIoU."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..config import KNetConfig
from ..losses.semantic import semantic_losses
from ..metrics.semantic import SegmentationMetric, format_table
from ..models.outputs import KNetOutput
from .base import Evaluator, Task


class SemanticEvaluator(Evaluator):
    """aAcc / mIoU / mAcc and per-class IoU / Acc of label maps against the items' ``label``;
    pixels labelled ``ignore_index`` are left out. Ranks sum their confusion matrices."""

    def __init__(self, num_classes: int, ignore_index: int, class_names: Optional[List[str]] = None,
                 device: Any = "cpu") -> None:
        self.metric = SegmentationMetric(num_classes, ignore_index, device=device)
        self.class_names = class_names

    def reset(self) -> None:
        self.metric.reset()

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[torch.Tensor]) -> None:
        for item, pred in zip(items, predictions):
            self.metric.update(pred, torch.as_tensor(np.asarray(item["label"]).astype(np.int64)))

    def evaluate(self, dist_info: Any = None) -> Dict[str, Any]:
        if dist_info is not None and dist_info.distributed:
            import torch.distributed as dist

            confusion = self.metric.confusion
            if confusion.device.type not in ("cpu", "cuda"):  # e.g. mps: reduce on the CPU
                confusion = confusion.cpu()
            dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
            self.metric.confusion = confusion
        return self.metric.compute(self.class_names)

    def areas(self) -> Dict[str, np.ndarray]:
        """int64 (C,) ``intersect``, ``union``, ``pred``, ``label`` pixel counts so far."""
        return self.metric.areas()


class SemanticTask(Task):
    name = "semantic"
    best_metric = "mIoU"
    summary_metrics = ("aAcc", "mIoU", "mAcc")
    # The classifier that gives K-Net its initial kernels, and the auxiliary classifier.
    class_dependent_keys = (
        "decode_head.kernel_generate_head.conv_seg.weight",
        "decode_head.kernel_generate_head.conv_seg.bias",
        "auxiliary_head.conv_seg.weight",
        "auxiliary_head.conv_seg.bias",
    )

    def train_transform(self, config: KNetConfig) -> Any:
        from ..data.transforms import TrainPipeline

        return TrainPipeline(config.data)

    def losses(self, output: KNetOutput, targets: torch.Tensor, config: KNetConfig) -> Dict[str, torch.Tensor]:
        return semantic_losses(output, targets, config.data.ignore_index, config.auxiliary_head.loss_weight,
                               config.align_corners)

    def pipeline(self, model: Any, **options: Any) -> Any:
        from ..inference.pipeline import TestPipeline

        return TestPipeline(model, **options)

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: KNetConfig, score_thr: float = 0.3) -> List[Any]:
        from ..inference.segmenter import SegmentationResult

        scores = pipeline.scores(images)
        return [SegmentationResult(image, s.detach().float().cpu(), pipeline.tta, config.class_names or [],
                                   config.palette or [], source)
                for image, s, source in zip(images, scores, sources)]

    def evaluator(self, config: KNetConfig, class_names: Optional[List[str]] = None,
                  device: Any = "cpu") -> SemanticEvaluator:
        return SemanticEvaluator(config.num_classes, config.data.ignore_index, class_names, device)

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5) -> np.ndarray:
        from ..inference.visualize import overlay

        return overlay(image, np.asarray(prediction), config.palette or [], opacity)

    def format_metrics(self, metrics: Dict[str, Any]) -> str:
        return format_table(metrics)

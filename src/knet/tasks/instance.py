"""Instance segmentation: scored masks of the countable things, evaluated by COCO mask AP against
COCO instance datasets.

Datasets, training data, losses and the test pipeline are those of the panoptic task without
stuff (:class:`~knet.tasks.mask.MaskTask`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..metrics import MaskAP
from ..metrics.mask_ap import METRIC_NAMES
from ..postprocess import InstancePrediction, instance_inference
from ..utils.tables import percent_cell, round_percent, text_table
from .base import Evaluator
from .mask import MaskTask, dataset_class_meta, distributed, from_main, gather_objects


class InstanceEvaluator(Evaluator):
    """COCO mask AP (AP, AP50, AP75, APs, APm, APl; percent, 2 decimals) of
    :class:`~knet.postprocess.InstancePrediction` predictions, through pycocotools' ``COCOeval``
    (:class:`knet.metrics.MaskAP`) over the images processed. Ranks gather their run-length
    encoded detections; rank 0 evaluates and hands the numbers to the others.

    Args:
        coco_gt: the ground truth: a COCO instances json dict (copied) or a pycocotools COCO.
        category_ids: the COCO category id of each label the model predicts.
    """

    def __init__(self, coco_gt: Any, category_ids: Sequence[int]) -> None:
        self.metric = MaskAP(coco_gt, category_ids)

    def reset(self) -> None:
        self.metric.reset()

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[InstancePrediction]) -> None:
        for item, prediction in zip(items, predictions):
            self.metric.update(item["image_id"], prediction.masks, prediction.labels, prediction.scores)

    def evaluate(self, dist_info: Any = None) -> Dict[str, Any]:
        main = not distributed(dist_info) or dist_info.is_main
        if distributed(dist_info):
            for rank, state in enumerate(gather_objects(self.metric.state(), dist_info)):
                if rank != dist_info.rank:
                    self.metric.merge(state)
        metrics = None
        if main:
            values = self.metric.compute(image_ids=self.metric.image_ids)
            metrics = {name: round_percent(values[name]) for name in METRIC_NAMES}
        return from_main(metrics, dist_info)


class InstanceFormatter(Evaluator):
    """Writes the predictions as a COCO results list (``knet test --format-only``)::

        OUT/segm.json   [{"image_id", "category_id", "segmentation": RLE, "score", "bbox", ...}]

    (the dataset's category ids, every instance of the model's top-k). Rank 0 writes the
    detections of every rank.
    """

    def __init__(self, dataset: Any, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.meta = dataset_class_meta(dataset)
        self.results: List[Dict[str, Any]] = []
        self.num_images = 0

    def reset(self) -> None:
        self.results, self.num_images = [], 0

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[InstancePrediction]) -> None:
        from ..inference.results import InstanceResult

        for item, prediction in zip(items, predictions):
            result = InstanceResult.from_prediction(item["image"], prediction, self.meta, score_thr=0.0)
            self.results += result.to_coco(image_id=item["image_id"])
            self.num_images += 1

    def evaluate(self, dist_info: Any = None) -> Dict[str, Any]:
        from ..utils.atomic import atomic_write_text

        gathered = gather_objects((self.results, self.num_images), dist_info)
        results = sorted((r for rank_results, _ in gathered for r in rank_results), key=lambda r: r["image_id"])
        path = self.out_dir / "segm.json"
        if not distributed(dist_info) or dist_info.is_main:
            import json

            atomic_write_text(path, json.dumps(results))
        return {"files": [str(path)], "num_images": sum(n for _, n in gathered)}


class InstanceTask(MaskTask):
    name = "instance"
    best_metric = "AP"
    output_files = "COCO instance results (<stem>.json) and overlays (<stem>_overlay.png)"
    summary_metrics = ("AP", "AP50", "AP75")
    dataset_kinds = ("coco_instance",)

    def postprocess(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor, prepared: Any,
                    config: Any) -> InstancePrediction:
        """The top-scoring instances (:func:`knet.postprocess.instance_inference`)."""
        post = config.postprocess
        return instance_inference(cls_logits, mask_logits, prepared.img_shape, prepared.pad_shape, prepared.ori_shape,
                                  max_per_img=post.max_per_img, mask_thr=post.mask_thr)

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: Any, score_thr: float = 0.3) -> List[Any]:
        from ..inference.results import ClassMeta, InstanceResult

        meta = ClassMeta.of(config)
        return [InstanceResult.from_prediction(image, prediction, meta, source, score_thr)
                for image, prediction, source in zip(images, pipeline.predict(images), sources)]

    def evaluator(self, config: Any, dataset: Any, device: Any = "cpu") -> InstanceEvaluator:
        # The json dict, not the dataset's COCO index: COCOeval rewrites the ground truth it is given.
        return InstanceEvaluator(dataset.coco.dataset, dataset.category_ids)

    def formatter(self, config: Any, dataset: Any, out_dir: Path) -> InstanceFormatter:
        return InstanceFormatter(dataset, out_dir)

    def ground_truth(self, item: Dict[str, Any]) -> Optional[InstancePrediction]:
        """The item's (non-crowd) instances as an :class:`~knet.postprocess.InstancePrediction` (score 1)."""
        if item.get("masks") is None:
            return None
        masks = torch.from_numpy(np.asarray(item["masks"], dtype=bool))
        count = masks.shape[0]
        return InstancePrediction(masks, torch.as_tensor(np.asarray(item["labels"], dtype=np.int64)),
                              torch.ones(count), torch.arange(count))

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5,
                  score_thr: float = 0.3) -> np.ndarray:
        """uint8 (H, W, 3): the instances of an :class:`~knet.postprocess.InstancePrediction` scoring at
        least ``score_thr`` (mmdetection's display default) over ``image``, each in its own colour,
        outlined and labelled."""
        from ..inference.results import ClassMeta, InstanceResult

        result = InstanceResult.from_prediction(image, prediction, ClassMeta.of(config), None, score_thr)
        return result.overlay(opacity)

    def format_metrics(self, metrics: Dict[str, Any]) -> str:
        """The six COCO mask AP numbers as one table."""
        return "\n".join(["summary:"] + text_table(["", *METRIC_NAMES],
                                                  [["mask"] + [percent_cell(metrics.get(k)) for k in METRIC_NAMES]]))

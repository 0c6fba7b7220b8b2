"""Panoptic segmentation: things and stuff as non-overlapping segments, scored by panoptic quality
(PQ, SQ, RQ) against COCO panoptic datasets.

What it shares with instance segmentation (datasets, training data, losses, the test pipeline)
is :class:`~knet.tasks.mask.MaskTask`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..config import KNetMaskConfig
from ..metrics import PanopticQuality
from ..metrics.panoptic_quality import STAT_NAMES
from ..postprocess import PanopticPrediction, PanopticSegment, panoptic_inference
from ..utils.tables import percent_cell, round_percent, text_table
from .base import Evaluator
from .mask import MaskTask, dataset_class_meta, distributed, gather_objects

SUMMARY_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


class PanopticEvaluator(Evaluator):
    """PQ / SQ / RQ (all, things, stuff, per class; percent, 2 decimals) of
    :class:`~knet.postprocess.PanopticPrediction` predictions against the items' ``pan_map`` and
    ``segments`` (a COCO panoptic dataset's items), panopticapi's definition
    (:class:`knet.metrics.PanopticQuality`). A prediction's label ``l`` is category
    ``categories[l]["id"]``. Ranks sum their statistics.

    Args:
        categories: the dataset's categories in label order (``id, name, isthing``).
        device: where the statistics are summed across ranks (the process group's device).
    """

    def __init__(self, categories: Sequence[Dict[str, Any]], device: Any = "cpu") -> None:
        self.metric = PanopticQuality(categories)
        self.category_ids = [int(c["id"]) for c in categories]
        self.device = torch.device(device)

    def reset(self) -> None:
        self.metric.reset()

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[PanopticPrediction]) -> None:
        for item, prediction in zip(items, predictions):
            segments = [{"id": int(s.id), "category_id": self.category_ids[int(s.label)]}
                        for s in prediction.segments]
            self.metric.update(prediction.segment_map, segments, item["pan_map"], item["segments"])

    def evaluate(self, dist_info: Any = None) -> Dict[str, Any]:
        if distributed(dist_info):
            import torch.distributed as dist

            state = self.metric.state()
            device = self.device if self.device.type == "cuda" else torch.device("cpu")  # NCCL: CUDA tensors
            summed = {}
            for name in (*STAT_NAMES, "num_images"):
                tensor = torch.from_numpy(np.array(state[name])).to(device)
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
                summed[name] = tensor.cpu()
            self.metric.reset()
            self.metric.merge(summed)
        metrics: Dict[str, Any] = {key: round_percent(value) for key, value in self.metric.compute().items()}
        metrics["per_class"] = {
            row["name"]: {"PQ": round_percent(row["PQ"]), "SQ": round_percent(row["SQ"]),
                          "RQ": round_percent(row["RQ"]), "isthing": row["isthing"],
                          "TP": row["TP"], "FP": row["FP"], "FN": row["FN"]}
            for row in self.metric.per_class()}
        return metrics


class PanopticFormatter(Evaluator):
    """Writes the predictions in COCO's panoptic results format (``knet test --format-only``)::

        OUT/panoptic.json      {"annotations": [{"image_id", "file_name", "segments_info": [{"id",
                               "category_id", "isthing", "score", "area", "bbox", ...}]}],
                               "categories": [...]}   (the dataset's category ids)
        OUT/panoptic/<stem>.png  segment ids as R + 256 G + 256^2 B, 0 = void

    Every rank writes its images' PNGs; rank 0 writes the json with every rank's annotations.
    """

    def __init__(self, dataset: Any, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.meta = dataset_class_meta(dataset)
        self.categories = list(dataset.categories)
        self.annotations: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self.annotations = []

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[PanopticPrediction]) -> None:
        from ..data.io import write_image
        from ..inference.results import PanopticResult, encode_panoptic_png

        for item, prediction in zip(items, predictions):
            result = PanopticResult.from_prediction(item["image"], prediction, self.meta)
            name = Path(item["image_path"]).stem + ".png"
            write_image(self.out_dir / "panoptic" / name, encode_panoptic_png(result.segment_map))
            self.annotations.append({"image_id": item["image_id"], **result.to_coco(name)})

    def evaluate(self, dist_info: Any = None) -> Dict[str, Any]:
        from ..utils.atomic import atomic_write_text

        annotations = sorted((a for rank in gather_objects(self.annotations, dist_info) for a in rank),
                             key=lambda a: a["image_id"])
        path = self.out_dir / "panoptic.json"
        if dist_info is None or dist_info.is_main:
            import json

            atomic_write_text(path, json.dumps({"annotations": annotations, "categories": self.categories}))
        return {"files": [str(path), str(self.out_dir / "panoptic")], "num_images": len(annotations)}


class PanopticTask(MaskTask):
    name = "panoptic"
    best_metric = "PQ"
    output_files = "COCO panoptic PNGs (<stem>.png), segments (<stem>.json) and overlays (<stem>_overlay.png)"
    summary_metrics = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")
    dataset_kinds = ("coco_panoptic",)
    panoptic = True

    def postprocess(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor, prepared: Any,
                    config: KNetMaskConfig) -> PanopticPrediction:
        """The segment map and segments (:func:`knet.postprocess.panoptic_inference`)."""
        post = config.postprocess
        # The mask area of a candidate is counted at the reference's fixed 0.5 (post.mask_thr is the
        # instance models' threshold).
        return panoptic_inference(cls_logits, mask_logits, prepared.img_shape, prepared.pad_shape, prepared.ori_shape,
                                  num_thing_classes=config.num_thing_classes,
                                  instance_score_thr=post.instance_score_thr, overlap_thr=post.overlap_thr)

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: KNetMaskConfig, score_thr: float = 0.3) -> List[Any]:
        from ..inference.results import ClassMeta, PanopticResult

        meta = ClassMeta.of(config)
        return [PanopticResult.from_prediction(image, prediction, meta, source)
                for image, prediction, source in zip(images, pipeline.predict(images), sources)]

    def evaluator(self, config: KNetMaskConfig, dataset: Any, device: Any = "cpu") -> PanopticEvaluator:
        return PanopticEvaluator(dataset.categories, device)

    def formatter(self, config: KNetMaskConfig, dataset: Any, out_dir: Path) -> PanopticFormatter:
        return PanopticFormatter(dataset, out_dir)

    def ground_truth(self, item: Dict[str, Any]) -> Optional[PanopticPrediction]:
        """The item's panoptic labels as a :class:`~knet.postprocess.PanopticPrediction` (its COCO
        segment ids, score 1)."""
        if item.get("pan_map") is None:
            return None
        pan_map = np.asarray(item["pan_map"])
        segments = [PanopticSegment(id=int(s["id"]), label=int(s["label"]), score=1.0,
                                    area=int((pan_map == s["id"]).sum()), proposal=-1, is_thing=bool(s["isthing"]))
                    for s in item["segments"]]
        return PanopticPrediction(torch.from_numpy(pan_map.astype(np.int32)), segments)

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5) -> np.ndarray:
        """uint8 (H, W, 3): every segment of a :class:`~knet.postprocess.PanopticPrediction` over
        ``image`` in its own colour, outlined and labelled (see
        :meth:`knet.inference.results.PanopticResult.overlay`)."""
        from ..inference.results import ClassMeta, PanopticResult

        return PanopticResult.from_prediction(image, prediction, ClassMeta.of(config)).overlay(opacity)

    def format_metrics(self, metrics: Dict[str, Any]) -> str:
        """Per class PQ / SQ / RQ (things, then stuff) and the All / Things / Stuff summary."""
        rows = [[name, percent_cell(v.get("PQ")), percent_cell(v.get("SQ")), percent_cell(v.get("RQ")),
                 "thing" if v.get("isthing") else "stuff"]
                for name, v in metrics.get("per_class", {}).items()]
        lines = (["per-class results:"] + text_table(["Class", "PQ", "SQ", "RQ", "kind"], rows)) if rows else []
        summary = [[group] + [percent_cell(metrics.get(k + suffix)) for k in ("PQ", "SQ", "RQ")]
                   for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))]
        lines += ["summary:"] + text_table(["", "PQ", "SQ", "RQ"], summary)
        return "\n".join(lines)

"""Semantic segmentation: one class per pixel, scored by mIoU."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import KNetConfig
from ..data.transforms import normalize
from .base import Evaluator, ReduceMean, Task

if TYPE_CHECKING:  # torch is imported where it is used: predicting with ONNX Runtime needs none
    import torch

    from ..models.outputs import KNetOutput


class SemanticEvaluator(Evaluator):
    """aAcc / mIoU / mAcc and per-class IoU / Acc of label maps against the items' ``label``;
    pixels labelled ``ignore_index`` are left out. Ranks sum their confusion matrices."""

    def __init__(self, num_classes: int, ignore_index: int, class_names: Optional[List[str]] = None,
                 device: Any = "cpu") -> None:
        from ..metrics.semantic import SegmentationMetric

        self.metric = SegmentationMetric(num_classes, ignore_index, device=device)
        self.class_names = class_names

    def reset(self) -> None:
        self.metric.reset()

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[torch.Tensor]) -> None:
        import torch

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


def to_tensors(image: Any, label: Any, mean: np.ndarray, std: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 HxWx3 (normalised here) or float (3,H,W) (already normalised) + label -> tensors
    ((3, H, W) float32, (H, W) int64)."""
    import torch

    if isinstance(image, torch.Tensor):
        image_t = image.float()
    else:
        array = np.asarray(image)
        if array.dtype == np.uint8:
            array = normalize(array, mean, std)
        image_t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    label_t = label.long() if isinstance(label, torch.Tensor) else torch.from_numpy(np.asarray(label).astype(np.int64))
    return image_t, label_t


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
    dataset_kinds = ("folder", "ade20k")
    has_probabilities = True
    output_files = "label maps (<stem>.png) and overlays (<stem>_overlay.png)"
    dense_logits = True
    onnx_outputs = ("logits",)
    onnx_check_shape = (1, 3, 75, 110)  # not a multiple of 32: the pipeline feeds any size

    # ---- datasets ----------------------------------------------------------------------
    def dataset_options(self, config: KNetConfig, training: bool) -> Dict[str, Any]:
        return {"ignore_index": config.data.ignore_index}

    def adopt_classes(self, config: KNetConfig, dataset: Any) -> KNetConfig:
        """The config with the dataset's number of classes, class names and palette."""
        names = getattr(dataset, "class_names", None)
        palette = getattr(dataset, "palette", None)
        num_classes = int(getattr(dataset, "num_classes", len(names) if names else config.num_classes))
        overrides: Dict[str, Any] = {"num_classes": num_classes}
        if names is not None:
            overrides["class_names"] = [str(n) for n in names]
        if palette is not None:
            overrides["palette"] = [[int(c) for c in colour] for colour in palette]
        return config.replace(overrides)

    # ---- training ----------------------------------------------------------------------
    def train_transform(self, config: KNetConfig) -> Any:
        """``(image, label, rng) -> (image, label)``: random resize, crop, flip, photometric
        distortion (:class:`knet.data.transforms.TrainPipeline`)."""
        from ..data.transforms import TrainPipeline

        return TrainPipeline(config.data)

    def train_sample(self, item: Dict[str, Any], transform: Any, rng: np.random.Generator,
                     config: KNetConfig) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(image (3, H, W) float32 normalised, label (H, W) int64)``."""
        image, label = transform(item["image"], item["label"], rng)
        return to_tensors(image, label, np.asarray(config.data.mean, dtype=np.float32),
                          np.asarray(config.data.std, dtype=np.float32))

    def collate(self, samples: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        from torch.utils.data import default_collate

        return default_collate(list(samples))

    def batch_inputs(self, batch: Tuple[torch.Tensor, torch.Tensor], config: KNetConfig,
                     device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def losses(self, output: KNetOutput, targets: torch.Tensor, config: KNetConfig,
               reduce_mean: Optional[ReduceMean] = None) -> Dict[str, torch.Tensor]:
        """Pixel cross-entropies, averaged per process (``reduce_mean`` is not needed)."""
        from ..losses.semantic import semantic_losses

        return semantic_losses(output, targets, config.data.ignore_index, config.auxiliary_head.loss_weight,
                               config.align_corners)

    def synthetic_batch(self, config: KNetConfig, batch_size: int, height: int, width: int,
                        rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """Random normalised images (3, H, W) and labels (H, W) drawn uniformly from the model's classes."""
        import torch

        samples = [(torch.from_numpy(rng.standard_normal((3, height, width), dtype=np.float32)),
                    torch.from_numpy(rng.integers(0, config.num_classes, (height, width), dtype=np.int64)))
                   for _ in range(batch_size)]
        return self.collate(samples)

    # ---- inference ---------------------------------------------------------------------
    def pipeline(self, model: Any, **options: Any) -> Any:
        from ..inference.pipeline import TestPipeline

        return TestPipeline(model, **options)

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: KNetConfig, score_thr: float = 0.3) -> List[Any]:
        from ..inference.results import SemanticResult

        scores = [s if isinstance(s, np.ndarray) else s.detach().float().cpu() for s in pipeline.scores(images)]
        return [SemanticResult(image, s, pipeline.tta, config.class_names or [], config.palette or [], source)
                for image, s, source in zip(images, scores, sources)]

    # ---- evaluation --------------------------------------------------------------------
    def evaluator(self, config: KNetConfig, dataset: Any, device: Any = "cpu") -> SemanticEvaluator:
        return SemanticEvaluator(config.num_classes, config.data.ignore_index, list(dataset.class_names), device)

    def ground_truth(self, item: Dict[str, Any]) -> Optional[np.ndarray]:
        return item.get("label")

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5) -> np.ndarray:
        from ..inference.visualize import overlay

        return overlay(image, np.asarray(prediction), config.palette or [], opacity)

    def format_metrics(self, metrics: Dict[str, Any]) -> str:
        from ..metrics.semantic import format_table

        return format_table(metrics)

"""Semantic-segmentation metrics as the reference computes them, and ``evaluate``.

Per class c, over every valid (not ignored) pixel of the dataset:
``intersect[c]`` (predicted c and labelled c), ``pred[c]``, ``label[c]`` and
``union[c] = pred[c] + label[c] - intersect[c]``. Then

- aAcc = sum(intersect) / sum(label);
- IoU[c] = intersect[c] / union[c], Acc[c] = intersect[c] / label[c] (NaN when 0 / 0);
- mIoU, mAcc = the mean over classes of the defined (non-NaN) values.

So a class absent from both labels and predictions is left out of both means; a class predicted
but never labelled has IoU 0 (counted in mIoU) and an undefined Acc (left out of mAcc). Reported
values are percentages rounded to 2 decimals (``np.round``), None where undefined.

Counts are accumulated in a (C, C) int64 confusion matrix -- memory independent of the dataset
size and exact (the reference sums float32 areas, which can only differ in the last bits).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..data.transforms import Size
from ..utils.atomic import atomic_write_text
from ..errors import DataError, KnetError
from .inference import TestPipeline, resolve_device

IGNORE_INDEX = 255


# --------------------------------------------------------------------------------------------
# Accumulating areas
# --------------------------------------------------------------------------------------------
def confusion_matrix(pred: Union[torch.Tensor, np.ndarray], label: Union[torch.Tensor, np.ndarray],
                     num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(C, C) int64 counts, row = label class, column = predicted class, of the pixels whose label
    is not ``ignore_index``: one ``torch.bincount`` of ``label * C + pred``.

    Args:
        pred, label: integer tensors or arrays of equal shape, e.g. (H, W) or (N, H, W); the
            result is on ``pred``'s device when it is a tensor.

    Raises:
        ValueError: shapes differ, or a prediction or (non-ignored) label is not in 0..C-1.
    """
    pred = torch.as_tensor(pred)
    label = torch.as_tensor(label).to(pred.device)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    valid = label != ignore_index
    pred, label = pred[valid].long(), label[valid].long()
    c = num_classes
    if pred.numel():
        for name, values in (("label", label), ("prediction", pred)):
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= c:
                raise ValueError(f"{name} value {low if low < 0 else high} is not a class (0..{c - 1})")
    return torch.bincount(label * c + pred, minlength=c * c).view(c, c)


def _areas_of(confusion: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    intersect = confusion.diagonal()
    pred = confusion.sum(dim=0)
    label = confusion.sum(dim=1)
    return intersect, pred + label - intersect, pred, label


def intersect_and_union(pred: Union[torch.Tensor, np.ndarray], label: Union[torch.Tensor, np.ndarray],
                        num_classes: int, ignore_index: int = IGNORE_INDEX
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class areas of one prediction/label pair (or batch), as the reference's function of
    that name: int64 (C,) tensors ``(intersect, union, pred, label)``; ignored pixels left out.
    Sum them over a dataset and pass them to :func:`compute_metrics`."""
    return _areas_of(confusion_matrix(pred, label, num_classes, ignore_index))


class SegmentationMetric:
    """Accumulates the per-class areas of (prediction, label) pairs in a (C, C) confusion matrix.

    Args:
        num_classes: C; predictions and labels hold 0..C-1, labels also ``ignore_index``.
        ignore_index: label value of pixels that are not evaluated.
        device: where the confusion matrix lives (that of the predictions, ideally).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 device: Union[str, torch.device] = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: Union[torch.Tensor, np.ndarray], label: Union[torch.Tensor, np.ndarray]) -> None:
        """Add one prediction/label pair (or a batch): integer tensors of equal shape, e.g.
        (H, W) or (N, H, W). Pixels whose label is ``ignore_index`` are left out."""
        pred = torch.as_tensor(pred).to(self.confusion.device)
        self.confusion += confusion_matrix(pred, label, self.num_classes, self.ignore_index)

    def areas(self) -> Dict[str, np.ndarray]:
        """int64 (C,) arrays ``intersect``, ``union``, ``pred``, ``label``."""
        parts = _areas_of(self.confusion.cpu())
        return {name: part.numpy().copy() for name, part in zip(("intersect", "union", "pred", "label"), parts)}

    def compute(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """The metrics dict of :func:`compute_metrics` for everything added so far."""
        a = self.areas()
        return compute_metrics(a["intersect"], a["union"], a["pred"], a["label"], class_names)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise float64 ratio, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def _percent(value: float) -> Optional[float]:
    """A fraction -> percent rounded to 2 decimals as the reference (``np.round``); None for NaN."""
    if value is None or math.isnan(value):
        return None
    return float(np.round(value * 100.0, 2))


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN, which we report as None
        return float(np.nanmean(values)) if values.size else float("nan")


def compute_metrics(area_intersect: Sequence[float], area_union: Sequence[float],
                    area_pred: Sequence[float], area_label: Sequence[float],
                    class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """aAcc, mIoU, mAcc and per-class IoU/Acc from the per-class areas (C,) each.

    Returns:
        ``{"aAcc": float, "mIoU": float, "mAcc": float, "per_class": {name: {"IoU": float,
        "Acc": float}}}`` in percent rounded to 2 decimals, None where undefined (see the module
        docstring). Class names default to ``"0"``, ``"1"``, ...
    """
    intersect = np.asarray(area_intersect, dtype=np.float64)
    union = np.asarray(area_union, dtype=np.float64)
    label = np.asarray(area_label, dtype=np.float64)
    num_classes = intersect.shape[0]
    if not (union.shape == label.shape == np.asarray(area_pred).shape == (num_classes,)):
        raise ValueError("areas must be four vectors of the same length (one value per class)")
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    iou = _ratio(intersect, union)
    acc = _ratio(intersect, label)
    all_acc = _ratio(intersect.sum(), label.sum())
    return {
        "aAcc": _percent(float(all_acc)),
        "mIoU": _percent(_nanmean(iou)),
        "mAcc": _percent(_nanmean(acc)),
        "per_class": {
            name: {"IoU": _percent(float(i)), "Acc": _percent(float(a))}
            for name, i, a in zip(names, iou, acc)
        },
    }


def _cell(value: Optional[float]) -> str:
    return "nan" if value is None else f"{value:.2f}"


def format_table(metrics: Dict[str, Any]) -> str:
    """The per-class table and the summary, as plain text::

        +-------+-------+-------+
        | Class | IoU   | Acc   |
        ...
        | aAcc  | mIoU  | mAcc  |
    """
    def table(header: List[str], rows: List[List[str]]) -> List[str]:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        def line(cells: List[str]) -> str:
            first = f" {cells[0]:<{widths[0]}} "
            rest = [f" {c:>{w}} " for c, w in zip(cells[1:], widths[1:])]
            return "|" + "|".join([first] + rest) + "|"
        return [rule, line(header), rule] + [line(r) for r in rows] + [rule]

    per_class = metrics.get("per_class", {})
    rows = [[name, _cell(v.get("IoU")), _cell(v.get("Acc"))] for name, v in per_class.items()]
    lines = (["per-class results:"] + table(["Class", "IoU", "Acc"], rows)) if rows else []
    summary = [_cell(metrics.get(k)) for k in ("aAcc", "mIoU", "mAcc")]
    lines += ["summary:"] + table(["aAcc", "mIoU", "mAcc"], [summary])
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Evaluating a model on a dataset
# --------------------------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    """What :func:`run_evaluation` found: the metrics dict, the per-class areas, the number of
    images evaluated and the bad items skipped (``(image path, message)``, with ``skip_bad``)."""

    metrics: Dict[str, Any]
    areas: Dict[str, np.ndarray]
    num_images: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)


class _SafeItems:
    """Dataset wrapper whose items never raise a DataError: a bad item comes back as
    ``(index, None, message)`` so that a DataLoader worker can hand it over intact."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[int, Optional[Dict[str, Any]], Optional[str]]:
        try:
            return index, self.dataset[index], None
        except DataError as err:
            return index, None, str(err)


def _batches(dataset: Any, batch_size: int, workers: int):
    """Lists of ``(index, item or None, error or None)`` in dataset order."""
    items = _SafeItems(dataset)
    if workers <= 0:
        for start in range(0, len(items), batch_size):
            yield [items[i] for i in range(start, min(start + batch_size, len(items)))]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=list, persistent_workers=False)
    yield from loader


def _image_path(dataset: Any, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"item {index}"


def run_evaluation(model: nn.Module, dataset: Any, *, mode: str = "whole", tta: bool = False,
                   batch_size: int = 1, device: Union[str, torch.device, None] = "auto", workers: int = 0,
                   crop_size: Optional[Size] = None, stride: Optional[Size] = None,
                   test_scale: Optional[Size] = None, skip_bad: bool = False,
                   show_dir: Optional[Union[str, os.PathLike]] = None, opacity: float = 0.5,
                   progress: bool = False) -> EvaluationResult:
    """Evaluate ``model`` on ``dataset`` with the test pipeline; see :func:`evaluate`.

    Returns an :class:`EvaluationResult` (metrics, areas, images evaluated, bad files skipped).
    """
    from ..utils.progress import ProgressBar

    if batch_size < 1:
        raise KnetError(f"batch size must be at least 1, got {batch_size}")
    num_classes = model.config.num_classes
    if dataset.num_classes != num_classes:
        raise DataError(
            f"the model predicts {num_classes} classes but the dataset has {dataset.num_classes}"
            + (f" ({dataset.root / 'classes.txt'})" if getattr(dataset, "name", "") == "folder" else "")
        )
    if not dataset.has_labels:
        where = getattr(dataset, "root", "the dataset")
        raise DataError(f"{where}: the dataset has no labels to evaluate against (expected masks/{getattr(dataset, 'split', '')})")
    if device is not None:
        model.to(resolve_device(device))
    pipeline = TestPipeline(model, mode=mode, crop_size=crop_size, stride=stride, test_scale=test_scale, tta=tta)
    metric = SegmentationMetric(num_classes, IGNORE_INDEX, device=pipeline.device)
    class_names = dataset.class_names
    palette = dataset.palette
    skipped: List[Tuple[str, str]] = []
    evaluated = 0
    with ProgressBar(total=len(dataset), desc="test", enabled=progress) as bar:
        for batch in _batches(dataset, batch_size, workers):
            good = []
            for index, item, error in batch:
                if error is not None:
                    if not skip_bad:
                        raise DataError(error)
                    skipped.append((_image_path(dataset, index), error))
                else:
                    good.append((index, item))
            if good:
                preds = pipeline.predict([item["image"] for _, item in good])
                for (index, item), pred in zip(good, preds):
                    metric.update(pred, torch.from_numpy(item["label"]))
                    if show_dir is not None:
                        _write_overlay(Path(show_dir), dataset, index, item, pred.cpu().numpy(), palette, opacity)
                evaluated += len(good)
            bar.update(len(batch))
    areas = metric.areas()
    metrics = compute_metrics(areas["intersect"], areas["union"], areas["pred"], areas["label"], class_names)
    return EvaluationResult(metrics=metrics, areas=areas, num_images=evaluated, skipped=skipped)


def _write_overlay(show_dir: Path, dataset: Any, index: int, item: Dict[str, Any], pred: np.ndarray,
                   palette: List[List[int]], opacity: float) -> None:
    """``show_dir/<image name>.png``: the ground truth (left) and the prediction (right) over the
    image, written atomically."""
    from ..apps.visualize import overlay
    from ..data.io import write_image

    image = item["image"]
    panels = [overlay(image, pred, palette, opacity)]
    if item.get("label") is not None:
        panels.insert(0, overlay(image, item["label"], palette, opacity))
    name = dataset.relative_name(index) if hasattr(dataset, "relative_name") else f"{index:06d}"
    write_image(show_dir / Path(name).with_suffix(".png"), np.concatenate(panels, axis=1))


def evaluate(model: nn.Module, dataset: Any, *, mode: str = "whole", tta: bool = False, batch_size: int = 1,
             device: Union[str, torch.device, None] = "auto", workers: int = 0,
             crop_size: Optional[Size] = None, stride: Optional[Size] = None,
             test_scale: Optional[Size] = None, skip_bad: bool = False,
             show_dir: Optional[Union[str, os.PathLike]] = None, progress: bool = False) -> Dict[str, Any]:
    """Evaluate a model on a dataset exactly as ``knet test`` does.

    Args:
        model: a ``KNet`` (``knet.build_model`` + ``knet.load_checkpoint``, or
            ``knet.checkpoint.load_model``); it is moved to ``device`` and run in eval mode.
        dataset: from :func:`knet.data.datasets.build_dataset` (ADE20K or a folder dataset);
            its number of classes must be the model's.
        mode: ``whole`` or ``slide`` (sliding window of ``crop_size`` every ``stride``,
            both (width, height)).
        tta: multi-scale (0.5 ... 1.75) + flip instead of the single scale.
        batch_size: images per step; images of equal resized size run as one batch, which
            gives exactly the batch-of-one result.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, a torch.device, or None to
            leave the model where it is.
        workers: DataLoader worker processes reading the files (0: in this process).
        test_scale: (width, height) to fit instead of the config's ``data.test_scale``.
        skip_bad: skip unreadable or inconsistent files instead of raising DataError (use
            :func:`run_evaluation` to get the list of skipped files).
        show_dir: write ground-truth | prediction overlays there, one PNG per image.
        progress: draw a progress bar on stderr.

    Returns:
        ``{"aAcc", "mIoU", "mAcc", "per_class": {name: {"IoU", "Acc"}}}``, percent rounded to 2
        decimals, None where undefined.
    """
    return run_evaluation(model, dataset, mode=mode, tta=tta, batch_size=batch_size, device=device,
                          workers=workers, crop_size=crop_size, stride=stride, test_scale=test_scale,
                          skip_bad=skip_bad, show_dir=show_dir, progress=progress).metrics


def write_json(path: Union[str, os.PathLike], data: Dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temp file + rename): the file is either complete or
    absent."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

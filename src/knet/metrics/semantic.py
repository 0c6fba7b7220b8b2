"""Semantic-segmentation metrics as the reference computes them.

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

import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import IGNORE_INDEX
from ..utils.tables import percent_cell, text_table


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


def format_table(metrics: Dict[str, Any]) -> str:
    """The per-class table and the summary, as plain text::

        +-------+-------+-------+
        | Class | IoU   | Acc   |
        ...
        | aAcc  | mIoU  | mAcc  |
    """
    per_class = metrics.get("per_class", {})
    rows = [[name, percent_cell(v.get("IoU")), percent_cell(v.get("Acc"))] for name, v in per_class.items()]
    lines = (["per-class results:"] + text_table(["Class", "IoU", "Acc"], rows)) if rows else []
    summary = [percent_cell(metrics.get(k)) for k in ("aAcc", "mIoU", "mAcc")]
    lines += ["summary:"] + text_table(["aAcc", "mIoU", "mAcc"], [summary])
    return "\n".join(lines)

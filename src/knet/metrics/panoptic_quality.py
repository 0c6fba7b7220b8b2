"""Panoptic quality (PQ, SQ, RQ) as panopticapi's ``pq_compute`` computes it, accumulated image by
image.

Per image, a predicted segment p and a ground-truth segment g of the same category match when

    IoU(p, g) = |p & g| / (|p| + |g| - |p & g| - |p & VOID|)  >  0.5

where VOID is the ground truth's unlabelled pixels (id 0). Crowd ground-truth segments
(``iscrowd=1``) never match, and their pixels stay in the union. Since IoU > 0.5 a segment matches
at most one other. Then, per category c:

- TP: matched pairs, adding their IoU to ``iou_sum[c]``;
- FN: unmatched non-crowd ground-truth segments (an unmatched crowd segment is no error);
- FP: unmatched predicted segments, except those of which more than half lies on VOID or on a
  crowd segment of their own category.

Over the dataset, for each category with TP + FP + FN > 0:
``PQ = iou_sum / (TP + FP/2 + FN/2)``, ``SQ = iou_sum / TP`` (0 without TP),
``RQ = TP / (TP + FP/2 + FN/2)``; the All / Things / Stuff values are the plain means over those
categories (of all, of ``isthing``, of the others), in percent.

Two differences from panopticapi, neither changing COCO's numbers: segment areas are pixel counts
of the maps passed in (panopticapi takes the ground truth's areas from its json, which for COCO are
the pixel counts of its PNGs), and a predicted segment may overlap several crowd segments of its
category (panopticapi keeps one per category, COCO has at most one).

The statistics are four arrays over the categories (``iou_sum``, ``tp``, ``fp``, ``fn``), so memory
does not grow with the number of images and distributed ranks can sum them (:meth:`state`,
:meth:`merge`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

VOID = 0

ArrayLike = Union[np.ndarray, Any]  # numpy arrays, or CPU torch tensors (anything np.asarray takes)
STAT_NAMES = ("iou_sum", "tp", "fp", "fn")


def _as_id_map(segment_map: ArrayLike, name: str) -> np.ndarray:
    if hasattr(segment_map, "detach"):  # a torch tensor, possibly on a GPU
        segment_map = segment_map.detach().cpu().numpy()
    segment_map = np.asarray(segment_map)
    if segment_map.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) map of segment ids, got shape {segment_map.shape}")
    if not np.issubdtype(segment_map.dtype, np.integer):
        raise ValueError(f"{name} must hold integer segment ids, got dtype {segment_map.dtype}")
    return segment_map


class PanopticQuality:
    """Streaming PQ / SQ / RQ over a dataset, in panopticapi's definition (see the module docstring).

    Args:
        categories: a COCO ``categories`` list: dicts with ``id``, ``name`` and ``isthing``
            (0/1 or bool). Results list the categories in this order.

    Example::

        pq = PanopticQuality(coco_panoptic_categories())
        for pred_map, pred_segments, gt_map, gt_segments in images:
            pq.update(pred_map, pred_segments, gt_map, gt_segments)
        pq.compute()  # {'PQ': 41.2, 'SQ': ..., 'RQ': ..., 'PQ_th': ..., ..., 'RQ_st': ...}
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]):
        self.category_ids: List[int] = [int(c["id"]) for c in categories]
        self.names: List[str] = [str(c["name"]) for c in categories]
        self.isthing = np.array([bool(c["isthing"]) for c in categories], dtype=bool)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"duplicate category ids in {self.category_ids}")
        self._index = {category_id: i for i, category_id in enumerate(self.category_ids)}
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        c = len(self.category_ids)
        self.iou_sum = np.zeros(c, dtype=np.float64)
        self.tp = np.zeros(c, dtype=np.int64)
        self.fp = np.zeros(c, dtype=np.int64)
        self.fn = np.zeros(c, dtype=np.int64)
        self.num_images = 0

    def _category_index(self, category_id: Any, where: str) -> int:
        try:
            return self._index[int(category_id)]
        except KeyError:
            raise ValueError(f"{where} has unknown category_id {category_id}") from None

    # ----------------------------------------------------------------------------------------
    # Accumulating
    # ----------------------------------------------------------------------------------------
    def update(self, pred_map: ArrayLike, pred_segments: Sequence[Mapping[str, Any]],
               gt_map: ArrayLike, gt_segments: Sequence[Mapping[str, Any]]) -> None:
        """Add one image.

        Args:
            pred_map: (H, W) integer segment ids; 0 = no prediction (void).
            pred_segments: one dict per segment of ``pred_map`` (0 excluded): ``id`` and
                ``category_id`` (a COCO ``segments_info`` list; other keys are ignored).
            gt_map: (H, W) integer segment ids of the ground truth; 0 = VOID (unlabelled). Ids
                that no segment in ``gt_segments`` describes are ignored, as panopticapi does.
            gt_segments: ``id``, ``category_id`` and ``iscrowd`` (0/1; absent = 0) per segment.

        Raises:
            ValueError: the maps differ in shape or are not integer (H, W) maps; a predicted
                segment is listed but absent from ``pred_map`` or present but not listed; ids
                repeat or are 0; a category id is not one of ``categories``.
        """
        pred_map = _as_id_map(pred_map, "pred_map")
        gt_map = _as_id_map(gt_map, "gt_map")
        if pred_map.shape != gt_map.shape:
            raise ValueError(f"pred_map {pred_map.shape} and gt_map {gt_map.shape} differ in shape")

        pred_category = self._segment_categories(pred_segments, "predicted")
        gt_category = self._segment_categories(gt_segments, "ground-truth")
        gt_crowd = {int(s["id"]): bool(s.get("iscrowd", 0)) for s in gt_segments}

        # One joint histogram over (gt id, pred id) pairs gives every area and intersection.
        gt_ids, gt_index = np.unique(gt_map, return_inverse=True)
        pred_ids, pred_index = np.unique(pred_map, return_inverse=True)
        joint = np.bincount(gt_index.ravel() * len(pred_ids) + pred_index.ravel(),
                            minlength=len(gt_ids) * len(pred_ids)).reshape(len(gt_ids), len(pred_ids))
        gt_ids, pred_ids = gt_ids.tolist(), pred_ids.tolist()
        gt_area = dict(zip(gt_ids, joint.sum(axis=1).tolist()))
        pred_area = dict(zip(pred_ids, joint.sum(axis=0).tolist()))

        unlisted = [i for i in pred_ids if i != VOID and i not in pred_category]
        if unlisted:
            raise ValueError(f"segment ids {unlisted} are in pred_map but not in pred_segments")
        missing = [i for i in pred_category if i not in pred_area]
        if missing:
            raise ValueError(f"predicted segments {missing} have no pixel in pred_map")

        void_row = joint[gt_ids.index(VOID)] if VOID in gt_ids else np.zeros(len(pred_ids), np.int64)
        on_void = dict(zip(pred_ids, void_row.tolist()))
        intersection = {(gt_ids[g], pred_ids[p]): int(joint[g, p]) for g, p in zip(*np.nonzero(joint))}

        gt_matched, pred_matched = set(), set()
        for (gt_id, pred_id), overlap in intersection.items():
            if gt_id not in gt_category or pred_id not in pred_category or gt_crowd[gt_id]:
                continue
            category = gt_category[gt_id]
            if pred_category[pred_id] != category:
                continue
            union = pred_area[pred_id] + gt_area.get(gt_id, 0) - overlap - on_void[pred_id]
            iou = overlap / union
            if iou > 0.5:
                self.tp[category] += 1
                self.iou_sum[category] += iou
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)

        crowd_ids_of: Dict[int, List[int]] = {}
        for gt_id, category in gt_category.items():
            if gt_crowd[gt_id]:
                crowd_ids_of.setdefault(category, []).append(gt_id)
            elif gt_id not in gt_matched:
                self.fn[category] += 1

        for pred_id, category in pred_category.items():
            if pred_id in pred_matched:
                continue
            ignored = on_void[pred_id] + sum(intersection.get((crowd_id, pred_id), 0)
                                             for crowd_id in crowd_ids_of.get(category, ()))
            if ignored / pred_area[pred_id] > 0.5:
                continue
            self.fp[category] += 1
        self.num_images += 1

    def _segment_categories(self, segments: Sequence[Mapping[str, Any]], kind: str) -> Dict[int, int]:
        """``{segment id: category index}``, checking ids are unique and not 0."""
        categories: Dict[int, int] = {}
        for segment in segments:
            segment_id = int(segment["id"])
            if segment_id == VOID:
                raise ValueError(f"{kind} segment id 0 is reserved for void")
            if segment_id in categories:
                raise ValueError(f"{kind} segment id {segment_id} is listed twice")
            categories[segment_id] = self._category_index(segment["category_id"],
                                                          f"{kind} segment {segment_id}")
        return categories

    # ----------------------------------------------------------------------------------------
    # Combining accumulators (distributed ranks)
    # ----------------------------------------------------------------------------------------
    def state(self) -> Dict[str, np.ndarray]:
        """Copies of the statistics: ``iou_sum`` (C,) float64, ``tp``, ``fp``, ``fn`` (C,) int64
        and ``num_images`` () int64, C = len(categories) in their order. Summing the states of
        several accumulators (e.g. with ``all_reduce``) gives the state of one that saw every image."""
        state = {name: getattr(self, name).copy() for name in STAT_NAMES}
        state["num_images"] = np.array(self.num_images, dtype=np.int64)
        return state

    def merge(self, other: Union["PanopticQuality", Mapping[str, Any]]) -> None:
        """Add the statistics of another accumulator over the same categories (or of its
        :meth:`state`, whose arrays may also be torch tensors)."""
        if isinstance(other, PanopticQuality):
            if other.category_ids != self.category_ids:
                raise ValueError("cannot merge accumulators over different categories")
            other = other.state()
        for name in STAT_NAMES:
            value = other[name]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.shape != (len(self.category_ids),):
                raise ValueError(f"state['{name}'] has shape {value.shape}, "
                                 f"expected ({len(self.category_ids)},)")
            current = getattr(self, name)
            current += value.astype(current.dtype)
        self.num_images += int(np.asarray(other["num_images"]))

    # ----------------------------------------------------------------------------------------
    # Results
    # ----------------------------------------------------------------------------------------
    def _per_class_fractions(self):
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        counted = (self.tp + self.fp + self.fn) > 0
        safe = np.where(counted, denominator, 1.0)
        pq = np.where(counted, self.iou_sum / safe, 0.0)
        sq = np.where(self.tp > 0, self.iou_sum / np.maximum(self.tp, 1), 0.0)
        rq = np.where(counted, self.tp / safe, 0.0)
        return pq, sq, rq, counted

    def compute(self) -> Dict[str, Optional[float]]:
        """PQ, SQ and RQ in percent, keyed as mmdet 2.x reports them: ``PQ SQ RQ`` over all
        categories, ``PQ_th SQ_th RQ_th`` over things, ``PQ_st SQ_st RQ_st`` over stuff. A group
        none of whose categories was seen (no TP, FP or FN) has None."""
        pq, sq, rq, counted = self._per_class_fractions()
        results: Dict[str, Optional[float]] = {}
        for suffix, members in (("", counted), ("_th", counted & self.isthing),
                                ("_st", counted & ~self.isthing)):
            n = int(members.sum())
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                results[name + suffix] = 100.0 * float(values[members].sum()) / n if n else None
        return results

    def per_class(self) -> List[Dict[str, Any]]:
        """One dict per category, in the order given: ``id, name, isthing``, ``PQ SQ RQ`` in
        percent (None for a category without TP, FP or FN, which the means leave out) and the
        counts ``TP FP FN``."""
        pq, sq, rq, counted = self._per_class_fractions()
        rows = []
        for c, category_id in enumerate(self.category_ids):
            rows.append({
                "id": category_id, "name": self.names[c], "isthing": bool(self.isthing[c]),
                "PQ": 100.0 * float(pq[c]) if counted[c] else None,
                "SQ": 100.0 * float(sq[c]) if counted[c] else None,
                "RQ": 100.0 * float(rq[c]) if counted[c] else None,
                "TP": int(self.tp[c]), "FP": int(self.fp[c]), "FN": int(self.fn[c]),
            })
        return rows

"""COCO mask AP (``COCOeval(iouType='segm')`` of pycocotools), accumulated image by image.

Each image's masks are run-length encoded as soon as they arrive, so only the RLE strings stay in
memory (a few hundred bytes per mask instead of H x W). The accumulated detections are a COCO
results list -- ``{"image_id", "category_id", "segmentation": {"size": [H, W], "counts": str},
"score"}`` -- which :meth:`MaskAP.save_json` writes for the COCO evaluation server or any other
tool, and which distributed ranks combine by concatenation (:meth:`MaskAP.merge`).

As in mmdet 2.x's ``CocoDataset.evaluate``, the evaluation covers every image of the ground truth
(an image without detections counts its objects as missed) and the categories the model predicts.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..utils.atomic import atomic_write_text
from ..utils.quiet import quiet_stdout

# The first six numbers of COCOeval.stats, in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _coco_from_dict(dataset: Mapping[str, Any]) -> COCO:
    coco = COCO()
    # COCOeval rewrites the ground truth's segmentations in place (polygons -> RLE): work on a copy.
    coco.dataset = copy.deepcopy(dict(dataset))
    with quiet_stdout():
        coco.createIndex()
    return coco


class MaskAP:
    """Streaming COCO mask AP.

    Args:
        coco_gt: the ground truth: a ``pycocotools.coco.COCO``, the dict of an ``instances_*.json``
            (copied) or the path of one.
        category_ids: the COCO category id of each contiguous label the model predicts; default:
            the ground truth's category ids in increasing order (for COCO the 80 instance
            categories, i.e. K-Net's thing labels 0..79).

    Example::

        ap = MaskAP("instances_val2017.json")
        for image_id, result in predictions:
            ap.update(image_id, result.masks, result.labels, result.scores)
        ap.compute()  # {'AP': 37.1, 'AP50': ..., 'AP75': ..., 'APs': ..., 'APm': ..., 'APl': ...}
    """

    def __init__(self, coco_gt: Union[COCO, Mapping[str, Any], str, os.PathLike],
                 category_ids: Optional[Sequence[int]] = None):
        if isinstance(coco_gt, COCO):
            self.coco_gt = coco_gt
        elif isinstance(coco_gt, Mapping):
            self.coco_gt = _coco_from_dict(coco_gt)
        else:
            with open(coco_gt, encoding="utf-8") as f:
                self.coco_gt = _coco_from_dict(json.load(f))
        # pycocotools 2.0.10's loadRes copies the ground truth's "info", which a COCO file may
        # leave out (2.0.11 reads it with a default): an empty one serves every version.
        self.coco_gt.dataset.setdefault("info", {})
        if category_ids is None:
            category_ids = sorted(self.coco_gt.getCatIds())
        self.category_ids: List[int] = [int(c) for c in category_ids]
        unknown = [c for c in self.category_ids if c not in self.coco_gt.cats]
        if unknown:
            raise ValueError(f"category ids {unknown} are not categories of the ground truth")
        # image id -> its detections (a COCO results list); one entry per image updated.
        self._detections: Dict[int, List[Dict[str, Any]]] = {}

    def reset(self) -> None:
        """Forget every detection."""
        self._detections = {}

    @property
    def image_ids(self) -> List[int]:
        """The images updated so far, in increasing id."""
        return sorted(self._detections)

    def __len__(self) -> int:
        """The number of detections held."""
        return sum(len(d) for d in self._detections.values())

    # ----------------------------------------------------------------------------------------
    # Accumulating
    # ----------------------------------------------------------------------------------------
    def update(self, image_id: int, masks: Any, labels: Any, scores: Any) -> None:
        """Add the detections of one image (numpy arrays or torch tensors).

        Args:
            image_id: the COCO id of the image.
            masks: (K, H, W) bool (or 0/1) masks at the image's original size (H, W as in the
                ground truth's ``images`` entry).
            labels: (K,) contiguous labels, ``0..len(category_ids)-1``.
            scores: (K,) confidences.

        Raises:
            ValueError: an unknown or already updated image, shapes that do not fit, or a
                label outside ``0..len(category_ids)-1``.
        """
        image_id = int(image_id)
        if image_id not in self.coco_gt.imgs:
            raise ValueError(f"image {image_id} is not in the ground truth")
        if image_id in self._detections:
            raise ValueError(f"image {image_id} was already updated")
        masks, labels, scores = _to_numpy(masks), _to_numpy(labels), _to_numpy(scores)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
        k = masks.shape[0]
        if labels.shape != (k,) or scores.shape != (k,):
            raise ValueError(f"{k} masks need labels and scores of shape ({k},), "
                             f"got {labels.shape} and {scores.shape}")
        image = self.coco_gt.imgs[image_id]
        if "height" in image and "width" in image and masks.shape[1:] != (image["height"], image["width"]):
            raise ValueError(f"masks of image {image_id} are {masks.shape[1:]}, the image is "
                             f"{(image['height'], image['width'])}")
        if k and (labels.min() < 0 or labels.max() >= len(self.category_ids)):
            raise ValueError(f"labels must be in 0..{len(self.category_ids) - 1}, "
                             f"got {labels.min()}..{labels.max()}")

        detections = []
        if k:
            # pycocotools encodes an (H, W, K) Fortran-ordered uint8 stack in one call.
            rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
            for rle, label, score in zip(rles, labels.tolist(), scores.tolist()):
                detections.append({
                    "image_id": image_id,
                    "category_id": self.category_ids[int(label)],
                    "segmentation": {"size": [int(s) for s in rle["size"]],
                                     "counts": rle["counts"].decode("ascii")},
                    "score": float(score),
                })
        self._detections[image_id] = detections

    # ----------------------------------------------------------------------------------------
    # Results as data; combining accumulators (distributed ranks)
    # ----------------------------------------------------------------------------------------
    def results(self) -> List[Dict[str, Any]]:
        """The detections as a COCO results list, by increasing image id (fresh dicts)."""
        return [dict(d, segmentation=dict(d["segmentation"]))
                for image_id in self.image_ids for d in self._detections[image_id]]

    def state(self) -> Dict[str, Any]:
        """A picklable summary for gathering across ranks: ``{"image_ids": [...], "results": [...]}``
        (``image_ids`` also lists images updated without any detection)."""
        return {"image_ids": self.image_ids, "results": self.results()}

    def merge(self, other: Union["MaskAP", Mapping[str, Any]]) -> None:
        """Add the detections of another accumulator (or of its :meth:`state`). Images this one
        already holds are skipped: they are the duplicates a padding ``DistributedSampler`` makes."""
        if isinstance(other, MaskAP):
            other = other.state()
        incoming: Dict[int, List[Dict[str, Any]]] = {int(i): [] for i in other["image_ids"]}
        for detection in other["results"]:
            image_id = int(detection["image_id"])
            if image_id not in incoming:
                raise ValueError(f"a result of image {image_id} that the state's image_ids lacks")
            incoming[image_id].append(detection)
        for image_id, detections in incoming.items():
            if image_id not in self._detections:
                if image_id not in self.coco_gt.imgs:
                    raise ValueError(f"image {image_id} is not in the ground truth")
                self._detections[image_id] = [dict(d, segmentation=dict(d["segmentation"]))
                                              for d in detections]

    def save_json(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`results` as a COCO results json file (atomically)."""
        atomic_write_text(path, json.dumps(self.results()))

    # ----------------------------------------------------------------------------------------
    # Evaluation
    # ----------------------------------------------------------------------------------------
    def compute(self, image_ids: Optional[Iterable[int]] = None,
                verbose: bool = False) -> Dict[str, Optional[float]]:
        """COCO mask AP in percent: ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75`` and ``APs``,
        ``APm``, ``APl`` (small / medium / large objects); None where COCOeval has no ground truth
        to average over (its -1).

        Args:
            image_ids: the images to evaluate; default every image of the ground truth (pass
                ``ap.image_ids`` to score only those updated, e.g. a partial validation run).
            verbose: let pycocotools print its progress and summary table.
        """
        detections = self.results()
        with contextlib.ExitStack() as stack:
            if not verbose:
                stack.enter_context(quiet_stdout())
            if detections:
                coco_dt = self.coco_gt.loadRes(detections)
            else:  # loadRes refuses an empty list; an empty result set is still a valid input
                coco_dt = _coco_from_dict({"images": self.coco_gt.dataset.get("images", []),
                                           "categories": self.coco_gt.dataset.get("categories", []),
                                           "annotations": []})
            evaluator = COCOeval(self.coco_gt, coco_dt, iouType="segm")
            evaluator.params.catIds = list(self.category_ids)
            evaluator.params.imgIds = (sorted(self.coco_gt.getImgIds()) if image_ids is None
                                       else sorted(int(i) for i in image_ids))
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {name: (100.0 * float(value) if value >= 0 else None)
                for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}

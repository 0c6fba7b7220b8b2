"""Dataset-level metrics, accumulated image by image:

- :class:`~knet.metrics.semantic.SegmentationMetric` -- aAcc / mIoU / mAcc as the semantic
  reference (a confusion matrix);
- :class:`PanopticQuality` -- PQ / SQ / RQ as panopticapi's ``pq_compute`` (knet's own code;
  panopticapi is not on PyPI);
- :class:`MaskAP` -- COCO mask AP through pycocotools' ``COCOeval(iouType='segm')``.

Both keep a small state per rank (summable arrays, respectively RLE detections) that
``state()`` / ``merge()`` combine across distributed processes.
"""
from __future__ import annotations

from .mask_ap import MaskAP
from .panoptic_quality import VOID, PanopticQuality
from .semantic import SegmentationMetric

__all__ = ["MaskAP", "PanopticQuality", "SegmentationMetric", "VOID"]

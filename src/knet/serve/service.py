"""What the server does with an uploaded image: check it, decode it, segment it (in batches, on
the worker thread of :mod:`knet.serve.worker`) and answer with JSON or the overlay PNG.

The files in the answers are the bytes ``knet predict`` writes: the label map PNG (semantic) and
the COCO panoptic PNG (panoptic) come from the same encoder (:func:`knet.data.io.encode_image`), and
a panoptic answer's ``segments`` are the ``segments_info`` of ``knet predict``'s ``<stem>.json``
(each with its display ``colour`` added). Nothing here knows about HTTP beyond the status codes
of :class:`RequestError`.
"""
from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.io import decode_image, encode_image
from ..errors import DataError, KnetError
from ..inference.results import (ClassMeta, ClassShare, InstanceResult, PanopticResult, SemanticResult,
                                 encode_panoptic_png, instance_colour)
from ..inference.segmenter import Segmenter

FORMATS = ("json", "png")


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SegmentJob:
    """One uploaded image and how to answer it.

    ``name``: the upload's file name (only for messages and the names of downloads: never opened),
    ``tta``: multi-scale + flip, ``format``: ``json`` or ``png``, ``opacity``: of the PNG overlay,
    ``received``: ``time.perf_counter()`` when its body had arrived.
    """

    data: bytes
    name: str
    tta: bool
    format: str = "json"
    opacity: float = 0.5
    received: float = field(default_factory=time.perf_counter)

    @property
    def label(self) -> str:
        """How error messages name the image."""
        return f"upload {self.name!r}"


@dataclass(frozen=True)
class Reply:
    """A successful answer: a JSON object, or PNG bytes."""

    body: Union[Dict[str, Any], bytes]
    media_type: str
    headers: Dict[str, str] = field(default_factory=dict)


def upload_name(filename: Optional[str]) -> str:
    """The base name of a client's file name, shortened (it names downloads and errors only)."""
    name = PurePath((filename or "").replace("\\", "/")).name.strip() or "image"
    return name[:120]


def b64_png(image: np.ndarray) -> str:
    """A label map, (H, W) uint8/uint16, or an (H, W, 3) uint8 RGB image as base64 PNG text."""
    return base64.b64encode(encode_image(image, ".png")).decode("ascii")


class SegmentService:
    """A :class:`~knet.inference.segmenter.Segmenter` behind the server.

    Args:
        segmenter: the model and its test pipeline (its ``tta`` is the default of requests).
        max_pixels: the largest image accepted (width x height); larger ones are refused with 413.
    """

    def __init__(self, segmenter: Segmenter, max_pixels: int) -> None:
        self.segmenter = segmenter
        self.max_pixels = int(max_pixels)
        self.meta = ClassMeta.of(segmenter.config)
        self.default_tta = bool(segmenter.pipeline.tta)
        self._pipelines: Dict[bool, Any] = {self.default_tta: segmenter.pipeline}
        self._tta_refusal: Optional[str] = None
        # The other setting of multi-scale + flip, built once (a pipeline holds no weights). Models
        # that cannot run it (panoptic, instance) say why, and requests asking for it get that.
        pipeline = segmenter.pipeline
        options = {name: getattr(pipeline, name) for name in ("mode", "crop_size", "stride", "test_scale")
                   if getattr(pipeline, name, None) is not None}
        if options.get("mode") == "whole":
            options.pop("crop_size", None)
            options.pop("stride", None)
        try:
            self._pipelines[not self.default_tta] = segmenter.task.pipeline(
                segmenter.model, **options, tta=not self.default_tta)
        except KnetError as err:
            self._tta_refusal = str(err)

    # ---- what the server says about its model --------------------------------------------------
    @property
    def tta_available(self) -> bool:
        return self._tta_refusal is None

    def model_info(self) -> Dict[str, Any]:
        """``GET /v1/model``: the model's name, task, classes and palette, and the server's limits."""
        config, pipeline = self.segmenter.config, self.segmenter.pipeline
        return {"name": config.name, "task": self.segmenter.task.name, "num_classes": int(config.num_classes),
                "classes": list(self.meta.names), "palette": [list(c) for c in self.meta.palette],
                "tta": self.default_tta, "tta_available": self.tta_available,
                "test_scale": list(pipeline.test_scale), "device": str(self.segmenter.device),
                "max_pixels": self.max_pixels}

    # ---- before the queue: cheap checks on the request's thread -----------------------------
    def check_size(self, data: bytes, label: str) -> None:
        """Refuse an image larger than ``max_pixels`` from its header alone, before anything is
        decoded (a small PNG can hold a huge image). Formats Pillow cannot read are checked after
        the decode instead."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Image.DecompressionBombError as err:
            raise RequestError(413, f"{label}: image too large ({err})") from None
        except Exception:  # noqa: BLE001 - not Pillow's format or a broken header: the decode judges it
            return
        self._check_pixels(width, height, label)

    def _check_pixels(self, width: int, height: int, label: str) -> None:
        if width * height > self.max_pixels:
            raise RequestError(413, f"{label}: {width}x{height} is {width * height} pixels, over the server's "
                                    f"limit of {self.max_pixels} (--max-pixels)")

    def check_tta(self, tta: bool) -> None:
        if tta != self.default_tta and not self.tta_available:
            raise RequestError(400, f"tta={str(tta).lower()}: {self._tta_refusal}")

    # ---- on the worker thread ------------------------------------------------------------------
    def run_batch(self, jobs: Sequence[SegmentJob]) -> List[Union[Reply, BaseException]]:
        """Decode every job's image, segment those that decoded (one pipeline call per setting of
        ``tta``, in which images of equal size share a forward) and render each answer."""
        outcomes: List[Union[Reply, BaseException, None]] = [None] * len(jobs)
        decoded: List[Tuple[int, np.ndarray]] = []
        for i, job in enumerate(jobs):
            try:
                image = decode_image(job.data, job.label)
                self._check_pixels(image.shape[1], image.shape[0], job.label)
                decoded.append((i, image))
            except DataError as err:
                outcomes[i] = RequestError(400, str(err))
            except RequestError as err:
                outcomes[i] = err
        for tta in (False, True):
            group = [(i, image) for i, image in decoded if jobs[i].tta == tta]
            if not group:
                continue
            started = time.perf_counter()
            images = [image for _, image in group]
            if tta == self.default_tta:
                results = self.segmenter.segment_arrays(images)
            else:
                results = self.segmenter.task.results(self._pipelines[tta], images, [None] * len(images),
                                                      self.segmenter.config, score_thr=self.segmenter.score_thr)
            timing = {"queue_ms": 0.0, "inference_ms": 1000.0 * (time.perf_counter() - started),
                      "batch": len(group)}
            for (i, _), result in zip(group, results):
                job = jobs[i]
                timing["queue_ms"] = 1000.0 * (started - job.received)
                try:
                    outcomes[i] = self.render(job, result, dict(timing))
                except KnetError as err:
                    outcomes[i] = RequestError(400, f"{job.label}: {err}")
        return [o if o is not None else RuntimeError("job left unanswered") for o in outcomes]

    def render(self, job: SegmentJob, result: Any, timing: Dict[str, float]) -> Reply:
        """The answer to ``job``: the overlay PNG (``format=png``: ``knet predict``'s
        ``<stem>_overlay.png``), or the JSON object of :func:`result_json`."""
        model = self.segmenter.config.name
        if job.format == "png":
            if isinstance(result, SemanticResult):
                picture = result.overlay(opacity=job.opacity, legend=True)
            else:
                picture = result.overlay(opacity=job.opacity)
            body = encode_image(picture, ".png")
            timing["time_ms"] = 1000.0 * (time.perf_counter() - job.received)
            headers = {"X-Knet-Model": model, "X-Knet-Time-Ms": f"{timing['time_ms']:.1f}"}
            return Reply(body, "image/png", headers)
        body = {"model": model, "task": self.segmenter.task.name, "tta": job.tta,
                **result_json(result, self.meta, PurePath(job.name).stem or "image")}
        timing["time_ms"] = 1000.0 * (time.perf_counter() - job.received)
        body.update({key: round(value, 1) if isinstance(value, float) else value for key, value in timing.items()})
        return Reply(body, "application/json")


# --------------------------------------------------------------------------------------------
# Results as JSON
# --------------------------------------------------------------------------------------------
def result_json(result: Any, meta: ClassMeta, stem: str) -> Dict[str, Any]:
    """``width``, ``height``, ``classes`` (present, largest first: ``index``, ``name``,
    ``fraction`` of the pixels, ``colour``) and

    - semantic: ``label_map``, the base64 label PNG of ``knet predict`` (class index per pixel);
    - panoptic: ``segment_map``, the base64 COCO panoptic PNG of ``knet predict`` (id = R + 256 G +
      256^2 B, 0 = void), and ``segments``, its ``segments_info`` (``id``, ``category_id``,
      ``label``, ``name``, ``isthing``, ``score``, ``area``, ``bbox``) each with its ``colour``;
    - instance: ``segments`` (the instances scored at least the threshold, best first: ``id``,
      ``category_id``, ``label``, ``name``, ``score``, ``area``, ``bbox``, ``colour``) and
      ``segment_map`` in the same encoding, each pixel holding the best instance covering it.

    ``file_name``: ``<stem>.png``, the name ``knet predict`` gives the PNG.
    """
    if isinstance(result, SemanticResult):
        height, width = result.labels.shape
        return {"width": width, "height": height, "file_name": f"{stem}.png",
                "classes": [_class_json(c) for c in result.classes], "label_map": b64_png(result.labels)}
    if isinstance(result, PanopticResult):
        segment_map = result.segment_map
        segments = [{**info, "colour": list(colour)}
                    for info, colour in zip(result.to_coco(f"{stem}.png")["segments_info"], result.colours())]
    elif isinstance(result, InstanceResult):
        segment_map, segments = _instance_map(result)
    else:
        raise KnetError(f"cannot answer with a {type(result).__name__}")
    height, width = segment_map.shape
    labels = {int(s["id"]): int(s["label"]) for s in segments}
    return {"width": width, "height": height, "file_name": f"{stem}.png",
            "classes": [_class_json(c) for c in segment_class_shares(segment_map, labels, meta)],
            "segments": segments, "segment_map": b64_png(encode_panoptic_png(segment_map))}


def _class_json(share: ClassShare) -> Dict[str, Any]:
    return {"index": share.index, "name": share.name, "fraction": round(share.fraction, 6),
            "colour": list(share.colour)}


def _instance_map(result: InstanceResult) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """The instances shown (score >= the result's threshold) as an id map, the best on top as in
    the overlay, and their JSON entries with the overlay's colours."""
    keep = result.kept(result.score_thr)
    segment_map = np.zeros(result.image.shape[:2], np.int32)
    for i in keep[::-1]:  # the lowest score first, so that the best end on top
        segment_map[result.masks[i]] = result.instances[i].id
    segments = []
    for rank, i in enumerate(keep):
        s = result.instances[i]
        segments.append({"id": s.id, "category_id": s.category_id, "label": s.label, "name": s.name,
                         "score": round(s.score, 6), "area": s.area, "bbox": list(s.bbox),
                         "colour": list(instance_colour(rank, result.meta.colour(s.label)))})
    return segment_map, segments


def segment_class_shares(segment_map: np.ndarray, labels: Dict[int, int], meta: ClassMeta) -> List[ClassShare]:
    """The classes of a segment map (ids -> class ``labels``; 0 = void, counted in the total
    only) with their pixel fractions, largest first (ties by index)."""
    counts = np.bincount(segment_map.ravel().astype(np.int64))
    per_class: Dict[int, int] = {}
    for segment_id, label in labels.items():
        area = int(counts[segment_id]) if segment_id < len(counts) else 0
        if area:
            per_class[label] = per_class.get(label, 0) + area
    total = max(int(segment_map.size), 1)
    order = sorted(per_class, key=lambda label: (-per_class[label], label))
    return [ClassShare(index=label, name=meta.name(label), fraction=per_class[label] / total,
                       colour=meta.colour(label)) for label in order]


__all__ = ["FORMATS", "Reply", "RequestError", "SegmentJob", "SegmentService", "result_json",
           "segment_class_shares", "upload_name"]

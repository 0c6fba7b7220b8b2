"""What the :class:`~knet.Segmenter` returns, one object per image: a :class:`SegmentationResult`,
of the model's task: :class:`SemanticResult` (a label map and the class probabilities),
:class:`PanopticResult` (a segment map and its segments) or :class:`InstanceResult` (scored masks).
Each draws itself (``overlay``) and writes the files ``knet predict`` writes for it (``write``).

Semantic (per image, under the output folder): ``<stem>.png`` (the label map: uint8, uint16 beyond
255 classes), ``<stem>_overlay.png`` (with a legend) and with ``--save-probs`` ``<stem>.npy``.

Panoptic (per image, under the output folder):

- ``<stem>.png``: the COCO panoptic PNG, segment id = R + 256 G + 256^2 B, 0 = void. knet numbers
  segments from 1 in descending score order (the official code numbers them from 0, which collides
  with void in COCO's format).
- ``<stem>.json``: ``{"file_name", "segments_info": [{"id", "category_id", "label", "name",
  "isthing", "score", "area", "bbox"}]}`` (``bbox`` = [x, y, width, height]).
- ``<stem>_overlay.png``: each segment in its own colour with its contour and label.

Instance: ``<stem>.json`` (a list of COCO results: ``category_id``, ``label``, ``name``, ``score``,
``segmentation`` as RLE with ``counts`` a string, ``bbox``) and ``<stem>_overlay.png``, both holding
the instances scored at least ``score_thr``; no ``<stem>.png``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import KnetError
from .pipeline import softmax_numpy

Colour = Tuple[int, int, int]


class SegmentationResult:
    """The segmentation of one image, whatever the model's task (:class:`SemanticResult`,
    :class:`PanopticResult`, :class:`InstanceResult`).

    Attributes:
        image: the (H, W, 3) uint8 RGB image that was segmented.
        source: the file it was read from, or None for arrays and PIL images.
        frame_index, timestamp: set by :meth:`knet.Segmenter.stream`: the frame's index in its
            video (or the input's position in an iterable) and its time in seconds from the
            video's start (None when unknown); None for results of single calls.
    """

    image: np.ndarray
    source: Optional[str]
    frame_index: Optional[int] = None
    timestamp: Optional[float] = None

    def overlay(self, opacity: float = 0.5, *, pil: bool = False) -> Any:
        """The image with the prediction drawn over it: uint8 (H, W', 3) RGB, or a ``PIL.Image.Image``
        with ``pil``."""
        raise NotImplementedError

    def video_frame(self, opacity: float = 0.5) -> np.ndarray:
        """The overlay at the image's own size (no legend panel): uint8 (H, W, 3) RGB, a frame of
        an overlay video."""
        return self.overlay(opacity)

    def class_areas(self) -> Dict[int, int]:
        """Pixels per class index (the classes present only): the label map's counts, the
        segments' or the shown instances' areas."""
        raise NotImplementedError

    def write(self, base: Path, opacity: float = 0.5, save_probs: bool = False, overlay: bool = True) -> List[Path]:
        """Write the files ``knet predict`` writes for this image, named ``<base>...``, each
        atomically; returns their paths. ``save_probs``: also the class probabilities, where the
        result has them; ``overlay``: also ``<base>_overlay.png``."""
        raise NotImplementedError

# --------------------------------------------------------------------------------------------
# Semantic
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassShare:
    """A class present in a label map and the fraction of the pixels it covers (0..1)."""

    index: int
    name: str
    fraction: float
    colour: Tuple[int, int, int]


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 label maps for up to 255 classes, uint16 beyond (as ``knet predict`` writes them)."""
    return np.dtype(np.uint8 if num_classes <= 255 else np.uint16)


def class_shares(labels: np.ndarray, class_names: Sequence[str],
                 palette: Sequence[Sequence[int]]) -> List[ClassShare]:
    """The classes present in ``labels`` with their pixel fractions, largest first (ties by index)."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(class_names))
    total = max(int(labels.size), 1)
    present = [int(i) for i in np.flatnonzero(counts)]
    present.sort(key=lambda i: (-int(counts[i]), i))
    return [ClassShare(index=i, name=_name(class_names, i), fraction=float(counts[i]) / total,
                       colour=_colour(palette, i)) for i in present]


def _name(class_names: Sequence[str], index: int) -> str:
    return str(class_names[index]).strip() if index < len(class_names) else f"class_{index}"


def _colour(palette: Sequence[Sequence[int]], index: int) -> Tuple[int, int, int]:
    if not palette:
        return (0, 0, 0)
    r, g, b = palette[index % len(palette)][:3]
    return int(r), int(g), int(b)


class SemanticResult(SegmentationResult):
    """The semantic segmentation of one image.

    Attributes:
        labels: (H, W) class index per pixel at the image's original size (uint8; uint16 when the
            model has more than 255 classes).
        image: the (H, W, 3) uint8 RGB image that was segmented.
        source: the file it was read from, or None for arrays and PIL images.
        class_names, palette: names and RGB colours of the model's classes.
    """

    def __init__(self, image: np.ndarray, scores: Any, scores_are_probabilities: bool,
                 class_names: Sequence[str], palette: Sequence[Sequence[int]],
                 source: Optional[str] = None) -> None:
        self.image = image
        self.source = source
        self.class_names = list(class_names)
        self.palette = [list(c) for c in palette]
        self._scores = scores  # (C, H, W) float32: a torch CPU tensor, or numpy (ONNX Runtime)
        self._scores_are_probabilities = scores_are_probabilities
        self.labels: np.ndarray = np.asarray(scores.argmax(axis=0)).astype(label_dtype(scores.shape[0]))
        self._classes: Optional[List[ClassShare]] = None

    @property
    def num_classes(self) -> int:
        return int(self._scores.shape[0])

    @property
    def classes(self) -> List[ClassShare]:
        """The classes present, largest pixel fraction first."""
        if self._classes is None:
            self._classes = class_shares(self.labels, self.class_names, self.palette)
        return self._classes

    def probabilities(self) -> np.ndarray:
        """Class probabilities, float32 (C, H, W): the softmax of the logits, or with
        multi-scale + flip the mean of the views' probabilities. Their argmax is ``labels``."""
        if isinstance(self._scores, np.ndarray):
            return self._scores if self._scores_are_probabilities else softmax_numpy(self._scores)
        if self._scores_are_probabilities:
            return self._scores.numpy()
        return self._scores.softmax(dim=0).numpy()

    def colorized(self) -> np.ndarray:
        """The label map in the palette's colours, uint8 (H, W, 3) RGB."""
        from .visualize import colorize

        return colorize(self.labels, self.palette)

    def overlay(self, opacity: float = 0.5, legend: bool = True, pil: bool = False) -> Any:
        """The image blended with the palette colours of its labels.

        Args:
            opacity: weight of the colours (0: the image only, 1: the colours only).
            legend: add a panel at the right naming the classes present, largest first, with
                their colours and pixel percentages.
            pil: return a ``PIL.Image.Image`` instead of a uint8 (H, W', 3) RGB array.
        """
        from .visualize import overlay as blend

        if not 0.0 <= opacity <= 1.0:
            raise KnetError(f"opacity must be between 0 and 1, got {opacity}")
        picture = blend(self.image, self.labels, self.palette, opacity)
        if legend:
            picture = add_legend(picture, self.classes)
        if pil:
            from PIL import Image

            return Image.fromarray(picture)
        return picture

    def video_frame(self, opacity: float = 0.5) -> np.ndarray:
        return self.overlay(opacity=opacity, legend=False)

    def class_areas(self) -> Dict[int, int]:
        counts = np.bincount(self.labels.ravel().astype(np.int64))
        return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}

    def write(self, base: Path, opacity: float = 0.5, save_probs: bool = False, overlay: bool = True) -> List[Path]:
        """Write ``<base>.png`` (the label map), ``<base>_overlay.png`` (with a legend; unless
        ``overlay`` is False) and with ``save_probs`` ``<base>.npy`` (float32 (C, H, W)
        probabilities), each atomically."""
        from ..data.io import write_image
        from ..utils.atomic import atomic_write

        paths = [base.with_name(base.name + ".png")]
        write_image(paths[0], self.labels)
        if overlay:
            paths.append(base.with_name(base.name + "_overlay.png"))
            write_image(paths[-1], self.overlay(opacity=opacity, legend=True))
        if save_probs:
            paths.append(base.with_name(base.name + ".npy"))
            probabilities = self.probabilities().astype(np.float32, copy=False)
            atomic_write(paths[-1], lambda f: np.save(f, probabilities))
        return paths

    def __repr__(self) -> str:
        top = ", ".join(f"{c.name} {100 * c.fraction:.1f}%" for c in self.classes[:5])
        more = f", +{len(self.classes) - 5} more" if len(self.classes) > 5 else ""
        where = f"{self.source}: " if self.source else ""
        return f"<SemanticResult {where}{self.labels.shape[1]}x{self.labels.shape[0]}, {top}{more}>"


# --------------------------------------------------------------------------------------------
# Legend
# --------------------------------------------------------------------------------------------
def add_legend(picture: np.ndarray, classes: Sequence[ClassShare], max_entries: int = 40) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 RGB with a legend panel appended at its right: a colour swatch,
    the class name and its pixel percentage for each of ``classes`` (at most ``max_entries``, the
    rest summarised in one line). The panel grows the canvas downwards when it is taller than the
    picture; the picture's pixels are left unchanged at the top left."""
    import cv2

    height, width = picture.shape[:2]
    scale = float(np.clip(height / 700.0, 0.35, 1.0))
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    entries = [(c.colour, f"{c.name} {100 * c.fraction:.1f}%") for c in classes[:max_entries]]
    if len(classes) > max_entries:
        rest = sum(c.fraction for c in classes[max_entries:])
        entries.append(((255, 255, 255), f"+{len(classes) - max_entries} more {100 * rest:.1f}%"))
    (_, text_h), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    line = text_h + baseline + max(4, int(8 * scale))
    swatch = text_h + baseline
    margin = max(4, int(10 * scale))
    text_w = max([cv2.getTextSize(text, font, scale, thickness)[0][0] for _, text in entries] or [0])
    panel_w = margin * 3 + swatch + text_w
    panel_h = margin * 2 + line * len(entries)
    canvas = np.full((max(height, panel_h), width + panel_w, 3), 255, dtype=np.uint8)
    canvas[:height, :width] = picture
    for row, (colour, text) in enumerate(entries):
        top = margin + row * line
        x0 = width + margin
        cv2.rectangle(canvas, (x0, top), (x0 + swatch, top + swatch), tuple(int(v) for v in colour), -1)
        cv2.rectangle(canvas, (x0, top), (x0 + swatch, top + swatch), (0, 0, 0), 1)
        cv2.putText(canvas, text, (x0 + swatch + margin, top + text_h), font, scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return canvas



# --------------------------------------------------------------------------------------------
# Panoptic and instance
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """A panoptic segment or an instance. ``id``: its value in the segment map (from 1); ``label``:
    the model's class index; ``category_id``: the dataset's (COCO) id of that class."""

    id: int
    label: int
    name: str
    category_id: int
    is_thing: bool
    score: float
    area: int
    bbox: Tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class ClassMeta:
    """What the results need to know about a model's classes (from its config: :meth:`of`)."""

    names: List[str]
    category_ids: List[int]
    isthing: List[bool]
    palette: List[Colour]

    @classmethod
    def of(cls, config: Any) -> "ClassMeta":
        """The class names, dataset category ids, thing flags and colours a config carries; the
        label itself stands in for a missing category id, a generated colour for a missing one."""
        from ..data.palette import default_palette

        count = int(config.num_classes)
        names = list(config.class_names or [f"class_{i}" for i in range(count)])
        category_ids = list(getattr(config, "category_ids", None) or range(count))
        isthing = list(getattr(config, "isthing", None) or [True] * count)
        palette = [tuple(c) for c in (config.palette or default_palette(count + 1)[1:])]
        return cls(names, [int(i) for i in category_ids], [bool(t) for t in isthing], palette)

    def name(self, label: int) -> str:
        return self.names[label] if 0 <= label < len(self.names) else f"class_{label}"

    def category_id(self, label: int) -> int:
        return int(self.category_ids[label]) if 0 <= label < len(self.category_ids) else int(label)

    def colour(self, label: int) -> Colour:
        if not self.palette:
            return (128, 128, 128)
        r, g, b = self.palette[label % len(self.palette)][:3]
        return int(r), int(g), int(b)


def bounding_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """[x, y, width, height] of the True pixels of an (H, W) mask; zeros when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def encode_panoptic_png(segment_map: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> uint8 (H, W, 3) RGB with id = R + 256 G + 256^2 B (COCO panoptic)."""
    ids = segment_map.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def decode_panoptic_png(rgb: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_panoptic_png`: (H, W, 3) RGB -> (H, W) int64 ids."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def instance_colour(index: int, base: Colour) -> Colour:
    """A colour per instance: the class colour, turned in hue by the golden angle for each further
    instance, so that touching instances of one class stay apart."""
    import colorsys

    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in base))
    h = (h + 0.382 * index) % 1.0
    s, v = max(s, 0.45), max(v, 0.55)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def draw_segments(image: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[Colour],
                  captions: Sequence[str], opacity: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with each mask blended in its colour, its contour drawn and its
    caption written at the top of its box. Later masks are painted over earlier ones."""
    import cv2

    if not 0.0 <= opacity <= 1.0:
        raise KnetError(f"opacity must be between 0 and 1, got {opacity}")
    out = image.astype(np.float32)
    for mask, colour in zip(masks, colours):
        out[mask] = out[mask] * (1.0 - opacity) + np.asarray(colour, np.float32) * opacity
    out = np.rint(out).astype(np.uint8)
    scale = float(np.clip(min(image.shape[:2]) / 600.0, 0.3, 0.8))
    for mask, colour, caption in zip(masks, colours, captions):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 1)
        x, y, w, h = bounding_box(mask)
        if w and caption:
            (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = max(y, th + base)
            x = max(0, min(x, out.shape[1] - tw))  # the caption stays inside the picture
            cv2.rectangle(out, (x, top - th - base), (x + tw, top), tuple(int(c) for c in colour), -1)
            cv2.putText(out, caption, (x, top - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                        cv2.LINE_AA)
    return out


def _write_json(path: Path, data: Any) -> None:
    from ..utils.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _to_pil(picture: np.ndarray, pil: bool) -> Any:
    if not pil:
        return picture
    from PIL import Image

    return Image.fromarray(picture)


class PanopticResult(SegmentationResult):
    """The panoptic segmentation of one image.

    Attributes:
        segment_map: (H, W) int32 segment ids at the image's size, 0 = void (no segment).
        segments: the :class:`Segment` of every id, in descending score order (ids 1, 2, ...).
        image, source: the uint8 (H, W, 3) RGB image and the file it came from (or None).
    """

    def __init__(self, image: np.ndarray, segment_map: np.ndarray, segments: List[Segment], meta: ClassMeta,
                 source: Optional[str] = None) -> None:
        self.image = image
        self.segment_map = segment_map.astype(np.int32)
        self.segments = segments
        self.meta = meta
        self.source = source

    @classmethod
    def from_prediction(cls, image: np.ndarray, prediction: Any, meta: ClassMeta,
                        source: Optional[str] = None) -> "PanopticResult":
        """From a :class:`knet.postprocess.PanopticPrediction` (segment map + segments)."""
        segment_map = np.asarray(prediction.segment_map.cpu() if hasattr(prediction.segment_map, "cpu")
                                 else prediction.segment_map).astype(np.int32)
        # Every segment's pixel count in one pass over the map (ids are small non-negative integers).
        areas = np.bincount(segment_map.ravel(),
                            minlength=max((int(s.id) for s in prediction.segments), default=0) + 1)
        segments = [Segment(id=int(s.id), label=int(s.label), name=meta.name(int(s.label)),
                            category_id=meta.category_id(int(s.label)), is_thing=bool(s.is_thing),
                            score=float(s.score), area=int(areas[int(s.id)]), bbox=bounding_box(segment_map == s.id))
                    for s in prediction.segments]
        return cls(image, segment_map, segments, meta, source)

    def colours(self) -> List[Colour]:
        """One colour per segment: stuff in its class colour, each thing instance its own."""
        counts: Dict[int, int] = {}
        colours = []
        for segment in self.segments:
            base = self.meta.colour(segment.label)
            if segment.is_thing:
                colours.append(instance_colour(counts.get(segment.label, 0), base))
                counts[segment.label] = counts.get(segment.label, 0) + 1
            else:
                colours.append(base)
        return colours

    def overlay(self, opacity: float = 0.5, pil: bool = False) -> Any:
        """The image with each segment in its own colour (things: one per instance), its contour
        and its label (things with their score)."""
        masks = [self.segment_map == s.id for s in self.segments]
        captions = [f"{s.name} {s.score:.2f}" if s.is_thing else s.name for s in self.segments]
        return _to_pil(draw_segments(self.image, masks, self.colours(), captions, opacity), pil)

    def to_coco(self, file_name: str) -> Dict[str, Any]:
        """The COCO panoptic annotation of this image (with knet's ``label``, ``name`` and ``score``)."""
        return {"file_name": file_name, "segments_info": [
            {"id": s.id, "category_id": s.category_id, "label": s.label, "name": s.name, "isthing": s.is_thing,
             "score": round(s.score, 6), "area": s.area, "bbox": list(s.bbox)} for s in self.segments]}

    def to_huggingface(self) -> Dict[str, Any]:
        """The dict Hugging Face's ``post_process_panoptic_segmentation`` returns per image:
        ``segmentation`` (H, W) int32 ids from 1 (0: no segment) and ``segments_info``
        (``id``, ``label_id``, ``was_fused``, ``score``)."""
        return {"segmentation": self.segment_map.copy(),
                "segments_info": [{"id": s.id, "label_id": s.label, "was_fused": False, "score": s.score}
                                  for s in self.segments]}

    def class_areas(self) -> Dict[int, int]:
        areas: Dict[int, int] = {}
        for segment in self.segments:
            areas[segment.label] = areas.get(segment.label, 0) + segment.area
        return areas

    def write(self, base: Path, opacity: float = 0.5, save_probs: bool = False, overlay: bool = True) -> List[Path]:
        """``<base>.png`` (COCO panoptic PNG), ``<base>.json`` and ``<base>_overlay.png`` (unless
        ``overlay`` is False)."""
        from ..data.io import write_image

        png, js, over = (base.with_name(base.name + suffix) for suffix in (".png", ".json", "_overlay.png"))
        write_image(png, encode_panoptic_png(self.segment_map))
        _write_json(js, self.to_coco(png.name))
        if not overlay:
            return [png, js]
        write_image(over, self.overlay(opacity))
        return [png, js, over]

    def __repr__(self) -> str:
        things = sum(s.is_thing for s in self.segments)
        where = f"{self.source}: " if self.source else ""
        return (f"<PanopticResult {where}{self.segment_map.shape[1]}x{self.segment_map.shape[0]}, "
                f"{things} things, {len(self.segments) - things} stuff>")


class InstanceResult(SegmentationResult):
    """The instances found in one image, best first.

    Attributes:
        masks: (K, H, W) bool; labels (K,) int64; scores (K,) float32 (all the model's top-k).
        instances: the :class:`Segment` of each (``id`` = its rank from 1).
        score_thr: what the overlay and the written files show by default (mmdetection's 0.3).
    """

    def __init__(self, image: np.ndarray, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                 meta: ClassMeta, source: Optional[str] = None, score_thr: float = 0.3) -> None:
        self.score_thr = float(score_thr)
        self.image = image
        self.masks = masks.astype(bool)
        self.labels = labels.astype(np.int64)
        self.scores = scores.astype(np.float32)
        self.source = source
        self.meta = meta
        self.instances = [Segment(id=i + 1, label=int(label), name=meta.name(int(label)),
                                  category_id=meta.category_id(int(label)), is_thing=True, score=float(score),
                                  area=int(np.count_nonzero(mask)), bbox=bounding_box(mask))
                          for i, (mask, label, score) in enumerate(zip(self.masks, self.labels, self.scores))]

    @classmethod
    def from_prediction(cls, image: np.ndarray, prediction: Any, meta: ClassMeta, source: Optional[str] = None,
                        score_thr: float = 0.3) -> "InstanceResult":
        """From a :class:`knet.postprocess.InstancePrediction` (masks, labels, scores)."""
        def array(x: Any) -> np.ndarray:
            return np.asarray(x.cpu() if hasattr(x, "cpu") else x)

        return cls(image, array(prediction.masks), array(prediction.labels), array(prediction.scores), meta, source,
                   score_thr)

    def kept(self, score_thr: float) -> List[int]:
        return [i for i, s in enumerate(self.scores) if s >= score_thr]

    def overlay(self, opacity: float = 0.5, score_thr: Optional[float] = None, pil: bool = False) -> Any:
        """The image with the instances scored at least ``score_thr`` (default ``self.score_thr``),
        each in its own colour with its contour, name and score."""
        keep = self.kept(self.score_thr if score_thr is None else score_thr)
        colours = [instance_colour(rank, self.meta.colour(int(self.labels[i]))) for rank, i in enumerate(keep)]
        captions = [f"{self.instances[i].name} {self.scores[i]:.2f}" for i in keep]
        # Painted lowest score first, so that the best instances end on top.
        masks = [self.masks[i] for i in keep]
        return _to_pil(draw_segments(self.image, masks[::-1], colours[::-1], captions[::-1], opacity), pil)

    def to_coco(self, image_id: Any = None, score_thr: float = 0.0) -> List[Dict[str, Any]]:
        """COCO results (RLE ``segmentation`` with ``counts`` as a string) of the instances scored at
        least ``score_thr``."""
        from pycocotools import mask as mask_utils

        results = []
        for i in self.kept(score_thr):
            rle = mask_utils.encode(np.asfortranarray(self.masks[i].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            entry = {"category_id": self.instances[i].category_id, "label": int(self.labels[i]),
                     "name": self.instances[i].name, "score": round(float(self.scores[i]), 6),
                     "segmentation": rle, "bbox": list(self.instances[i].bbox)}
            if image_id is not None:
                entry = {"image_id": image_id, **entry}
            results.append(entry)
        return results

    def class_areas(self) -> Dict[int, int]:
        """Pixels per class of the instances scored at least ``score_thr`` (overlapping instances
        each count their own)."""
        areas: Dict[int, int] = {}
        for i in self.kept(self.score_thr):
            label = int(self.labels[i])
            areas[label] = areas.get(label, 0) + self.instances[i].area
        return areas

    def write(self, base: Path, opacity: float = 0.5, save_probs: bool = False, overlay: bool = True) -> List[Path]:
        """``<base>.json`` (COCO results) and ``<base>_overlay.png`` (unless ``overlay`` is False), of
        the instances scored at least ``score_thr``."""
        from ..data.io import write_image

        js, over = base.with_name(base.name + ".json"), base.with_name(base.name + "_overlay.png")
        _write_json(js, self.to_coco(score_thr=self.score_thr))
        if not overlay:
            return [js]
        write_image(over, self.overlay(opacity))
        return [js, over]

    def __repr__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        shown = ", ".join(f"{s.name} {s.score:.2f}" for s in self.instances[:5])
        return f"<InstanceResult {where}{len(self.instances)} instances: {shown}>"


__all__ = ["ClassMeta", "ClassShare", "InstanceResult", "PanopticResult", "Segment", "SegmentationResult",
           "SemanticResult", "add_legend", "bounding_box", "class_shares", "decode_panoptic_png", "draw_segments",
           "encode_panoptic_png", "instance_colour", "label_dtype"]

"""COCO datasets in COCO's own formats, for K-Net's panoptic and instance models.

Layouts (``ROOT`` is e.g. ``data/coco``, ``SPLIT`` e.g. ``val2017``)::

    ROOT/annotations/panoptic_SPLIT.json       panoptic labels (panopticapi's format)
    ROOT/annotations/panoptic_SPLIT/*.png      segment id per pixel: R + 256 G + 256^2 B (0 = void)
    ROOT/annotations/instances_SPLIT.json      instance labels (polygons / RLE)
    ROOT/annotations/image_info_SPLIT.json     images only (test-dev): no labels
    ROOT/SPLIT/*.jpg                            images (test-dev2017's are in ROOT/test2017/)

Classes are numbered with :func:`knet.data.coco_categories.contiguous_categories`: things first in
increasing category id, then stuff (COCO: labels 0..79 things, 80..132 stuff), as mmdet 2.x's
``cat2label`` and the K-Net heads.

Items (``dataset[i]``) are dicts. Both kinds have ``image`` (uint8 (H, W, 3) RGB), ``image_id``
(COCO id), ``image_path``, ``label_path`` (the panoptic PNG, else None) and the training targets
exactly as mmdet 2.x's loaders build them:

- ``masks``: bool (K, H, W) thing masks, ``labels``: int64 (K,) their labels; crowd things are not
  among them (mmdet puts them in ``gt_bboxes_ignore``, which K-Net never reads: they are
  background);
- ``sem_seg``: uint8 (H, W) semantic map (panoptic only, else None): every segment's label --
  stuff 80.., things (crowd included, as ``LoadPanopticAnnotations``) their thing label -- and the
  dataset's ``ignore_index`` (255 unless given: the model config's ``data.ignore_index``) on void
  pixels.

Panoptic items add ``pan_map`` (int32 (H, W) segment ids, 0 = void) and ``segments`` (one dict
per ``segments_info`` entry: ``id, category_id, label, iscrowd, isthing, area, bbox``): the
ground truth of :class:`knet.metrics.PanopticQuality`. Instance items add ``instances`` (one dict
per annotation of the image, crowd included: ``id, category_id, label, iscrowd, area, bbox``); the
evaluation ground truth is the dataset's :attr:`CocoInstanceDataset.coco` (crowd regions are
ignore regions for :class:`knet.metrics.MaskAP`). Without labels (an image-info split) every
label field is None.

Bad input raises a one-line :class:`knet.errors.DataError` naming the file and the id: from the
constructor for dataset-level problems (missing or unparsable json, an annotation of an image id
that is not in ``images``, an empty split), from ``dataset[i]`` for problems of one image (missing
image or PNG, sizes that differ from the json, PNG ids and ``segments_info`` that disagree, a
category id that is not in ``categories``, an undecodable segmentation), so that ``knet test
--skip-bad`` skips exactly that image.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..errors import DataError
from ..utils.quiet import quiet_stdout
from .coco_categories import CategoryTable, coco_panoptic_categories, contiguous_categories
from .io import read_image

__all__ = [
    "CocoInstanceDataset",
    "CocoPanopticDataset",
    "COCO_INSTANCE_KIND",
    "COCO_PANOPTIC_KIND",
    "annotation_file",
    "build_coco_dataset",
    "decode_segmentation",
    "detect_coco_kind",
    "id_to_rgb",
    "mask_bbox",
    "rgb_to_id",
]

COCO_PANOPTIC_KIND = "coco_panoptic"
COCO_INSTANCE_KIND = "coco_instance"
# Default sem_seg value of void pixels and of the pixels of skipped segments (``ignore_index``).
IGNORE_LABEL = 255

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Panoptic PNG encoding
# --------------------------------------------------------------------------------------------
def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """panopticapi's ``rgb2id``: uint8 (H, W, 3) RGB -> int32 (H, W) ids R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """panopticapi's ``id2rgb``: integer (H, W) ids in [0, 256^3) -> uint8 (H, W, 3) RGB."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Files of a root
# --------------------------------------------------------------------------------------------
def annotation_file(root: PathLike, split: str, kind: str) -> Tuple[Optional[Path], bool]:
    """The json a ``kind`` dataset of ``split`` reads under ``root/annotations``, and whether it
    holds labels: ``panoptic_SPLIT.json`` / ``instances_SPLIT.json`` (labels), else an image-info
    file (``panoptic_image_info_SPLIT.json`` -- K-Net's test-dev file with the panoptic
    categories -- or ``image_info_SPLIT.json``). ``(None, False)`` when none exists."""
    folder = Path(root) / "annotations"
    if kind == COCO_PANOPTIC_KIND:
        candidates = [(f"panoptic_{split}.json", True), (f"panoptic_image_info_{split}.json", False),
                      (f"image_info_{split}.json", False)]
    elif kind == COCO_INSTANCE_KIND:
        candidates = [(f"instances_{split}.json", True), (f"image_info_{split}.json", False)]
    else:
        raise ValueError(f"unknown COCO dataset kind {kind!r}; valid: {COCO_PANOPTIC_KIND}, {COCO_INSTANCE_KIND}")
    for name, labelled in candidates:
        if (folder / name).is_file():
            return folder / name, labelled
    return None, False


def detect_coco_kind(root: PathLike, split: Optional[str] = None) -> Tuple[str, ...]:
    """The COCO dataset kinds ``root`` can be read as: ``("coco_panoptic", "coco_instance")``,
    one of them, or ``()`` when ``root/annotations`` holds no COCO json.

    With ``split`` only that split's files count (labelled or image-info json, see
    :func:`annotation_file`); without, any ``panoptic_*.json`` / ``instances_*.json`` does. A root
    with both kinds leaves the choice to the caller (the model's task).
    """
    folder = Path(root) / "annotations"
    if not folder.is_dir():
        return ()
    kinds = []
    for kind, pattern in ((COCO_PANOPTIC_KIND, "panoptic_*.json"), (COCO_INSTANCE_KIND, "instances_*.json")):
        if split is not None:
            found = annotation_file(root, split, kind)[0] is not None
        else:
            found = any(p.is_file() for p in folder.glob(pattern))
        if found:
            kinds.append(kind)
    return tuple(kinds)


def _load_json(path: Path) -> Dict[str, Any]:
    """The json object of an annotation file, with a DataError naming it when it is missing,
    unparsable or not a COCO file (a dict with an ``images`` list)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read annotation file ({err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid json (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO annotation file (expected a json object with an 'images' list)")
    return data


def _default_image_dir(root: Path, split: str) -> Path:
    """``ROOT/SPLIT``; COCO keeps the test-dev images in ``test2017`` (the test set they belong to)."""
    folder = root / split
    if not folder.is_dir() and split.startswith("test-dev"):
        test_folder = root / ("test" + split[len("test-dev"):])
        if test_folder.is_dir():
            return test_folder
    return folder


# --------------------------------------------------------------------------------------------
# Masks from instance annotations
# --------------------------------------------------------------------------------------------
def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool (height, width) mask of a COCO ``segmentation``: polygons (a list of
    ``[x1, y1, x2, y2, ...]``), uncompressed RLE (``{"size", "counts": [...]}``) or compressed RLE
    (``counts`` a string), as pycocotools' ``annToMask`` (and mmdet's ``_poly2mask``) decode it.

    Raises:
        ValueError: a segmentation of none of these forms, or of another size.
    """
    if isinstance(segmentation, list):
        # Degenerate polygons (fewer than 3 points; COCO has a few) rasterise to (almost) nothing,
        # as in mmdet, rather than failing.
        if not segmentation or not all(isinstance(p, (list, tuple)) and p for p in segmentation):
            raise ValueError("polygons must be a non-empty list of [x1, y1, x2, y2, ...] lists")
        polygons = [[float(v) for v in p] for p in segmentation]
        # pycocotools takes a list whose first entry has 4 numbers for boxes: give 2-point
        # polygons a third point equal to their second (the same outline).
        polygons = [p + p[-2:] if len(p) == 4 else p for p in polygons]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(s) for s in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE of size {segmentation['size']} for an image of {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE (COCO's crowd regions)
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    else:
        raise ValueError("expected polygons (a list) or an RLE dict with 'size' and 'counts'")
    return mask_utils.decode(rle).astype(bool)


def _coco_index(data: Dict[str, Any], path: Path) -> COCO:
    """A pycocotools COCO over an already loaded json dict."""
    coco = COCO()
    coco.dataset = data
    try:
        with quiet_stdout():
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed COCO json (an entry lacks {err})") from None
    return coco


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class _CocoDataset:
    """What both COCO datasets share: the json, images, categories, metadata and item indexing.

    ``self.images`` are the json's image dicts in json order (after the subclass's filters),
    ``self.table`` the categories with contiguous labels. Subclasses read the labels of an image
    (:meth:`_labels`, :meth:`_no_labels`) and say what a missing json should have been called.
    """

    name = ""

    def __init__(self, root: PathLike, split: str, ann_file: Optional[PathLike],
                 image_dir: Optional[PathLike], ignore_index: int = IGNORE_LABEL) -> None:
        self.root = Path(root)
        self.split = split
        self.ignore_index = int(ignore_index)
        if not 0 <= self.ignore_index <= 255:
            raise DataError(f"data.ignore_index={self.ignore_index}: semantic maps are 8-bit, so it must be in 0..255")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        if ann_file is not None:
            self.ann_file = Path(ann_file)
            labelled = None  # decided by the json's content
        else:
            found, labelled = annotation_file(self.root, split, self.name)
            if found is None:
                raise DataError(self._missing_json_message())
            self.ann_file = found
        self.data = _load_json(self.ann_file)
        self.has_labels = bool(labelled) if labelled is not None else "annotations" in self.data
        self.image_dir = Path(image_dir) if image_dir is not None else _default_image_dir(self.root, split)
        if not self.image_dir.is_dir():
            raise DataError(f"missing image folder {self.image_dir}: expected the images of {self.ann_file.name} there")
        self.images: List[Dict[str, Any]] = self._check_images(self.data["images"])
        self.table: CategoryTable = self._table(self.data.get("categories"))
        if self.table.num_classes > self.ignore_index:
            raise DataError(f"{self.ann_file}: {self.table.num_classes} categories but data.ignore_index="
                            f"{self.ignore_index} is a class label; it must be in {self.table.num_classes}..255 "
                            "(labels are 8-bit)")
        self.id_to_label: Dict[int, int] = self.table.id_to_label

    def _missing_json_message(self) -> str:
        raise NotImplementedError

    def _check_images(self, images: List[Any]) -> List[Dict[str, Any]]:
        seen = set()
        for number, image in enumerate(images):
            if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
                raise DataError(f"{self.ann_file}: images[{number}] lacks 'id' or 'file_name'")
            if image["id"] in seen:
                raise DataError(f"{self.ann_file}: image id {image['id']} appears twice in 'images'")
            seen.add(image["id"])
        return images

    def _table(self, categories: Any) -> CategoryTable:
        if not isinstance(categories, list) or not categories:
            raise DataError(f"{self.ann_file}: no 'categories' list")
        try:
            return contiguous_categories(categories)
        except (ValueError, TypeError) as err:
            raise DataError(f"{self.ann_file}: bad 'categories' ({err})") from None

    def _keep(self, keep: Sequence[bool]) -> None:
        """Keep the images whose flag is set; an empty result is an error (an empty split)."""
        if not self.images:
            raise DataError(f"{self.ann_file}: no images in split {self.split!r}")
        self.images = [image for image, flag in zip(self.images, keep) if flag]
        if not self.images:
            raise DataError(f"{self.ann_file}: no images left in split {self.split!r} after dropping those "
                            "without things (filter_empty_gt) or smaller than min_size")

    def _check_annotation_images(self, image_ids: Sequence[Any], what: str) -> None:
        """A DataError for the first annotation whose image id is not in ``images``."""
        known = {image["id"] for image in self.data["images"]}
        for number, image_id in enumerate(image_ids):
            if image_id not in known:
                raise DataError(f"{self.ann_file}: {what}[{number}] refers to image id {image_id}, "
                                "which is not in 'images'")

    # ---- metadata ------------------------------------------------------------------------
    @property
    def class_names(self) -> List[str]:
        return list(self.table.names)

    @property
    def palette(self) -> List[List[int]]:
        """RGB colour per class, ``[[r, g, b], ...]`` (the json's ``color`` where it has one)."""
        return [list(c) for c in self.table.palette]

    @property
    def isthing(self) -> List[bool]:
        return list(self.table.isthing)

    @property
    def category_ids(self) -> List[int]:
        """COCO category id of each label (``category_ids[label]``)."""
        return list(self.table.ids)

    @property
    def categories(self) -> List[Dict[str, Any]]:
        """The categories in label order as a COCO list (``id, name, isthing, color``): what
        :class:`knet.metrics.PanopticQuality` takes."""
        return self.table.to_coco()

    @property
    def num_classes(self) -> int:
        return self.table.num_classes

    @property
    def num_thing_classes(self) -> int:
        return self.table.num_things

    @property
    def num_stuff_classes(self) -> int:
        return self.table.num_stuff

    @property
    def image_ids(self) -> List[int]:
        return [image["id"] for image in self.images]

    @functools.cached_property
    def samples(self) -> List[Tuple[Path, Optional[Path]]]:
        """(image path, label file or None) per item, as the other datasets list them."""
        return [(self.image_dir / image["file_name"], self._label_path(i)) for i, image in enumerate(self.images)]

    def _label_path(self, index: int) -> Optional[Path]:
        return None

    def __len__(self) -> int:
        return len(self.images)

    def relative_name(self, index: int) -> str:
        """The image's ``file_name`` (relative to the image folder), for output names."""
        return str(self.images[index]["file_name"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ann_file.name}: {len(self)} images, {self.num_classes} classes)"

    # ---- loading -------------------------------------------------------------------------
    def load_image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB image of item ``index``, checked against the json's size."""
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        try:
            image = read_image(path)
        except DataError as err:
            raise DataError(f"image id {info['id']}: {err}") from None
        expected = (info.get("height"), info.get("width"))
        if None not in expected and image.shape[:2] != tuple(int(v) for v in expected):
            raise DataError(f"{path}: image id {info['id']} is {image.shape[1]}x{image.shape[0]} but "
                            f"{self.ann_file.name} says {expected[1]}x{expected[0]} (width x height)")
        return image

    def _labels(self, index: int, height: int, width: int) -> Dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        info = self.images[index]
        image = self.load_image(index)
        item: Dict[str, Any] = {
            "image": image,
            "image_id": info["id"],
            "image_path": str(self.image_dir / info["file_name"]),
            "label_path": None,
        }
        item.update(self._labels(index, *image.shape[:2]) if self.has_labels else self._no_labels())
        return item

    def _no_labels(self) -> Dict[str, Any]:
        raise NotImplementedError


def _keeps_training_target(area: Any, bbox: Any) -> bool:
    """mmdet 2.x's rule for a usable annotation: a positive area and a box at least 1 px wide and high."""
    return area > 0 and bbox[2] >= 1 and bbox[3] >= 1


class CocoPanopticDataset(_CocoDataset):
    """COCO panoptic segmentation (``panoptic_SPLIT.json`` + ``panoptic_SPLIT/*.png``).

    Args:
        root: the COCO folder (holding ``annotations/`` and the image folders).
        split: e.g. ``val2017``, ``train2017``; ``test-dev2017`` reads an image-info json
            (``panoptic_image_info_SPLIT.json`` or ``image_info_SPLIT.json``) without labels.
        ann_file, image_dir, panoptic_dir: other places than the standard ones.
        categories: a COCO categories list (``id, name, isthing``) to use instead of the json's.
            An image-info json whose categories lack ``isthing`` (COCO's own test-dev file lists
            the 80 thing categories only) gets COCO's 133 panoptic categories.
        filter_empty_gt: drop images without any thing segment (crowd ones count), as mmdet's
            training set does (``filter_empty_gt``, off in test mode).
        min_size: drop images whose shorter side (json ``width``/``height``) is below this; mmdet
            uses 32 for training, 0 (keep all) for evaluation.
        ignore_index: the ``sem_seg`` value of void pixels (in ``num_classes..255``).

    Items: see the module docstring. A segment is left out of ``masks``/``sem_seg`` (its pixels
    are ``ignore_index`` in ``sem_seg``) when its json area is 0 or its bbox is under 1 px wide or
    high, as mmdet 2.x does; ``pan_map``/``segments`` keep every segment (the evaluation ground truth).
    """

    name = COCO_PANOPTIC_KIND

    def __init__(self, root: PathLike, split: str = "val2017", *, ann_file: Optional[PathLike] = None,
                 image_dir: Optional[PathLike] = None, panoptic_dir: Optional[PathLike] = None,
                 categories: Optional[Sequence[Mapping[str, Any]]] = None, filter_empty_gt: bool = False,
                 min_size: int = 0, ignore_index: int = IGNORE_LABEL) -> None:
        self._override_categories = categories
        super().__init__(root, split, ann_file, image_dir, ignore_index)
        self.panoptic_dir: Optional[Path] = None
        self._entries: Dict[Any, Dict[str, Any]] = {}
        if self.has_labels:
            annotations = self.data.get("annotations")
            if not isinstance(annotations, list):
                raise DataError(f"{self.ann_file}: 'annotations' is not a list")
            for number, entry in enumerate(annotations):
                if not isinstance(entry, dict) or not {"image_id", "file_name", "segments_info"} <= entry.keys():
                    raise DataError(f"{self.ann_file}: annotations[{number}] lacks 'image_id', 'file_name' "
                                    "or 'segments_info'")
            self._check_annotation_images([entry["image_id"] for entry in annotations], "annotations")
            self._entries = {entry["image_id"]: entry for entry in annotations}
            self.panoptic_dir = (Path(panoptic_dir) if panoptic_dir is not None
                                 else self.ann_file.with_suffix(""))
            if not self.panoptic_dir.is_dir():
                raise DataError(f"missing folder {self.panoptic_dir}: expected the panoptic PNGs of "
                                f"{self.ann_file.name} there")
        keep = [self._wanted(image, filter_empty_gt, min_size) for image in self.images]
        self._keep(keep)

    def _missing_json_message(self) -> str:
        folder = self.root / "annotations"
        return (f"{folder}: no panoptic annotations for split {self.split!r} (expected panoptic_{self.split}.json, "
                f"or panoptic_image_info_{self.split}.json / image_info_{self.split}.json for images without labels)")

    def _table(self, categories: Any) -> CategoryTable:
        if self._override_categories is not None:
            categories = list(self._override_categories)
        elif (not self.has_labels and isinstance(categories, list)
              and not all(isinstance(c, dict) and "isthing" in c for c in categories)):
            # COCO's image_info_test-dev2017.json lists the 80 instance categories only.
            categories = coco_panoptic_categories()
        if isinstance(categories, list):
            for category in categories:
                if isinstance(category, dict) and "isthing" not in category:
                    raise DataError(f"{self.ann_file}: category {category.get('id')} has no 'isthing' "
                                    "(a panoptic category list says which categories are things)")
        return super()._table(categories)

    def _wanted(self, image: Dict[str, Any], filter_empty_gt: bool, min_size: int) -> bool:
        if min_size and min(int(image.get("width", min_size)), int(image.get("height", min_size))) < min_size:
            return False
        if filter_empty_gt and self.has_labels:
            entry = self._entries.get(image["id"])
            segments = entry["segments_info"] if entry is not None else []
            return any(self.table.isthing[self.id_to_label[s["category_id"]]]
                       for s in segments if s.get("category_id") in self.id_to_label)
        return True

    def _label_path(self, index: int) -> Optional[Path]:
        entry = self._entries.get(self.images[index]["id"])
        if entry is None or self.panoptic_dir is None:
            return None
        return self.panoptic_dir / entry["file_name"]

    def _no_labels(self) -> Dict[str, Any]:
        return {"pan_map": None, "segments": None, "masks": None, "labels": None, "sem_seg": None}

    def _labels(self, index: int, height: int, width: int) -> Dict[str, Any]:
        image_id = self.images[index]["id"]
        entry = self._entries.get(image_id)
        if entry is None:
            raise DataError(f"{self.ann_file}: image id {image_id} has no entry in 'annotations'")
        png_path = self.panoptic_dir / entry["file_name"]
        try:
            png = read_image(png_path)
        except DataError as err:
            raise DataError(f"panoptic PNG of image id {image_id}: {err}") from None
        if png.shape[:2] != (height, width):
            raise DataError(f"{png_path}: panoptic PNG of image id {image_id} is {png.shape[1]}x{png.shape[0]} "
                            f"but its image is {width}x{height} (width x height)")
        pan_map = rgb_to_id(png)
        segments = self._segments(entry, image_id, pan_map)

        # The training targets, as mmdet 2.x's CocoPanopticDataset + LoadPanopticAnnotations.
        sem_seg = np.full((height, width), self.ignore_index, dtype=np.uint8)
        masks, labels = [], []
        for segment in segments:
            if not _keeps_training_target(segment["area"], segment["bbox"]):
                continue
            mask = pan_map == segment["id"]
            sem_seg[mask] = segment["label"]
            if segment["isthing"] and not segment["iscrowd"]:
                masks.append(mask)
                labels.append(segment["label"])
        return {
            "label_path": str(png_path),
            "pan_map": pan_map,
            "segments": segments,
            "masks": np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool),
            "labels": np.asarray(labels, dtype=np.int64),
            "sem_seg": sem_seg,
        }

    def _segments(self, entry: Dict[str, Any], image_id: Any, pan_map: np.ndarray) -> List[Dict[str, Any]]:
        """The image's ``segments_info`` with labels, checked against its PNG (every id of the PNG
        but 0 listed once, every listed id present, as panopticapi requires of a panoptic file)."""
        png_name = entry["file_name"]
        ids, areas = np.unique(pan_map, return_counts=True)
        pixel_area = dict(zip(ids.tolist(), areas.tolist()))
        segments = []
        for info in entry["segments_info"]:
            if not isinstance(info, dict) or "id" not in info or "category_id" not in info:
                raise DataError(f"{self.ann_file}: a segment of image id {image_id} lacks 'id' or 'category_id'")
            segment_id, category_id = int(info["id"]), info["category_id"]
            if category_id not in self.id_to_label:
                raise DataError(f"{self.ann_file}: segment {segment_id} of image id {image_id} has category id "
                                f"{category_id}, which is not in 'categories'")
            if any(s["id"] == segment_id for s in segments):
                raise DataError(f"{self.ann_file}: segment id {segment_id} is listed twice for image id {image_id}")
            if segment_id == 0:
                raise DataError(f"{self.ann_file}: image id {image_id} lists segment id 0, which is reserved "
                                "for void pixels")
            if segment_id not in pixel_area:
                raise DataError(f"{self.panoptic_dir / png_name}: segment id {segment_id} of image id {image_id} "
                                "is in segments_info but not in the PNG")
            label = self.id_to_label[category_id]
            mask_area = pixel_area[segment_id]
            segments.append({
                "id": segment_id,
                "category_id": int(category_id),
                "label": label,
                "iscrowd": int(info.get("iscrowd", 0)),
                "isthing": self.table.isthing[label],
                "area": info.get("area", mask_area),
                "bbox": list(info["bbox"]) if "bbox" in info else mask_bbox(pan_map == segment_id),
            })
        listed = {s["id"] for s in segments}
        unlisted = [i for i in pixel_area if i != 0 and i not in listed]
        if unlisted:
            raise DataError(f"{self.panoptic_dir / png_name}: segment id {unlisted[0]} of image id {image_id} is in "
                            "the PNG but not in its segments_info")
        return segments


def mask_bbox(mask: np.ndarray) -> List[int]:
    """[x, y, w, h] of a non-empty bool mask, as panopticapi computes segment boxes."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


class CocoInstanceDataset(_CocoDataset):
    """COCO instance segmentation (``instances_SPLIT.json``, polygons and RLE).

    Args:
        root: the COCO folder (holding ``annotations/`` and the image folders).
        split: e.g. ``val2017``; ``test-dev2017`` reads ``image_info_test-dev2017.json`` (no labels).
        ann_file, image_dir: other places than the standard ones.
        categories: a COCO categories list to use instead of the json's (all are things).
        filter_empty_gt: drop images without any annotation of a known category (crowd ones
            count), as mmdet's training set (``CocoDataset._filter_imgs``).
        min_size: drop images whose shorter side is below this (mmdet trains with 32).
        ignore_index: the models' void label (instance items have no semantic map; it is checked
            against the number of classes as for panoptic datasets).

    Training targets (``masks``/``labels``) keep the annotations mmdet 2.x keeps: not crowd, not
    flagged ``ignore``, a positive area, a bbox of at least 1x1 px overlapping the image. For
    evaluation use :attr:`coco` (or :attr:`ann_file`) with :class:`knet.metrics.MaskAP`.
    """

    name = COCO_INSTANCE_KIND

    def __init__(self, root: PathLike, split: str = "val2017", *, ann_file: Optional[PathLike] = None,
                 image_dir: Optional[PathLike] = None, categories: Optional[Sequence[Mapping[str, Any]]] = None,
                 filter_empty_gt: bool = False, min_size: int = 0, ignore_index: int = IGNORE_LABEL) -> None:
        self._override_categories = categories
        super().__init__(root, split, ann_file, image_dir, ignore_index)
        annotations = self.data.get("annotations", [])
        if self.has_labels:
            if not isinstance(annotations, list):
                raise DataError(f"{self.ann_file}: 'annotations' is not a list")
            for number, ann in enumerate(annotations):
                if not isinstance(ann, dict) or not {"id", "image_id", "category_id"} <= ann.keys():
                    raise DataError(f"{self.ann_file}: annotations[{number}] lacks 'id', 'image_id' or 'category_id'")
            self._check_annotation_images([ann["image_id"] for ann in annotations], "annotations")
        self.coco: COCO = _coco_index(self.data, self.ann_file)
        if filter_empty_gt and self.has_labels:
            with_known = {ann["image_id"] for ann in annotations if ann["category_id"] in self.id_to_label}
            keep = [image["id"] in with_known for image in self.images]
        else:
            keep = [True] * len(self.images)
        if min_size:
            keep = [k and min(int(image.get("width", min_size)), int(image.get("height", min_size))) >= min_size
                    for k, image in zip(keep, self.images)]
        self._keep(keep)

    def _missing_json_message(self) -> str:
        folder = self.root / "annotations"
        return (f"{folder}: no instance annotations for split {self.split!r} (expected instances_{self.split}.json, "
                f"or image_info_{self.split}.json for images without labels)")

    def _table(self, categories: Any) -> CategoryTable:
        if self._override_categories is not None:
            categories = list(self._override_categories)
        if isinstance(categories, list):
            # An instance json has things only (COCO's lists no 'isthing'); panoptic lists may be
            # passed with their stuff, which an instance model does not predict.
            categories = [dict(c, isthing=1) for c in categories
                          if isinstance(c, dict) and c.get("isthing", 1)]
        return super()._table(categories)

    def _no_labels(self) -> Dict[str, Any]:
        return {"instances": None, "masks": None, "labels": None, "sem_seg": None}

    def _labels(self, index: int, height: int, width: int) -> Dict[str, Any]:
        image_id = self.images[index]["id"]
        instances, masks, labels = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            category_id = ann["category_id"]
            if category_id not in self.id_to_label:
                raise DataError(f"{self.ann_file}: annotation {ann['id']} of image id {image_id} has category id "
                                f"{category_id}, which is not in 'categories'")
            label = self.id_to_label[category_id]
            bbox = ann.get("bbox")
            area = ann.get("area")
            iscrowd = int(ann.get("iscrowd", 0))
            instances.append({"id": ann["id"], "category_id": int(category_id), "label": label,
                              "iscrowd": iscrowd, "area": area, "bbox": bbox})
            if iscrowd or ann.get("ignore", False) or not self._usable(bbox, area, height, width):
                continue
            try:
                mask = decode_segmentation(ann.get("segmentation"), height, width)
            except (ValueError, TypeError) as err:
                raise DataError(f"{self.ann_file}: annotation {ann['id']} of image id {image_id}: "
                                f"bad segmentation ({err})") from None
            masks.append(mask)
            labels.append(label)
        return {
            "instances": instances,
            "masks": np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool),
            "labels": np.asarray(labels, dtype=np.int64),
            "sem_seg": None,
        }

    @staticmethod
    def _usable(bbox: Any, area: Any, height: int, width: int) -> bool:
        """mmdet 2.x's ``CocoDataset._parse_ann_info`` filter of a non-crowd annotation."""
        if bbox is None or area is None:
            return False
        x, y, w, h = (float(v) for v in bbox)
        overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
        overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
        return overlap_w * overlap_h > 0 and _keeps_training_target(area, (x, y, w, h))


COCO_DATASETS = {COCO_PANOPTIC_KIND: CocoPanopticDataset, COCO_INSTANCE_KIND: CocoInstanceDataset}


def build_coco_dataset(kind: str, root: PathLike, split: str = "val2017", **kwargs: Any) -> _CocoDataset:
    """The COCO dataset of ``kind`` (``coco_panoptic`` or ``coco_instance``) at ``root``;
    ``kwargs`` go to the class (``filter_empty_gt``, ``min_size``, ``ann_file``, ...)."""
    if kind not in COCO_DATASETS:
        raise DataError(f"unknown COCO dataset kind {kind!r}; valid: {', '.join(COCO_DATASETS)}")
    return COCO_DATASETS[kind](root, split, **kwargs)

"""A generated COCO-panoptic toy set: scenes of textured shapes written in COCO's panoptic AND
instance formats, readable by :mod:`knet.data.coco` without any download.

Classes (COCO-like, non-contiguous ids; labels as :func:`~knet.data.coco_categories.contiguous_categories`
numbers them -- things first)::

    label  id  name      kind   appearance
    0      1   disc      thing  red 32-gon with light rings
    1      2   box       thing  blue rotated rectangle with diagonal stripes
    2      8   triangle  thing  yellow triangle with dark dots
    3      5   sky       stuff  smooth light-blue gradient (top of the scene)
    4      10  grass     stuff  green noise with vertical streaks (bottom)
    5      12  wall      stuff  brown bricks (a band on the left or right, in half the scenes)

Each scene has a wavy sky/grass horizon, sometimes a wall band, then 2-5 things (separate
instances; some touch an earlier one along a shared border), optionally a crowd region (a cluster
of small discs of one thing class, one ``iscrowd=1`` segment) and a small void patch (id 0). Each
class keeps its colour, texture and shape, jittered per object, so a tiny model learns them.

:func:`make_synthetic_coco` writes, for each split ``S`` (``train``, ``val``)::

    ROOT/S/<image_id:012d>.jpg                   images (or .png)
    ROOT/annotations/panoptic_S.json             COCO panoptic json (categories with isthing)
    ROOT/annotations/panoptic_S/<image_id>.png   segment ids as R + 256 G + 256^2 B
    ROOT/annotations/instances_S.json            the same things as COCO instances (things only)

Instance segmentations are polygons (the shapes are polygons, rasterised with pycocotools, so
both files give the same pixels), compressed RLE for a thing clipped by a neighbour it touches,
and uncompressed RLE for crowd regions, as COCO mixes them. Everything is deterministic in
``seed``: image ``i`` of a split depends only on ``(seed, split index, i)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import KnetError
from ..utils.atomic import atomic_write_text
from .coco import mask_bbox, id_to_rgb
from .io import write_image
from .synthetic import SyntheticDataError

__all__ = [
    "CocoScene",
    "SyntheticCoco",
    "make_coco_scene",
    "make_synthetic_coco",
    "synthetic_coco_categories",
]

# (id, name, isthing, display colour). Thing and stuff ids interleave on purpose (sky's 5 lies
# between the thing ids) so that readers must number things first, not by id alone.
_CATEGORIES: Tuple[Tuple[int, str, int, Tuple[int, int, int]], ...] = (
    (1, "disc", 1, (220, 40, 40)),
    (2, "box", 1, (40, 70, 200)),
    (5, "sky", 0, (140, 190, 240)),
    (8, "triangle", 1, (240, 210, 40)),
    (10, "grass", 0, (60, 150, 50)),
    (12, "wall", 0, (150, 80, 50)),
)
_THINGS = ("disc", "box", "triangle")
_STUFF = ("sky", "grass", "wall")
_ID = {name: category_id for category_id, name, _, _ in _CATEGORIES}


def synthetic_coco_categories() -> List[Dict[str, Any]]:
    """The toy set's ``categories`` list (``id, name, supercategory, isthing, color``), id order."""
    return [{"id": i, "name": n, "supercategory": "thing" if t else "stuff", "isthing": t, "color": list(c)}
            for i, n, t, c in _CATEGORIES]


# --------------------------------------------------------------------------------------------
# Appearance: float (H, W, 3) RGB paintings of a class over the whole grid
# --------------------------------------------------------------------------------------------
def _fill(image: np.ndarray, mask: np.ndarray, name: str, yy: np.ndarray, xx: np.ndarray,
          rng: np.random.Generator, centre: Tuple[float, float] = (0.0, 0.0)) -> None:
    """Paint class ``name`` on ``image`` where ``mask`` is set (computed on the mask's box only)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    painted = _paint(name, yy[box], xx[box], rng, centre, height=image.shape[0])
    region = mask[box]
    image[box][region] = painted[region]


def _jitter(rng: np.random.Generator, colour: Tuple[int, int, int], amount: float = 15.0) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _paint(name: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator,
           centre: Tuple[float, float] = (0.0, 0.0), height: int = 1) -> np.ndarray:
    """Class ``name``'s texture at the pixel coordinates ``yy``, ``xx`` ((h, w) each) of a scene
    ``height`` pixels high; ``centre`` is a disc's centre."""
    h, w = yy.shape
    noise = rng.normal(0.0, 1.0, (h, w, 1)).astype(np.float32)
    if name == "disc":  # concentric light rings around the disc's centre
        radius = np.hypot(yy - centre[0], xx - centre[1])[..., None]
        rings = (np.sin(radius / rng.uniform(2.0, 3.0)) > 0.3).astype(np.float32)
        return _jitter(rng, (210, 40, 35)) + rings * np.float32(45) + 5 * noise
    if name == "box":  # diagonal stripes
        period = rng.uniform(5.0, 7.0)
        stripes = (np.mod(yy + xx, period) < period / 2).astype(np.float32)[..., None]
        return _jitter(rng, (35, 60, 190)) + stripes * np.float32([40, 60, 50]) + 5 * noise
    if name == "triangle":  # dark dots on yellow
        period = rng.uniform(5.0, 7.0)
        dots = ((np.mod(yy, period) - period / 2) ** 2 + (np.mod(xx, period) - period / 2) ** 2 < 2.5)
        darken = dots[..., None].astype(np.float32) * np.float32([120, 110, 20])
        return _jitter(rng, (240, 205, 40)) - darken + 5 * noise
    if name == "sky":  # smooth vertical gradient
        gradient = (yy / max(height - 1, 1))[..., None]
        return _jitter(rng, (120, 170, 235), 10) + gradient * np.float32([60, 40, 10]) + 2 * noise
    if name == "grass":  # noisy green with vertical streaks
        streaks = np.sin(xx * rng.uniform(1.2, 1.8) + rng.uniform(0, 6.3))[..., None]
        return _jitter(rng, (60, 140, 45), 10) + 12 * streaks + 18 * noise
    if name == "wall":  # bricks with light mortar
        brick_h, brick_w = rng.uniform(6.0, 8.0), rng.uniform(12.0, 16.0)
        row = np.floor(yy / brick_h)
        mortar = (np.mod(yy, brick_h) < 1.2) | (np.mod(xx + (row % 2) * brick_w / 2, brick_w) < 1.2)
        bricks = _jitter(rng, (150, 75, 45), 10) + 6 * noise
        return np.where(mortar[..., None], np.float32([200, 195, 185]), bricks)
    raise SyntheticDataError(f"unknown synthetic class {name!r}")


# --------------------------------------------------------------------------------------------
# Shapes: polygons rasterised exactly as the instance json's decoder will
# --------------------------------------------------------------------------------------------
def _polygon(name: str, cy: float, cx: float, radius: float, rng: np.random.Generator) -> List[float]:
    """COCO polygon ``[x1, y1, x2, y2, ...]`` of a thing of class ``name``."""
    angle = rng.uniform(0, 2 * np.pi)
    if name == "disc":
        t = angle + np.linspace(0, 2 * np.pi, 32, endpoint=False)
        xs, ys = cx + radius * np.cos(t), cy + radius * np.sin(t)
    elif name == "box":
        half_w, half_h = radius * rng.uniform(0.75, 1.0), radius * rng.uniform(0.55, 0.8)
        corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
        c, s = np.cos(angle), np.sin(angle)
        xs = cx + corners[:, 0] * c - corners[:, 1] * s
        ys = cy + corners[:, 0] * s + corners[:, 1] * c
    elif name == "triangle":
        t = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        xs, ys = cx + 1.15 * radius * np.cos(t), cy + 1.15 * radius * np.sin(t)
    else:
        raise SyntheticDataError(f"unknown thing class {name!r}")
    return [round(float(v), 2) for xy in zip(xs, ys) for v in xy]


def _rasterise(polygons: List[List[float]], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


@dataclass
class CocoScene:
    """One generated scene.

    Attributes:
        image: uint8 (H, W, 3) RGB.
        pan_map: int32 (H, W) segment ids, 0 = void.
        segments: per segment ``id, category_id, iscrowd`` and ``polygons`` (the thing's COCO
            polygons when its visible pixels are exactly their rasterisation, else None).
    """

    image: np.ndarray
    pan_map: np.ndarray
    segments: List[Dict[str, Any]] = field(default_factory=list)


def make_coco_scene(rng: Union[np.random.Generator, int], size: Tuple[int, int] = (160, 160),
                    num_things: Tuple[int, int] = (2, 5), touch_prob: float = 0.4, crowd_prob: float = 0.0,
                    void_prob: float = 0.3) -> CocoScene:
    """Generate one scene (see the module docstring).

    Args:
        rng: a generator or a seed.
        size: (height, width), at least 48 px each.
        num_things: inclusive range of the number of things placed (fewer when the scene is too
            full to place one without overlap).
        touch_prob: probability that a thing is placed against the previous one (sharing a border;
            its part under the neighbour is cut off).
        crowd_prob: probability of a crowd region (one ``iscrowd=1`` segment).
        void_prob: probability of a void (unlabelled) patch.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    h, w = int(size[0]), int(size[1])
    if h < 48 or w < 48:
        raise SyntheticDataError(f"size must be at least 48x48 pixels, got {size!r}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.zeros((h, w, 3), dtype=np.float32)
    stuff = np.zeros((h, w), dtype=np.int8)  # 1-based index into _STUFF, 0 = void
    instance = np.zeros((h, w), dtype=np.int32)  # 1-based thing/crowd index, 0 = none

    # Stuff: sky above a wavy horizon, grass below, a wall band on one side half the time.
    horizon = h * rng.uniform(0.35, 0.6) + h * 0.06 * np.sin(2 * np.pi * xx / (w * rng.uniform(0.5, 1.2))
                                                              + rng.uniform(0, 2 * np.pi))
    stuff_masks = {"sky": yy < horizon}
    stuff_masks["grass"] = ~stuff_masks["sky"]
    if rng.random() < 0.5:
        band = w * rng.uniform(0.18, 0.3)
        wall = xx < band if rng.random() < 0.5 else xx >= w - band
        stuff_masks = {name: m & ~wall for name, m in stuff_masks.items()}
        stuff_masks["wall"] = wall
    for name, mask in stuff_masks.items():
        _fill(image, mask, name, yy, xx, rng)
        stuff[mask] = _STUFF.index(name) + 1

    occupied = np.zeros((h, w), dtype=bool)
    things: List[Dict[str, Any]] = []
    low, high = num_things
    for _ in range(int(rng.integers(low, high + 1))):
        name = _THINGS[int(rng.integers(len(_THINGS)))]
        placed = _place_thing(name, things, occupied, (h, w), touch_prob, rng)
        if placed is None:
            continue
        polygons, visible, exact, centre = placed
        _fill(image, visible, name, yy, xx, rng, centre)
        occupied |= visible
        things.append({"name": name, "polygons": polygons if exact else None, "centre": centre,
                       "iscrowd": 0})
        instance[visible] = len(things)

    if rng.random() < crowd_prob:
        crowd = _crowd_region(occupied, (h, w), rng)
        if crowd is not None:
            name = _THINGS[int(rng.integers(len(_THINGS)))]
            _fill(image, crowd, name, yy, xx, rng)
            occupied |= crowd
            things.append({"name": name, "polygons": None, "centre": None, "iscrowd": 1})
            instance[crowd] = len(things)

    if rng.random() < void_prob:  # a grey noise patch nobody labelled
        ph, pw = int(h * rng.uniform(0.06, 0.12)), int(w * rng.uniform(0.06, 0.12))
        y0, x0 = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        patch = np.zeros((h, w), dtype=bool)
        patch[y0:y0 + ph, x0:x0 + pw] = True
        patch &= ~occupied
        image[patch] = 128 + 30 * rng.normal(0.0, 1.0, (int(patch.sum()), 3)).astype(np.float32)
        stuff[patch] = 0

    image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)  # sensor noise

    # Segment ids: distinct values spread over the 24 bits so that every PNG channel is used.
    pan_map = np.zeros((h, w), dtype=np.int32)
    segments: List[Dict[str, Any]] = []
    used = {0}

    def new_id() -> int:
        while True:
            value = int(rng.integers(1, 256 ** 3))
            if value not in used:
                used.add(value)
                return value

    for index, thing in enumerate(things, 1):
        mask = instance == index
        if not mask.any():
            continue
        segment_id = new_id()
        pan_map[mask] = segment_id
        segments.append({"id": segment_id, "category_id": _ID[thing["name"]], "iscrowd": thing["iscrowd"],
                         "polygons": thing["polygons"]})
    for code, name in enumerate(_STUFF, 1):
        mask = (stuff == code) & (instance == 0)
        if mask.any():
            segment_id = new_id()
            pan_map[mask] = segment_id
            segments.append({"id": segment_id, "category_id": _ID[name], "iscrowd": 0, "polygons": None})
    return CocoScene(image=np.clip(image, 0, 255).astype(np.uint8), pan_map=pan_map, segments=segments)


def _place_thing(name: str, things: List[Dict[str, Any]], occupied: np.ndarray, shape: Tuple[int, int],
                 touch_prob: float, rng: np.random.Generator, tries: int = 30):
    """A thing's polygons and visible mask, placed free of the others or against the last one.

    Returns ``(polygons, visible mask, visible == rasterised polygons, centre)`` or None."""
    h, w = shape
    radius = rng.uniform(0.09, 0.16) * min(h, w)
    margin = 1.2 * radius + 1
    touching = bool(things) and things[-1]["centre"] is not None and rng.random() < touch_prob
    for _ in range(tries):
        if touching:  # centre at about the sum of the radii from the previous thing: they meet
            cy0, cx0 = things[-1]["centre"]
            direction = rng.uniform(0, 2 * np.pi)
            distance = rng.uniform(1.4, 1.9) * radius
            cy, cx = cy0 + distance * np.sin(direction), cx0 + distance * np.cos(direction)
            if not (margin <= cy <= h - margin and margin <= cx <= w - margin):
                continue
        else:
            cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
        polygons = [_polygon(name, cy, cx, radius, rng)]
        full = _rasterise(polygons, h, w)
        visible = full & ~occupied
        area = int(full.sum())
        overlaps = bool((full & occupied).any())
        if area < 30:
            continue
        if touching:
            # Cut off where it overlaps (it then shares a border), or merely adjacent.
            if visible.sum() >= 0.6 * area and (overlaps or _touches(visible, occupied)):
                return polygons, visible, not overlaps, (cy, cx)
        elif not overlaps:
            return polygons, visible, True, (cy, cx)
    return None


def _touches(mask: np.ndarray, other: np.ndarray) -> bool:
    """Whether ``mask`` has a pixel 4-adjacent to ``other`` (and does not overlap it)."""
    if (mask & other).any():
        return False
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return bool((grown & other).any())


def _crowd_region(occupied: np.ndarray, shape: Tuple[int, int], rng: np.random.Generator) -> Optional[np.ndarray]:
    """A cluster of 4-6 small overlapping discs, free of the things already placed."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(20):
        cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
        region = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(4, 7))):
            r = rng.uniform(0.03, 0.05) * min(h, w)
            oy, ox = rng.normal(0.0, 0.05 * h), rng.normal(0.0, 0.05 * w)
            region |= (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 <= r * r
        if region.sum() >= 30 and not (region & occupied).any():
            return region
    return None


# --------------------------------------------------------------------------------------------
# Writing both formats
# --------------------------------------------------------------------------------------------
def _uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO's uncompressed RLE (crowd annotations): run lengths over the column-major pixels,
    starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _instance_annotation(segment: Dict[str, Any], mask: np.ndarray, image_id: int, ann_id: int) -> Dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if segment["iscrowd"]:
        segmentation: Any = _uncompressed_rle(mask)
    elif segment["polygons"] is not None:
        segmentation = segment["polygons"]
    else:
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return {"id": ann_id, "image_id": image_id, "category_id": segment["category_id"],
            "segmentation": segmentation, "area": int(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": segment["iscrowd"]}


@dataclass(frozen=True)
class SyntheticCoco:
    """What :func:`make_synthetic_coco` wrote: the root, its categories, the images per split and
    their (height, width)."""

    root: Path
    categories: List[Dict[str, Any]]
    splits: Dict[str, int]
    size: Tuple[int, int]

    @property
    def class_names(self) -> List[str]:
        things = [c["name"] for c in self.categories if c["isthing"]]
        return things + [c["name"] for c in self.categories if not c["isthing"]]


def make_synthetic_coco(root: Union[str, Path], num_train: int = 48, num_val: int = 16,
                        size: Tuple[int, int] = (160, 160), seed: int = 0, crowd_prob: float = 0.15,
                        image_format: str = "jpg", splits: Tuple[str, str] = ("train", "val")) -> SyntheticCoco:
    """Write the toy set under ``root`` (layout in the module docstring).

    Args:
        root: output folder (created; files of the same names are overwritten).
        num_train, num_val: images of the two splits.
        size: (height, width) of every image.
        seed: the set is a function of it.
        crowd_prob: probability of a crowd region per image.
        image_format: ``jpg`` (as COCO) or ``png`` (lossless).
        splits: the names of the two splits.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise SyntheticDataError(f"{name} must be a non-negative integer, got {value!r}")
    if len(size) != 2 or min(int(v) for v in size) < 48:
        raise SyntheticDataError(f"size must be (height, width) of at least 48x48 pixels, got {size!r}")
    if image_format not in ("jpg", "png"):
        raise SyntheticDataError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    root = Path(root)
    categories = synthetic_coco_categories()
    instance_categories = [{"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]}
                           for c in categories if c["isthing"]]
    counts = dict(zip(splits, (int(num_train), int(num_val))))
    try:
        for split_index, (split, count) in enumerate(counts.items()):
            image_dir, png_dir = root / split, root / "annotations" / f"panoptic_{split}"
            image_dir.mkdir(parents=True, exist_ok=True)
            png_dir.mkdir(parents=True, exist_ok=True)
            images, panoptic, instances = [], [], []
            thing_ids = {c["id"] for c in instance_categories}
            for i in range(count):
                scene = make_coco_scene(np.random.default_rng([seed, split_index, i]), size, crowd_prob=crowd_prob)
                image_id = split_index * 1_000_000 + i + 1
                stem = f"{image_id:012d}"
                write_image(image_dir / f"{stem}.{image_format}", scene.image)
                write_image(png_dir / f"{stem}.png", id_to_rgb(scene.pan_map))
                images.append({"id": image_id, "file_name": f"{stem}.{image_format}",
                               "height": int(size[0]), "width": int(size[1])})
                segments_info = []
                for segment in scene.segments:
                    mask = scene.pan_map == segment["id"]
                    segments_info.append({
                        "id": segment["id"], "category_id": segment["category_id"], "iscrowd": segment["iscrowd"],
                        "area": int(mask.sum()), "bbox": mask_bbox(mask),
                    })
                    if segment["category_id"] in thing_ids:
                        instances.append(_instance_annotation(segment, mask, image_id, len(instances) + 1))
                panoptic.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments_info})
            # "info" as COCO's own files have it (pycocotools 2.0.10's loadRes requires one)
            info = {"description": f"knet synthetic COCO scenes, {split} split", "year": 2026}
            atomic_write_text(root / "annotations" / f"panoptic_{split}.json",
                              json.dumps({"info": info, "images": images, "annotations": panoptic,
                                          "categories": categories}))
            atomic_write_text(root / "annotations" / f"instances_{split}.json",
                              json.dumps({"info": info, "images": images, "annotations": instances,
                                          "categories": instance_categories}))
    except (OSError, KnetError) as err:
        raise SyntheticDataError(f"cannot write the synthetic COCO set under {root}: {err}") from err
    return SyntheticCoco(root=root, categories=categories, splits=counts, size=(int(size[0]), int(size[1])))

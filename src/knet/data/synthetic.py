"""Generated scenes of textured shapes: a toy segmentation dataset that needs no download.

Every class has its own texture (noise, stripes, checkers, dots, rings, ...) and its own pair of
colours; class 0 is the background that fills the image, and a few objects of the other classes
(circles, rectangles, triangles, ellipses) are painted over it. Textures and colours are jittered
per object so that a model has to learn the appearance of a class rather than exact pixel values,
yet the classes stay easy to tell apart: a ``-tiny`` K-Net learns them within a few hundred
iterations on a CPU.

:func:`make_synthetic_dataset` writes the folder-dataset layout read by
``knet.data.datasets.build_dataset("folder", root, split)``::

    ROOT/images/{train,val}/NNNN.png   RGB images
    ROOT/masks/{train,val}/NNNN.png    uint8 class indices (0 .. num_classes-1)
    ROOT/classes.txt                   one class name per line
    ROOT/palette.txt                   "r g b" per line, the colour of each class

:func:`make_scene` returns one scene as arrays, for tests that want data in memory.
Everything is deterministic in ``seed``: image ``i`` of a split depends only on
``(seed, split, i)``, so growing ``num_train`` keeps the earlier images unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import KnetError

__all__ = [
    "SyntheticDataset",
    "TEXTURES",
    "make_scene",
    "make_synthetic_dataset",
    "synthetic_classes",
]

# Texture of each class, in class order (class 0 is the background). More classes than textures
# reuse the textures with other colours and periods.
TEXTURES: Tuple[str, ...] = (
    "noise", "stripes", "checkers", "dots", "rings", "diagonal", "grid", "waves",
)

# Two colours (dark, light) per class, well separated in hue and brightness.
_COLOURS: Tuple[Tuple[Tuple[int, int, int], Tuple[int, int, int]], ...] = (
    ((70, 70, 70), (120, 120, 120)),      # background: grey noise
    ((200, 40, 40), (250, 170, 60)),      # red / orange
    ((30, 60, 200), (120, 200, 250)),     # blue / cyan
    ((30, 140, 40), (190, 240, 90)),      # green / lime
    ((120, 30, 150), (240, 140, 230)),    # purple / pink
    ((150, 110, 20), (250, 230, 120)),    # brown / yellow
    ((10, 110, 110), (140, 240, 210)),    # teal / mint
    ((20, 20, 20), (240, 240, 240)),      # black / white
)

# Base period in pixels of each texture (jittered by +-15% per object).
_PERIODS: Dict[str, float] = {
    "noise": 1.0, "stripes": 10.0, "checkers": 12.0, "dots": 11.0, "rings": 14.0,
    "diagonal": 9.0, "grid": 13.0, "waves": 16.0,
}

SHAPES: Tuple[str, ...] = ("circle", "rectangle", "triangle", "ellipse")


class SyntheticDataError(KnetError, ValueError):
    """Invalid arguments for the synthetic dataset."""


@dataclass(frozen=True)
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote."""

    root: Path
    class_names: List[str]
    palette: List[List[int]]
    num_train: int
    num_val: int
    size: Tuple[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def synthetic_classes(num_classes: int) -> Tuple[List[str], List[List[int]]]:
    """Names and display colours of the classes of a synthetic dataset with ``num_classes``."""
    _check_num_classes(num_classes)
    names, palette = [], []
    for c in range(num_classes):
        texture = TEXTURES[c % len(TEXTURES)]
        name = "background" if c == 0 else texture
        if c >= len(TEXTURES):
            name = f"{name}_{c // len(TEXTURES) + 1}"
        names.append(name)
        dark, light = _class_colours(c)
        palette.append([int((a + b) // 2) for a, b in zip(dark, light)])
    return names, palette


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2 or num_classes > 255:
        raise SyntheticDataError(f"num_classes must be an integer in [2, 255], got {num_classes!r}")


def _class_colours(c: int) -> Tuple[np.ndarray, np.ndarray]:
    """The (dark, light) colours of class ``c``; classes beyond the table get rotated channels."""
    dark, light = _COLOURS[c % len(_COLOURS)]
    shift = (c // len(_COLOURS)) % 3
    dark_arr = np.roll(np.asarray(dark, dtype=np.float32), shift)
    light_arr = np.roll(np.asarray(light, dtype=np.float32), shift)
    return dark_arr, light_arr


# --------------------------------------------------------------------------------------------
# Textures: functions of the pixel grid returning a pattern in [0, 1]
# --------------------------------------------------------------------------------------------
def _rotate(yy: np.ndarray, xx: np.ndarray, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * yy - s * xx, s * yy + c * xx


def _square(t: np.ndarray) -> np.ndarray:
    """A square wave of period 1 in ``t``: 1 on the first half of each period, 0 on the second."""
    return (np.mod(t, 1.0) < 0.5).astype(np.float32)


def _texture(kind: str, yy: np.ndarray, xx: np.ndarray, period: float,
             rng: np.random.Generator) -> np.ndarray:
    oy, ox = rng.uniform(0, period, size=2)
    y, x = yy + oy, xx + ox
    if kind == "noise":
        # Coarse-grained noise: 2x2 blocks of random values, smooth enough to survive a resize.
        h, w = yy.shape
        blocks = rng.random(((h + 1) // 2, (w + 1) // 2), dtype=np.float32)
        return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[:h, :w]
    if kind == "stripes":  # horizontal-ish stripes, small random tilt
        ry, _ = _rotate(y, x, rng.uniform(-0.2, 0.2))
        return _square(ry / period)
    if kind == "checkers":
        ry, rx = _rotate(y, x, rng.uniform(-0.2, 0.2))
        return (np.floor(ry / period) + np.floor(rx / period)) % 2
    if kind == "dots":
        fy = np.mod(y, period) - period / 2
        fx = np.mod(x, period) - period / 2
        return (fy * fy + fx * fx < (0.3 * period) ** 2).astype(np.float32)
    if kind == "rings":
        cy, cx = rng.uniform(0, yy.shape[0]), rng.uniform(0, yy.shape[1])
        return _square(np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / period)
    if kind == "diagonal":
        ry, _ = _rotate(y, x, np.pi / 4 + rng.uniform(-0.15, 0.15))
        return _square(ry / period)
    if kind == "grid":
        fy = np.mod(y, period) < 0.3 * period
        fx = np.mod(x, period) < 0.3 * period
        return (fy | fx).astype(np.float32)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(2 * np.pi * (y / period + 0.3 * np.sin(2 * np.pi * x / (2 * period))))
    raise SyntheticDataError(f"unknown texture {kind!r}; valid: {', '.join(TEXTURES)}")


def _paint(c: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 float image of class ``c``'s appearance with per-object jitter."""
    kind = TEXTURES[c % len(TEXTURES)]
    period = _PERIODS[kind] * (1.0 + 0.25 * (c // len(TEXTURES))) * rng.uniform(0.85, 1.15)
    pattern = _texture(kind, yy, xx, period, rng)[..., None]
    dark, light = _class_colours(c)
    jitter = rng.uniform(-15, 15, size=3).astype(np.float32)
    return (dark + jitter) * (1.0 - pattern) + (light + jitter) * pattern


# --------------------------------------------------------------------------------------------
# Shapes: boolean masks on the pixel grid
# --------------------------------------------------------------------------------------------
def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, size: Tuple[int, int],
                rng: np.random.Generator) -> np.ndarray:
    h, w = size
    side = min(h, w)
    radius = rng.uniform(0.12, 0.25) * side
    cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dy * dy + dx * dx <= radius * radius
    if kind == "ellipse":
        ry, rx = _rotate(dy, dx, rng.uniform(0, np.pi))
        a, b = radius, radius * rng.uniform(0.45, 0.8)
        return (ry / a) ** 2 + (rx / b) ** 2 <= 1.0
    if kind == "rectangle":
        ry, rx = _rotate(dy, dx, rng.uniform(-0.5, 0.5))
        half_h, half_w = radius * rng.uniform(0.6, 1.1), radius * rng.uniform(0.6, 1.1)
        return (np.abs(ry) <= half_h) & (np.abs(rx) <= half_w)
    if kind == "triangle":
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        vy, vx = radius * 1.3 * np.sin(angles), radius * 1.3 * np.cos(angles)
        inside = np.ones(yy.shape, dtype=bool)
        for i in range(3):  # a point is inside when it is on the same side of every edge
            j = (i + 1) % 3
            cross = (vx[j] - vx[i]) * (dy - vy[i]) - (vy[j] - vy[i]) * (dx - vx[i])
            orientation = (vx[j] - vx[i]) * (vy[(i + 2) % 3] - vy[i]) - (vy[j] - vy[i]) * (vx[(i + 2) % 3] - vx[i])
            inside &= cross * np.sign(orientation) >= 0
        return inside
    raise SyntheticDataError(f"unknown shape {kind!r}; valid: {', '.join(SHAPES)}")


def make_scene(rng: Union[np.random.Generator, int], num_classes: int = 4,
               size: Tuple[int, int] = (256, 256), num_objects: Tuple[int, int] = (3, 6)
               ) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 HxWx3 RGB, mask uint8 HxW class indices)``.

    The background (class 0) fills the image; ``num_objects`` (an inclusive range) objects of
    random foreground classes and shapes are painted over it, later ones on top. Every
    foreground class appears at least once while there are at least as many objects as classes.
    """
    _check_num_classes(num_classes)
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise SyntheticDataError(f"size must be at least 8x8 pixels, got {size!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    image = _paint(0, yy, xx, rng)
    mask = np.zeros((h, w), dtype=np.uint8)
    low, high = num_objects
    count = int(rng.integers(low, high + 1))
    foreground = np.arange(1, num_classes)
    classes = rng.permutation(foreground)[:count]
    if count > len(classes):
        classes = np.concatenate([classes, rng.choice(foreground, size=count - len(classes))])
    rng.shuffle(classes)
    for c in classes:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        region = _shape_mask(shape, yy, xx, (h, w), rng)
        appearance = _paint(int(c), yy, xx, rng)
        image[region] = appearance[region]
        mask[region] = c
    image += rng.normal(0.0, 4.0, size=image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_synthetic_dataset(root: Union[str, Path], num_classes: int = 4, num_train: int = 96,
                           num_val: int = 24, size: Tuple[int, int] = (256, 256),
                           seed: int = 0) -> SyntheticDataset:
    """Write a synthetic folder dataset under ``root`` (see the module docstring for the layout).

    ``size`` is (height, width). Existing files of the same names are overwritten; other files
    are left alone. Returns what was written.
    """
    _check_num_classes(num_classes)
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise SyntheticDataError(f"{name} must be a non-negative integer, got {value!r}")
    root = Path(root)
    names, palette = synthetic_classes(num_classes)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            image_dir, mask_dir = root / "images" / split, root / "masks" / split
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, i])
                image, mask = make_scene(rng, num_classes, size)
                Image.fromarray(image).save(image_dir / f"{i:04d}.png")
                Image.fromarray(mask).save(mask_dir / f"{i:04d}.png")
        (root / "classes.txt").write_text("\n".join(names) + "\n")
        (root / "palette.txt").write_text("\n".join(" ".join(str(v) for v in c) for c in palette) + "\n")
    except OSError as err:
        raise SyntheticDataError(f"cannot write the synthetic dataset under {root}: {err}") from err
    return SyntheticDataset(root=root, class_names=names, palette=palette, num_train=int(num_train),
                            num_val=int(num_val), size=(int(size[0]), int(size[1])))

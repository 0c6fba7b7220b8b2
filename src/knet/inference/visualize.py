"""Colour label maps and overlays (``knet test --show-dir``, ``knet predict``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _palette_table(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(K + 1, 3) uint8: the K class colours and a final black row for values outside 0..K-1."""
    table = np.zeros((len(palette) + 1, 3), dtype=np.uint8)
    if len(palette):
        colours = np.asarray(palette, dtype=np.int64).reshape(len(palette), 3)
        if colours.min() < 0 or colours.max() > 255:
            raise ValueError("palette colours must be RGB values in 0..255")
        table[:-1] = colours
    return table


def _valid(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return (labels >= 0) & (labels < num_classes)


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Class indices (H, W) -> uint8 (H, W, 3) RGB, class ``k`` in ``palette[k]``; values that are
    not a class (255 = ignore) are black."""
    labels = np.asarray(labels)
    table = _palette_table(palette)
    num_classes = len(table) - 1
    index = np.where(_valid(labels, num_classes), labels, num_classes)
    return table[index]


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
            opacity: float = 0.5) -> np.ndarray:
    """Blend the class colours over an RGB image.

    Args:
        image: uint8 (H, W, 3) RGB.
        labels: (H, W) class indices; pixels that are not a class (255 = ignore) show the image.
        palette: RGB colour per class.
        opacity: weight of the colours, 0 (image only) .. 1 (colours only).

    Returns:
        uint8 (H, W, 3) RGB: ``image * (1 - opacity) + colour * opacity``, rounded.
    """
    labels = np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    colours = colorize(labels, palette).astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - opacity) + colours * opacity
    out = np.where(_valid(labels, len(palette))[..., None], np.rint(blended), image)
    return out.astype(np.uint8)

"""Default colours for classes that come without a palette."""
from __future__ import annotations

from typing import List, Tuple


def default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """Distinct, deterministic RGB colours: the bit-interleaving scheme of the PASCAL VOC palette
    (class 0 black, then well-separated hues), which users of segmentation tools recognise."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        value, shift = index, 7
        while value and shift >= 0:
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
            shift -= 1
        palette.append((r, g, b))
    return palette

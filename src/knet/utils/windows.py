"""The windows of sliding-window inference, shared by the torch model and the ONNX Runtime runner."""
from __future__ import annotations

from typing import List, Tuple

Box = Tuple[int, int, int, int]  # (y1, y2, x1, x2)


def sliding_windows(height: int, width: int, crop_size: Tuple[int, int], stride: Tuple[int, int]) -> List[Box]:
    """Windows of ``crop_size`` (h, w) every ``stride`` (h, w) over a (height, width) image, row by
    row, the last row and column flush with the bottom/right border (a crop larger than the image
    is clipped to it), as the reference's slide inference: ``(y1, y2, x1, x2)`` each."""
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return boxes


__all__ = ["Box", "sliding_windows"]

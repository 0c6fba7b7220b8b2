"""Segmenting image files and writing the results as files (``knet predict``, the demo).

For each image, under the output folder: ``<relative>.png`` (the label map), ``<relative>_overlay.png``
(the image with the class colours and a legend) and, when asked, ``<relative>.npy`` (the class
probabilities, float32 (C, H, W)). Every file is written atomically.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..utils.atomic import atomic_write


@dataclass(frozen=True)
class PredictItem:
    """One image to segment and where its outputs go: ``<out_dir>/<relative>.png`` etc."""

    path: Path
    relative: Path  # output path under the output folder, without suffix

    def outputs(self, out_dir: Path) -> Dict[str, Path]:
        base = out_dir / self.relative
        return {"labels": base.with_name(base.name + ".png"),
                "overlay": base.with_name(base.name + "_overlay.png"),
                "probs": base.with_name(base.name + ".npy")}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically: a temporary file in the same folder, then a rename."""
    atomic_write(path, lambda f: np.save(f, array))


def write_outputs(result, item: PredictItem, out_dir: Path, opacity: float, save_probs: bool) -> None:
    """Write the label map, the overlay and (optionally) the probabilities of one result."""
    from ..data.io import write_image

    outputs = item.outputs(out_dir)
    write_image(outputs["labels"], result.labels)
    write_image(outputs["overlay"], result.overlay(opacity=opacity, legend=True))
    if save_probs:
        save_npy(outputs["probs"], result.probabilities().astype(np.float32, copy=False))


def message(text: str) -> None:
    """Print a line on stderr, clearing a progress bar drawn on the same terminal line first."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    print(text, file=sys.stderr, flush=True)


def predict(segmenter, items: Sequence[PredictItem], out_dir: Path, opacity: float = 0.5,
            save_probs: bool = False, progress: Optional[bool] = None) -> List[Tuple[Path, str]]:
    """Segment ``items`` with ``segmenter`` and write their outputs under ``out_dir``.

    Images are read and segmented ``segmenter.batch_size`` at a time. Returns the images that
    failed, as ``(path, message)``; the others are all written.
    """
    from ..utils.progress import ProgressBar
    from ..inference.segmenter import load_input

    failures: List[Tuple[Path, str]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with ProgressBar(total=len(items), desc="predict", enabled=progress) as bar:
        for start in range(0, len(items), segmenter.batch_size):
            chunk = items[start:start + segmenter.batch_size]
            good: List[PredictItem] = []
            arrays: List[np.ndarray] = []
            for item in chunk:
                try:
                    arrays.append(load_input(item.path)[0])
                    good.append(item)
                except DataError as err:
                    failures.append((item.path, str(err)))
                    message(f"knet predict: skipped {err}")
                    bar.update()
            for item, result in zip(good, segmenter.segment_arrays(arrays, [str(i.path) for i in good])):
                try:
                    write_outputs(result, item, out_dir, opacity, save_probs)
                except DataError as err:
                    failures.append((item.path, str(err)))
                    message(f"knet predict: failed {err}")
                bar.update()
    return failures

"""Segmenting image files and writing the results as files (``knet predict``, the demo).

Each result writes its own files under ``<out_dir>/<relative>`` (its ``write`` method: for a
semantic model the label map ``.png``, the overlay ``_overlay.png`` and optionally the class
probabilities ``.npy``). Every file is written atomically.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class PredictItem:
    """One image to segment and where its outputs go: ``<out_dir>/<relative>.png`` etc."""

    path: Path
    relative: Path  # output path under the output folder, without suffix

    def base(self, out_dir: Path) -> Path:
        """The output path without suffix; a result writes ``<base>.png``, ``<base>_overlay.png``..."""
        return out_dir / self.relative


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
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
                    result.write(item.base(out_dir), opacity=opacity, save_probs=save_probs)
                except DataError as err:
                    failures.append((item.path, str(err)))
                    message(f"knet predict: failed {err}")
                bar.update()
    return failures

"""Short clips for the video tests: moving shapes written with OpenCV, and the frames as OpenCV
decodes them back (what knet reads, and what the per-image comparisons segment)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np


def write_clip(path: Path, frames: int = 25, size: Tuple[int, int] = (80, 48), fps: float = 12.0,
               fourcc: str = "mp4v", seed: int = 0) -> Path:
    """A clip of ``frames`` frames of ``size`` (width, height): a textured background with a disc
    and a box moving across it."""
    width, height = size
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(background, (5, 5), 0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} into {path.suffix}"
    for i in range(frames):
        frame = background.copy()
        cv2.circle(frame, (4 + (3 * i) % width, height // 2), max(3, height // 5), (20, 200, 240), -1)
        cv2.rectangle(frame, (width - 1 - (2 * i) % width, 2), (width - 1 - (2 * i) % width + 12, 14),
                      (230, 40, 60), -1)
        writer.write(frame)
    writer.release()
    return path


def decode_frames(path: Path) -> List[np.ndarray]:
    """Every frame of ``path`` as OpenCV decodes it, RGB."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def video_info(path: Path) -> Tuple[int, float, Tuple[int, int]]:
    """(frames decoded, frame rate, (width, height)) of a video file."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    return len(decode_frames(path)), fps, size


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut ``path``'s bytes at ``fraction`` of its length, in place."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path

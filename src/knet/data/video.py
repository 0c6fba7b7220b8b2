"""Reading videos, cameras and streams frame by frame (OpenCV's ``VideoCapture``) as uint8 RGB frames.

    with VideoReader("clip.mp4", every=3, start=1.0, end=5.0) as video:
        video.fps, video.size, video.frame_count, video.expected
        for frame in video:                  # Frame(index, timestamp, image)
            ...

A source is a video file (anything OpenCV's FFmpeg decoder opens: ``.mp4 .avi .mkv .mov .webm``
...), a camera (an ``int`` index or ``"camera:N"``) or a stream URL (``rtsp://``, ``rtmp://``,
``http(s)://``). ``frame.index`` is the frame's position in the source (from 0, counting the frames
skipped by ``every`` and ``start``); ``frame.timestamp`` is in seconds from the source's start:
``index / fps`` for a file with a frame rate, the time since the first frame for cameras and streams
(whose nominal rate is often not their real one).

One frame is held at a time. A file that ends before the frame count its header gives raises
:class:`~knet.errors.DataError` naming the first frame that could not be read, after the frames
before it were yielded.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlparse

import cv2
import numpy as np

from ..errors import DataError, KnetError

# File suffixes (lower case) that are read as videos when found in folders and globs, or named.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
# How long OpenCV waits for a stream URL to open or to deliver a frame before giving up.
STREAM_TIMEOUT_MS = 10000

Source = Union[str, "os.PathLike[str]", int]

__all__ = ["Frame", "ImageSequence", "VIDEO_SUFFIXES", "VideoReader", "camera_index", "describe", "is_url",
           "is_video_file", "source_name"]


@dataclass(frozen=True)
class Frame:
    """One frame: its index in the source, its time in seconds (None when unknown) and the uint8
    (H, W, 3) RGB image; ``source`` is the file it was read from when frames are image files."""

    index: int
    timestamp: Optional[float]
    image: np.ndarray
    source: Optional[str] = None


def camera_index(source: Any) -> Optional[int]:
    """The camera index of ``source``: an ``int``, or a string ``"camera:N"``; None otherwise."""
    if isinstance(source, bool):
        return None
    if isinstance(source, int):
        return source
    if isinstance(source, str):
        match = re.fullmatch(r"camera:(\d+)", source.strip())
        if match:
            return int(match.group(1))
    return None


def is_url(source: Any) -> bool:
    """Whether ``source`` is a stream URL (rtsp, rtsps, rtmp, http, https)."""
    return isinstance(source, str) and urlparse(source).scheme.lower() in URL_SCHEMES and "://" in source


def is_video_file(path: Any) -> bool:
    """Whether ``path``'s suffix is one of :data:`VIDEO_SUFFIXES`."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def source_name(source: Source) -> str:
    """A file-name stem for the outputs of ``source``: the file's stem, ``camera0`` for camera 0,
    or the last part of a URL's path (its host when the path is empty)."""
    camera = camera_index(source)
    if camera is not None:
        return f"camera{camera}"
    if is_url(source):
        parsed = urlparse(str(source))
        name = Path(parsed.path).stem or parsed.hostname or "stream"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "stream"
    return Path(source).stem


def describe(source: Source) -> str:
    """How messages name ``source``: ``camera 0``, or the path or URL as given."""
    camera = camera_index(source)
    return f"camera {camera}" if camera is not None else os.fspath(source)


class VideoReader:
    """The frames of a video file, camera or stream URL, as :class:`Frame` objects.

    Args:
        source: a video file, a camera (``int`` or ``"camera:N"``) or a URL.
        every: keep every N-th frame (the first kept is the first at or after ``start``).
        start: the first second to read, from the start of the source.
        end: the second to stop at (frames with ``start <= timestamp < end``).
        max_frames: stop after this many frames.

    Attributes:
        fps: the source's frame rate, or None when it reports none.
        size: (width, height) of the frames.
        frame_count: the frames a file's header counts, or None (cameras, streams, unknown).
        live: whether the source is a camera or a stream (it has no end of its own).

    Raises:
        DataError: when the source does not open (a missing file, not a video, a camera that does
            not open, an unreachable URL), or, while iterating, a file that breaks off early.
    """

    def __init__(self, source: Source, every: int = 1, start: Optional[float] = None,
                 end: Optional[float] = None, max_frames: Optional[int] = None) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise KnetError(f"every must be a positive integer, got {every!r}")
        if start is not None and start < 0:
            raise KnetError(f"start must be at least 0 seconds, got {start}")
        if end is not None and end <= (start or 0.0):
            raise KnetError(f"end ({end} s) must come after start ({start or 0.0} s)")
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise KnetError(f"max_frames must be a positive integer, got {max_frames!r}")
        self.source = source
        self.every, self.start, self.end, self.max_frames = every, start, end, max_frames
        self.name = describe(source)
        self.camera = camera_index(source)
        self.live = self.camera is not None or is_url(source)
        self._capture = self._open()
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps: Optional[float] = fps if 0.0 < fps < 1000.0 else None
        self.size: Tuple[int, int] = (int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                                      int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0))
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: Optional[int] = count if count > 0 and not self.live else None

    def _open(self) -> Any:
        if self.camera is not None:
            capture = cv2.VideoCapture(self.camera)
            if not capture.isOpened():
                raise DataError(f"camera {self.camera} does not open (no such device, or another program holds it)")
            return capture
        if is_url(self.source):
            capture = cv2.VideoCapture(str(self.source), cv2.CAP_ANY,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
            if not capture.isOpened():
                raise DataError(f"{self.source}: the stream does not open (unreachable, or not a video stream)")
            return capture
        path = Path(self.source)
        if not path.exists():
            raise DataError(f"{path}: video file not found")
        if not path.is_file():
            raise DataError(f"{path}: expected a video file, found a folder")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: video file is empty")
        capture = cv2.VideoCapture(os.fspath(path))
        if not capture.isOpened():
            raise DataError(f"{path}: not a video OpenCV can decode (or the file is damaged)")
        return capture

    # ---- counts ---------------------------------------------------------------------------
    @property
    def expected(self) -> Optional[int]:
        """How many frames iterating yields, when the source's length and rate say (else None)."""
        if self.frame_count is None:
            return self.max_frames if self.live and self.max_frames is not None and self.end is None else None
        first, stop = 0, self.frame_count
        if (self.start is not None or self.end is not None) and self.fps is None:
            return None
        if self.start is not None:
            first = int(np.ceil(self.start * self.fps - 1e-9))
        if self.end is not None:
            stop = min(stop, int(np.ceil(self.end * self.fps - 1e-9)))
        count = len(range(first, stop, self.every))
        return min(count, self.max_frames) if self.max_frames is not None else count

    # ---- reading --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        capture = self._capture
        if capture is None:
            raise DataError(f"{self.name}: the reader is closed (a VideoReader is read once)")
        index, kept, first_kept = 0, 0, None
        clock: Optional[float] = None
        ended = False  # stopped by end or max_frames, not by the source running out
        try:
            while self.max_frames is None or kept < self.max_frames:
                if not capture.grab():
                    break
                now = time.monotonic()
                clock = now if clock is None else clock
                timestamp = index / self.fps if self.fps is not None and not self.live else now - clock
                if self.end is not None and timestamp >= self.end - 1e-9:
                    ended = True
                    break
                if self.start is None or timestamp >= self.start - 1e-9:
                    first_kept = index if first_kept is None else first_kept
                    if (index - first_kept) % self.every == 0:
                        ok, bgr = capture.retrieve()
                        if not ok or bgr is None:
                            break
                        if self.size == (0, 0):
                            self.size = (bgr.shape[1], bgr.shape[0])
                        kept += 1
                        yield Frame(index, timestamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
            else:
                ended = True
            if not ended:
                self._check_end(index)
        finally:
            self.close()

    def _check_end(self, index: int) -> None:
        """Raise DataError when the source ran out before it should have, naming frame ``index``."""
        if self.camera is not None:
            what = "gave no frame" if index == 0 else f"stopped delivering frames at frame {index}"
            raise DataError(f"camera {self.camera} {what} (disconnected, or another program holds it)")
        if index == 0:
            what = ("the stream gave no frame" if self.live
                    else "no frame could be decoded (not a video, or the file is damaged)")
            raise DataError(f"{self.name}: {what}")
        # A container without a frame index (mkv, webm) gives a count estimated from its duration,
        # which may be one frame off: only a larger shortfall is a broken file.
        if self.frame_count is not None and index < self.frame_count - 1:
            raise DataError(f"{self.name}: the video breaks off at frame {index} of {self.frame_count} "
                            f"(truncated or damaged); the {index} frames before it were read")

    def close(self) -> None:
        """Release the file, camera or stream. Safe to call twice."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: cv2 may already be gone
            pass

    def __repr__(self) -> str:
        count = f", {self.frame_count} frames" if self.frame_count is not None else ""
        fps = f", {self.fps:g} fps" if self.fps is not None else ""
        return f"VideoReader({self.name}, {self.size[0]}x{self.size[1]}{fps}{count})"


class ImageSequence:
    """Image files read in order as the frames of a video (a folder of numbered frames).

    Args:
        paths: the image files, in frame order.
        fps: their frame rate (timestamps are ``index / fps``).
        every: as for :class:`VideoReader`.
        start: as for :class:`VideoReader`.
        end: as for :class:`VideoReader`.
        max_frames: as for :class:`VideoReader`.
        name: what messages call the sequence (default its folder).

    An image that cannot be read is skipped (its index stays unused) and listed in ``skipped``
    as ``(path, message)``; the attributes are those of :class:`VideoReader`.
    """

    live = False

    def __init__(self, paths: List[Path], fps: float, every: int = 1, start: Optional[float] = None,
                 end: Optional[float] = None, max_frames: Optional[int] = None, name: Optional[str] = None) -> None:
        if not fps or fps <= 0:
            raise KnetError(f"the frame rate must be positive, got {fps}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise KnetError(f"every must be a positive integer, got {every!r}")
        if end is not None and end <= (start or 0.0):
            raise KnetError(f"end ({end} s) must come after start ({start or 0.0} s)")
        self.paths = [Path(p) for p in paths]
        self.fps: Optional[float] = float(fps)
        self.every, self.start, self.end, self.max_frames = every, start, end, max_frames
        self.name = name or (os.fspath(self.paths[0].parent) if self.paths else "frames")
        self.frame_count: Optional[int] = len(self.paths)
        self.size: Tuple[int, int] = (0, 0)
        self.skipped: List[Tuple[Path, str]] = []

    def _indices(self) -> range:
        first = int(np.ceil((self.start or 0.0) * self.fps - 1e-9))
        stop = len(self.paths) if self.end is None else min(len(self.paths), int(np.ceil(self.end * self.fps - 1e-9)))
        return range(first, stop, self.every)

    @property
    def expected(self) -> Optional[int]:
        count = len(self._indices())
        return min(count, self.max_frames) if self.max_frames is not None else count

    def __iter__(self) -> Iterator[Frame]:
        from .io import read_image

        kept = 0
        for index in self._indices():
            if self.max_frames is not None and kept >= self.max_frames:
                return
            path = self.paths[index]
            try:
                image = read_image(path)
            except DataError as err:
                self.skipped.append((path, str(err)))
                continue
            if self.size == (0, 0):
                self.size = (image.shape[1], image.shape[0])
            kept += 1
            yield Frame(index, index / self.fps, image, os.fspath(path))

    def close(self) -> None:
        """Nothing to release (each image is read and closed in turn)."""

    def __repr__(self) -> str:
        return f"ImageSequence({self.name}, {len(self.paths)} frames, {self.fps:g} fps)"

"""Segmenting a video, a camera, a stream or a folder of frames into files (``knet predict`` on them).

    from knet.data.video import VideoReader
    summary = predict_video(segmenter, VideoReader("clip.mp4", every=2), Path("out/clip"))

Under ``base`` = ``<out_dir>/<stem>`` it writes:

- ``<stem>_overlay.mp4``: every segmented frame with its prediction drawn over it (no legend), at
  the source's size and at its frame rate divided by ``every`` (OpenCV's ``mp4v`` codec);
- ``<stem>.json``: the summary (:class:`VideoSummary`: frames, frame rates, size, the classes seen
  and their share of the pixels over the video, and whether it ran to the end);
- with ``save_frames``, per frame, the files a result writes for an image but the overlay,
  named ``<stem>_<frame index, 6 digits>`` (``.png`` label maps; panoptic ``.png`` + ``.json``;
  instance ``.json``).

Frames are decoded in one background thread and the overlays drawn and encoded in another, both a
couple of batches ahead of or behind the model, so memory stays flat in the number of frames. The
video is written under a temporary name and renamed when it is released, also when the source
breaks off or Ctrl-C stops it, so the named file is always complete and playable.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np

from ..data.video import ImageSequence, VideoReader
from ..errors import DataError, KnetError
from .results import SegmentationResult

OVERLAY_SUFFIX = "_overlay.mp4"
FOURCC = "mp4v"
# The frame rate of a source that has none: a camera that reports none, a folder without --fps.
DEFAULT_FPS = 25.0
H264_NOTE = ("the overlay videos use OpenCV's mp4v codec, which browsers may not play: they need H.264 "
             "(e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4)")

Reader = Union[VideoReader, ImageSequence]

__all__ = ["DEFAULT_FPS", "H264_NOTE", "OVERLAY_SUFFIX", "VideoFileWriter", "VideoItem", "VideoSummary", "frame_base",
           "predict_video"]


def frame_base(base: Path, index: int) -> Path:
    """The output name of frame ``index``: ``<base>_<index, 6 digits>``."""
    return base.with_name(f"{base.name}_{index:06d}")


class VideoFileWriter:
    """uint8 RGB frames into an ``.mp4`` (OpenCV, ``mp4v``) at ``fps`` and ``size`` (width, height).
    Frames of another size are scaled to it. The file is written under a temporary name in the same
    folder and renamed onto ``path`` by :meth:`close`."""

    def __init__(self, path: Path, fps: float, size: Tuple[int, int]) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        # OpenCV picks the container from the suffix, so the temporary name keeps it.
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise KnetError(f"{self.path.parent}: cannot create the folder ({err.strerror or err})") from None
        self._writer = cv2.VideoWriter(os.fspath(self._tmp), cv2.VideoWriter_fourcc(*FOURCC), float(fps), self.size)
        if not self._writer.isOpened():
            self._writer.release()
            self._tmp.unlink(missing_ok=True)
            raise KnetError(f"{self.path}: cannot write a video there (OpenCV's {FOURCC} encoder did not open; "
                            "is the folder writable?)")

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Optional[Path]:
        """Release the encoder and give the file its name; returns it (None when no frame was
        written: no file is left). Safe to call twice."""
        if self._writer is None:
            return self.path if self.frames else None
        self._writer.release()
        self._writer = None
        if not self.frames:
            self._tmp.unlink(missing_ok=True)
            return None
        os.replace(self._tmp, self.path)
        return self.path


@dataclass
class ClassShare:
    """A class seen in a video and its share of the pixels of the segmented frames."""

    label: int
    name: str
    fraction: float


@dataclass
class VideoSummary:
    """What ``<stem>.json`` holds about one video (``to_dict``).

    ``frames``: frames segmented; ``first_frame``/``last_frame``: their indices in the source;
    ``frame_count``: the frames the source's header counts (None for cameras and streams);
    ``fps_in``: the source's rate (None when it reports none), ``fps_out``: the overlay video's;
    ``seconds``/``frames_per_second``: the wall time and the rate of the whole run; ``classes``:
    the classes seen, largest share first; ``complete``: False when the source broke off, a frame
    could not be written or Ctrl-C stopped it (``error``/``interrupted`` say which); ``skipped``:
    frames of a folder that could not be read.
    """

    source: str
    video: Optional[str]
    frames: int
    first_frame: Optional[int]
    last_frame: Optional[int]
    frame_count: Optional[int]
    every: int
    start: Optional[float]
    end: Optional[float]
    max_frames: Optional[int]
    fps_in: Optional[float]
    fps_out: float
    width: int
    height: int
    seconds: float
    frames_per_second: float
    task: str
    model: str
    classes: List[ClassShare] = field(default_factory=list)
    complete: bool = True
    error: Optional[str] = None
    interrupted: bool = False
    skipped: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class _Sink:
    """The encoding thread: draws each result's overlay, appends it to the video, writes the
    per-frame files and counts the classes' pixels, a bounded queue behind the model."""

    _DONE = object()

    def __init__(self, base: Path, fps: float, opacity: float, save_frames: bool, save_probs: bool,
                 bar: Any, size: int) -> None:
        self.base, self.fps, self.opacity = base, fps, opacity
        self.save_frames, self.save_probs, self.bar = save_frames, save_probs, bar
        self.writer: Optional[VideoFileWriter] = None
        self.video: Optional[Path] = None
        self.error: Optional[BaseException] = None
        self.frames = 0
        self.first: Optional[int] = None
        self.last: Optional[int] = None
        self.size: Tuple[int, int] = (0, 0)
        self.areas: Dict[int, int] = {}
        self.pixels = 0
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=size)
        self._thread = threading.Thread(target=self._run, name="knet-encode", daemon=True)
        self._thread.start()

    def put(self, result: SegmentationResult) -> None:
        self._queue.put(result)

    def finish(self) -> None:
        """Wait for the queued frames, then release the video (it gets its name)."""
        self._queue.put(self._DONE)
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                result = self._queue.get()
                if result is self._DONE:
                    return
                if self.error is None:  # after an error, the queue is only drained
                    try:
                        self._write(result)
                    except Exception as err:  # the model's side stops and reports it
                        self.error = err
        finally:
            if self.writer is not None:
                try:
                    self.video = self.writer.close()
                except OSError as err:
                    self.error = self.error or KnetError(f"{self.writer.path}: cannot write ({err.strerror or err})")

    def _write(self, result: SegmentationResult) -> None:
        index = result.frame_index if result.frame_index is not None else self.frames
        picture = result.video_frame(self.opacity)
        if self.writer is None:
            self.size = (picture.shape[1], picture.shape[0])
            self.writer = VideoFileWriter(self.base.with_name(self.base.name + OVERLAY_SUFFIX), self.fps, self.size)
        self.writer.write(picture)
        if self.save_frames:
            result.write(frame_base(self.base, index), opacity=self.opacity, save_probs=self.save_probs, overlay=False)
        for label, area in result.class_areas().items():
            self.areas[label] = self.areas.get(label, 0) + area
        self.pixels += int(result.image.shape[0]) * int(result.image.shape[1])
        self.frames += 1
        self.first = index if self.first is None else self.first
        self.last = index
        self.bar.update()


def predict_video(segmenter: Any, source: Union[Reader, str, "os.PathLike[str]", int], base: Path, *,
                  opacity: float = 0.5, save_frames: bool = False, save_probs: bool = False,
                  batch_size: Optional[int] = None, progress: Optional[bool] = None) -> VideoSummary:
    """Segment the frames of ``source`` with ``segmenter`` and write the overlay video, the
    summary and (``save_frames``) the per-frame files under ``base`` (see the module's doc).

    Args:
        source: a :class:`~knet.data.video.VideoReader` (its ``every``, ``start``, ``end`` and
            ``max_frames`` apply), an :class:`~knet.data.video.ImageSequence`, or a video file,
            camera or URL (read whole).
        batch_size: frames per forward (default the segmenter's).
        progress: False draws no progress bar.

    Returns the :class:`VideoSummary` it wrote as ``<base>.json``. A source that breaks off, a
    frame whose files cannot be written and Ctrl-C end the video early: the files written so far
    are complete, and the summary's ``error``/``interrupted`` say why. Raises DataError when the
    source does not open.
    """
    from ..utils.atomic import atomic_write_text
    from ..utils.progress import ProgressBar

    reader: Reader = source if isinstance(source, (VideoReader, ImageSequence)) else VideoReader(source)
    size = segmenter.batch_size if batch_size is None else batch_size
    fps_out = (reader.fps or DEFAULT_FPS) / reader.every
    started = time.monotonic()
    error: Optional[str] = None
    interrupted = False
    bar = ProgressBar(total=reader.expected, desc=base.name, enabled=progress, unit="frames")
    sink = _Sink(base, fps_out, opacity, save_frames, save_probs, bar, 2 * size)
    results = segmenter.stream(reader, batch_size=size)
    try:
        for result in results:
            if sink.error is not None:
                break
            sink.put(result)
    except DataError as err:  # the source broke off: what came before it is written
        error = str(err)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results.close()  # stops the decoding thread and releases the source
        sink.finish()
        bar.close()
    if sink.error is not None and not isinstance(sink.error, (KnetError, OSError)):
        raise sink.error
    if sink.error is not None:
        error = error or (str(sink.error) if isinstance(sink.error, KnetError)
                          else f"{base.parent}: cannot write ({getattr(sink.error, 'strerror', None) or sink.error})")
    seconds = time.monotonic() - started
    names = segmenter.class_names
    classes = [ClassShare(label, str(names[label]).strip() if label < len(names) else f"class_{label}",
                          round(area / max(sink.pixels, 1), 6))
               for label, area in sorted(sink.areas.items(), key=lambda kv: (-kv[1], kv[0]))]
    skipped = [message for _, message in getattr(reader, "skipped", [])]
    width, height = reader.size if reader.size != (0, 0) else sink.size
    summary = VideoSummary(
        source=reader.name, video=sink.video.name if sink.video is not None else None, frames=sink.frames,
        first_frame=sink.first, last_frame=sink.last, frame_count=reader.frame_count, every=reader.every,
        start=reader.start, end=reader.end, max_frames=reader.max_frames, fps_in=reader.fps,
        fps_out=round(fps_out, 6), width=int(width), height=int(height), seconds=round(seconds, 3),
        frames_per_second=round(sink.frames / seconds, 3) if seconds > 0 else 0.0, task=segmenter.task.name,
        model=segmenter.config.name, classes=classes, complete=error is None and not interrupted and not skipped,
        error=error, interrupted=interrupted, skipped=skipped)
    atomic_write_text(base.with_name(base.name + ".json"),
                      json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# knet predict's video inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoItem:
    """A video input of ``knet predict`` and where its outputs go: ``<out_dir>/<relative>_overlay.mp4``,
    ``<out_dir>/<relative>.json`` and the per-frame ``<out_dir>/<relative>_<index>...``.

    ``source``: the file, ``camera:N`` or URL as given; ``path``: the file or folder read (None for
    cameras and URLs); ``frames``: a folder's images in frame order (``--as-video``)."""

    source: str
    relative: Path
    path: Optional[Path] = None
    frames: Optional[Tuple[Path, ...]] = None

    def base(self, out_dir: Path) -> Path:
        return out_dir / self.relative

    def reader(self, every: int = 1, start: Optional[float] = None, end: Optional[float] = None,
               max_frames: Optional[int] = None, fps: Optional[float] = None) -> Reader:
        """Open the source (DataError when it does not open); ``fps``: a folder's frame rate."""
        if self.frames is not None:
            return ImageSequence(list(self.frames), fps or DEFAULT_FPS, every=every, start=start, end=end,
                                 max_frames=max_frames, name=self.source)
        return VideoReader(self.source, every=every, start=start, end=end, max_frames=max_frames)

"""``knet predict``: segment image files, folders and globs into label maps, panoptic segments or
instances, and colour overlays.

    knet predict --model knet-r50-fcn --checkpoint ref.pth photos/ extra/*.jpg --out-dir out
    knet predict --checkpoint knet-r50-fcn.onnx photos/ --out-dir out   # a `knet export` file, ONNX Runtime

For each image, under ``--out-dir``, semantic models write:

- ``<stem>.png``: the label map, one class index per pixel (uint8; uint16 beyond 255 classes);
- ``<stem>_overlay.png``: the image blended with the palette, plus a legend of the classes present;
- ``<stem>.npy`` with ``--save-probs``: float32 class probabilities, shape (C, H, W).

Panoptic models write the COCO panoptic PNG ``<stem>.png`` (id = R + 256 G + 256^2 B, 0 = void),
``<stem>.json`` (``segments_info``) and the overlay; instance models ``<stem>.json`` (COCO results
with RLE masks, scores >= ``--score-thr``) and the overlay (see :mod:`knet.inference.results`).

Images inside a folder (searched recursively) keep their path relative to that folder, and glob
matches their path relative to the glob's first directory without wildcards, so equal stems in
different folders never collide. It runs the pipeline of ``knet test``
(:class:`knet.inference.pipeline.TestPipeline`, through :class:`knet.Segmenter`), whole or slide,
with or without ``--tta``. Every output is written atomically (a temporary file, then a rename).

Videos (``.mp4 .avi .mkv .mov .webm`` ..., found in folders and globs too), cameras (``--source 0``
or ``camera:0``) and stream URLs (``rtsp://``, ``http(s)://``) are read frame by frame: each writes
``<stem>_overlay.mp4`` (at the source's size and frame rate), ``<stem>.json`` (a summary) and with
``--save-frames`` the per-frame files ``<stem>_<index>.png`` ... (see :mod:`knet.inference.video`);
``--as-video`` writes a folder's images as one video instead.

A corrupt or unreadable image, a file that is not a video, a camera that does not open and a video
that breaks off (its frames up to the break are written) are reported by name and the others are
still written; the exit code is then 1. A missing path, a folder without images or videos or a glob
that matches nothing is an error before any work starts (exit code 2).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Set, Tuple, Union

from ..data.io import IMAGE_SUFFIXES
from ..data.video import VIDEO_SUFFIXES, camera_index, is_url, source_name
from ..errors import DataError, KnetError
from ..inference.files import PredictItem, message, predict
from ..inference.video import DEFAULT_FPS, H264_NOTE, OVERLAY_SUFFIX, VideoItem, VideoSummary
from ..utils.outputs import inputs_named_like, refuse_overwriting_inputs
from . import options
_MAGIC = set("*?[")
# What a result may write per image, after its output name (see :mod:`knet.inference.results`).
OUTPUT_SUFFIXES = (".png", "_overlay.png", ".npy", ".json")
# What a video writes besides its per-frame files (see :mod:`knet.inference.video`).
VIDEO_OUTPUT_SUFFIXES = (OVERLAY_SUFFIX, ".json")
Item = Union[PredictItem, VideoItem]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _has_magic(text: str) -> bool:
    return any(ch in _MAGIC for ch in text)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _opens_as_video(path: Path) -> bool:
    """Whether OpenCV's decoder reads ``path`` as a video of more than one frame (a file named
    with a suffix that is neither an image's nor a known video's)."""
    import cv2

    capture = cv2.VideoCapture(os.fspath(path))
    try:
        return capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_COUNT) > 1
    finally:
        capture.release()


def _name_order(path: Path) -> Tuple:
    """Sort key of frame files: by name, numbers by value (``frame2`` before ``frame10``)."""
    return tuple(int(part) if part.isdigit() else part.lower()
                 for part in re.split(r"(\d+)", path.as_posix()))


def _inside(path: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _folder_files(folder: Path, exclude: Optional[Path]) -> Tuple[List[Path], List[Path]]:
    """The image files and the video files under ``folder`` (recursively, hidden files and folders
    skipped, nothing under ``exclude``), each sorted by relative path."""
    images, videos = [], []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(root_path / d, exclude))
        for name in sorted(files):
            path = root_path / name
            if name.startswith(".") or not path.is_file():
                continue
            if _is_image_name(path):
                images.append(path)
            elif _is_video_name(path):
                videos.append(path)
    key = lambda p: p.relative_to(folder).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(videos, key=key)


def _glob_base(pattern: str) -> Path:
    """The leading directories of ``pattern`` that hold no wildcard."""
    parts = Path(pattern).parts
    base: List[str] = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _live_source(text: str) -> Optional[VideoItem]:
    """A camera (``camera:N``) or a stream URL as a video input, else None."""
    if camera_index(text) is not None or is_url(text):
        return VideoItem(text.strip(), Path(source_name(text.strip())))
    return None


def expand_inputs(inputs: Sequence[str], out_dir: Optional[Path] = None, as_video: bool = False,
                  sources: Sequence[str] = ()) -> List[Item]:
    """Files, folders, globs, cameras and URLs -> the images and videos to segment with their
    output names.

    - a file: ``<stem>`` (whatever its suffix; a video by its suffix, or when OpenCV reads a file of
      another suffix as one; a non-image fails later, by name);
    - a folder: every image and video under it (recursively), named by its path relative to the
      folder; with ``as_video`` its images are one video instead, named after the folder;
    - a glob (``*``, ``?``, ``[...]``, ``**`` for any depth): every image and video file it
      matches, named by its path relative to the pattern's first directory without wildcards;
    - ``camera:N`` and stream URLs (``rtsp://``, ``http(s)://``): a live video;
    - ``sources`` (``--source``): as inputs, and a bare number is a camera index.

    The same file given twice is segmented once. When two inputs would still get the same output
    name (``a.jpg`` and ``a.png`` in one folder, or files of equal stems named one by one), the
    later ones get ``_2``, ``_3``, ... appended, and a note says so.

    Raises:
        DataError: before any work, for a path that does not exist, a folder holding no images or
            videos or a glob that matches no image or video.
    """
    if not inputs and not sources:
        raise DataError("no inputs: give image or video files, folders, globs, camera:N or stream URLs, "
                        "or --source")
    exclude = out_dir.resolve() if out_dir is not None and out_dir.exists() else None
    items: List[Item] = []
    seen: Set[object] = set()

    def add(item: Item) -> None:
        key = item.path.resolve() if item.path is not None else item.source
        if key not in seen:
            seen.add(key)
            items.append(item)

    def add_file(path: Path, relative: Path) -> None:
        if _is_image_name(path):
            add(PredictItem(path, relative))
        elif _is_video_name(path):
            add(VideoItem(os.fspath(path), relative, path))
        else:
            add(VideoItem(os.fspath(path), relative, path) if _opens_as_video(path) else PredictItem(path, relative))

    problems: List[str] = []
    wanted = [(text, False) for text in inputs] + [(text, True) for text in sources]
    for text, is_source in wanted:
        if is_source and text.strip().isdigit():
            text = f"camera:{int(text)}"
        path = Path(text)
        live = None if path.exists() else _live_source(text)
        if live is not None:
            add(live)
        elif path.is_dir():
            images, videos = _folder_files(path, exclude)
            if not images and not videos:
                problems.append(f"{text}: folder holds no images or videos (looked for "
                                f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}, in subfolders too)")
            if as_video and images:
                name = path.resolve().name or "frames"
                frames = tuple(sorted(images, key=lambda p: _name_order(p.relative_to(path))))
                add(VideoItem(text, Path(name), path, frames))
            else:
                for image in images:
                    add(PredictItem(image, image.relative_to(path).with_suffix("")))
            for video in videos:
                add(VideoItem(os.fspath(video), video.relative_to(path).with_suffix(""), video))
        elif path.is_file():
            add_file(path, Path(path.stem))
        elif os.path.lexists(text):
            problems.append(f"{text}: not a regular file or folder")
        elif _has_magic(text):
            base = _glob_base(text)
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            found = [m for m in matches if m.is_file() and (_is_image_name(m) or _is_video_name(m))
                     and not _inside(m, exclude)]
            if not found:
                what = f"only other files ({len(matches)})" if matches else "nothing"
                problems.append(f"{text}: the pattern matches {what}; expected image or video files "
                                f"({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
            for match in found:
                add_file(match, match.relative_to(base).with_suffix(""))
        else:
            problems.append(f"{text}: no such file or folder")
    if problems:
        raise DataError("; ".join(problems))
    return _unique_names(items)


def _unique_names(items: List[Item]) -> List[Item]:
    """Rename items whose outputs would overwrite another item's (suffix ``_2``, ``_3``, ...)."""
    claimed: Set[str] = set()
    result: List[Item] = []
    for item in items:
        relative, n = item.relative, 1
        while True:
            names = {(relative.parent / (relative.name + s)).as_posix().lower()
                     for s in OUTPUT_SUFFIXES + VIDEO_OUTPUT_SUFFIXES}
            if not names & claimed:
                break
            n += 1
            relative = item.relative.with_name(f"{item.relative.name}_{n}")
        if relative != item.relative:
            written = ".png" if isinstance(item, PredictItem) else OVERLAY_SUFFIX
            shown = item.path if isinstance(item, PredictItem) else item.source
            print(f"knet predict: note: {shown} is written as {relative.as_posix()}{written} "
                  f"({item.relative.as_posix()}{written} is taken by another input)", file=sys.stderr)
        claimed |= names
        if isinstance(item, PredictItem):
            result.append(PredictItem(item.path, relative))
        else:
            result.append(VideoItem(item.source, relative, item.path, item.frames))
    return result


def _planned_outputs(items: Sequence[Item], out_dir: Path, inputs: Sequence[Path],
                     save_frames: bool) -> List[Tuple[str, Path]]:
    """The files ``knet predict`` may write, for the check that none replaces an input: each
    image's and video's own, and the inputs named like a video's per-frame files."""
    planned: List[Tuple[str, Path]] = []
    for item in items:
        base = item.base(out_dir)
        suffixes = OUTPUT_SUFFIXES if isinstance(item, PredictItem) else VIDEO_OUTPUT_SUFFIXES
        planned.extend(("--out-dir", base.with_name(base.name + suffix)) for suffix in suffixes)
        if save_frames and isinstance(item, VideoItem):
            # A live source has no frame count: the inputs that a frame's file would be named are checked instead.
            frame = glob.escape(base.name) + "_" + "[0-9]" * 6
            planned += inputs_named_like("--out-dir", base.parent, [frame + s for s in (".png", ".json", ".npy")],
                                         inputs)
    return planned


def _check_out_dir(out_dir: Path) -> None:
    """A one-line error, before any work, for an ``--out-dir`` that cannot be written."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise KnetError(f"--out-dir {out_dir}: exists and is not a folder")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise KnetError(f"--out-dir {out_dir}: the folder is not writable")
        return
    parent = out_dir.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise KnetError(f"--out-dir {out_dir}: cannot be created ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KnetError(f"--out-dir {out_dir}: cannot be created ({parent} is not writable)")


@contextlib.contextmanager
def _quiet_video_backends() -> Iterator[None]:
    """Keep OpenCV's and FFmpeg's own log lines (a damaged frame, a camera probe) off stderr while
    the verb runs: its errors say what happened in one line."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    had = "OPENCV_FFMPEG_LOGLEVEL" in os.environ
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used in the process
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
        if not had:
            os.environ.pop("OPENCV_FFMPEG_LOGLEVEL", None)


# --------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image or video files, folders (searched recursively for both), globs (quote them: "
                             "'photos/*.jpg'), camera:N or stream URLs (rtsp://, http(s)://)")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the outputs")
    options.add_model(parser)
    options.add_weights(parser, required=True)
    options.add_overrides(parser)
    options.add_test_pipeline(parser)
    options.add_device(parser)
    options.add_threads(parser)
    options.add_compile(parser)
    options.add_precision(parser)
    options.add_quiet(parser)
    parser.add_argument("--opacity", type=float, default=0.5, metavar="X",
                        help="weight of the class colours in the overlays, 0..1 (default 0.5)")
    parser.add_argument("--save-probs", action="store_true",
                        help="semantic models: also write the class probabilities as <stem>.npy, float32 (C, H, W)")
    parser.add_argument("--score-thr", type=float, default=0.3, metavar="X",
                        help="instance models: the lowest score of the instances written and drawn (default 0.3)")
    video = parser.add_argument_group(
        "videos, cameras and streams",
        "each writes <stem>_overlay.mp4 (the source's size and frame rate) and <stem>.json (a summary)")
    video.add_argument("--source", action="append", default=[], metavar="SOURCE",
                       help="a camera index (0, or camera:0), a stream URL or a video file; may be repeated")
    video.add_argument("--save-frames", action="store_true",
                       help="also write each frame's files as for an image, without its overlay: "
                            "<stem>_<frame index, 6 digits>.png (panoptic: and .json; instance: .json only)")
    video.add_argument("--every", type=int, default=1, metavar="N",
                       help="segment every N-th frame (default 1: all); the video's frame rate is divided by N")
    video.add_argument("--start", type=float, default=None, metavar="X",
                       help="the first second to segment (default: the start)")
    video.add_argument("--end", type=float, default=None, metavar="X",
                       help="the second to stop at (default: the end; a camera or stream runs until Ctrl-C)")
    video.add_argument("--max-frames", type=int, default=None, metavar="N",
                       help="stop after segmenting N frames of each video")
    video.add_argument("--as-video", action="store_true",
                       help="write the images of each folder given as one video, <folder name>_overlay.mp4, in name "
                            "order (numbers by value), instead of files per image")
    video.add_argument("--fps", type=float, default=None, metavar="X",
                       help=f"with --as-video: the frames' rate (default {DEFAULT_FPS:g})")


def _build_segmenter(args: argparse.Namespace):
    from ..inference.segmenter import Segmenter

    options.refuse_torch_options_for_onnx(args)
    return Segmenter(options.load_weights(args), device=args.device, mode=args.mode, tta=args.tta,
                     test_scale=args.test_scale, crop_size=args.crop_size, stride=args.stride,
                     batch_size=args.batch_size, score_thr=args.score_thr, compile=args.compile,
                     precision=args.precision)


allocator_setting = options.inference_allocator


def _check_video_options(args: argparse.Namespace, videos: Sequence[VideoItem]) -> None:
    """One-line errors for video options out of range, or given without a video to apply to."""
    options.check_positive("every", args.every)
    options.check_positive("max-frames", args.max_frames)
    if args.start is not None and args.start < 0:
        raise KnetError(f"--start must be at least 0 seconds, got {args.start}")
    if args.end is not None and args.end <= (args.start or 0.0):
        raise KnetError(f"--end ({args.end}) must come after --start ({args.start or 0.0})")
    if args.fps is not None and args.fps <= 0:
        raise KnetError(f"--fps must be positive, got {args.fps}")
    folders = [v for v in videos if v.frames is not None]
    if args.as_video and not folders:
        raise KnetError("--as-video writes a folder's images as one video: give a folder of images")
    if args.fps is not None and not folders:
        raise KnetError("--fps is the frame rate of a folder written with --as-video: give one")
    if not videos:
        given = [flag for flag, value in (("--save-frames", args.save_frames), ("--every", args.every != 1),
                                          ("--start", args.start is not None), ("--end", args.end is not None),
                                          ("--max-frames", args.max_frames is not None)) if value]
        if given:
            raise KnetError(f"{given[0]} applies to videos, cameras and streams (and folders with --as-video); "
                            "the inputs are images only")


def run(args: argparse.Namespace) -> int:
    with _quiet_video_backends():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.opacity <= 1.0:
        raise KnetError(f"--opacity must be between 0 and 1, got {args.opacity}")
    options.check_positive("batch-size", args.batch_size)
    options.check_positive("threads", args.threads)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KnetError(f"--out-dir {out_dir}: exists and is not a folder")
    # every input error before the model is loaded
    items = expand_inputs(args.inputs, out_dir, as_video=args.as_video, sources=args.source)
    images = [item for item in items if isinstance(item, PredictItem)]
    videos = [item for item in items if isinstance(item, VideoItem)]
    _check_video_options(args, videos)
    inputs = [item.path for item in images] + [v.path for v in videos if v.path is not None and v.frames is None]
    inputs += [frame for v in videos for frame in (v.frames or ())]
    refuse_overwriting_inputs(_planned_outputs(items, out_dir, inputs, args.save_frames), inputs + [args.checkpoint])
    _check_out_dir(out_dir)
    options.set_torch_threads(args)
    if not 0.0 <= args.score_thr <= 1.0:
        raise KnetError(f"--score-thr must be between 0 and 1, got {args.score_thr}")
    segmenter = _build_segmenter(args)
    if args.save_probs and not segmenter.task.has_probabilities:
        raise KnetError(f"--save-probs: a {segmenter.task.name} model has no per-class probabilities to save "
                        "(it writes segments: <stem>.json)")
    if not args.quiet:
        counts = [f"{len(images)} image{'s' if len(images) != 1 else ''}"] if images else []
        counts += [f"{len(videos)} video{'s' if len(videos) != 1 else ''}"] if videos else []
        print(f"knet predict: {' and '.join(counts)} with {segmenter}", file=sys.stderr)
    failures: List[Tuple[object, str]] = []
    if images:
        failures += predict(segmenter, images, out_dir, opacity=args.opacity, save_probs=args.save_probs,
                            progress=False if args.quiet else None)
        written = len(images) - len(failures)
        extra = " and probabilities (<stem>.npy)" if args.save_probs else ""
        print(f"wrote {written} image{'s' if written != 1 else ''}: {segmenter.task.output_files}{extra}, to {out_dir}")
    interrupted, live, written_videos = False, True, 0
    for item in videos:
        summary = _predict_video(segmenter, item, out_dir, args, failures)
        written_videos += bool(summary is not None and summary.video)
        if summary is not None and summary.interrupted:
            interrupted, live = True, item.frames is None and item.path is None
            break
    if written_videos and not args.quiet:
        message(f"knet predict: note: {H264_NOTE}")
    if failures:
        print(f"knet predict: {len(failures)} input{'s' if len(failures) != 1 else ''} failed:", file=sys.stderr)
        for _, text in failures:
            print(f"  {text}", file=sys.stderr)
        return 1
    if interrupted and not live:
        return 130
    return 0


def _predict_video(segmenter, item: VideoItem, out_dir: Path, args: argparse.Namespace,
                   failures: List[Tuple[object, str]]) -> Optional[VideoSummary]:
    """Segment one video input into its files and return its summary (None when the source does
    not open); a failure is added to ``failures``."""
    from ..inference.video import predict_video

    try:
        reader = item.reader(every=args.every, start=args.start, end=args.end, max_frames=args.max_frames,
                             fps=args.fps)
    except DataError as err:
        failures.append((item.source, str(err)))
        message(f"knet predict: skipped {err}")
        return None
    if not args.quiet:
        size = f"{reader.size[0]}x{reader.size[1]}" if reader.size != (0, 0) else "size unknown"
        rate = f"{reader.fps:g} fps" if reader.fps else "no frame rate"
        count = f", {reader.frame_count} frames" if reader.frame_count else ""
        stop = "; Ctrl-C stops it" if getattr(reader, "live", False) and reader.expected is None else ""
        message(f"knet predict: {item.source}: {size}, {rate}{count}{stop}")
    base = item.base(out_dir)
    summary = predict_video(segmenter, reader, base, opacity=args.opacity, save_frames=args.save_frames,
                            save_probs=args.save_probs, progress=False if args.quiet else None)
    for text in summary.skipped:
        failures.append((item.source, text))
    if summary.error is not None:
        failures.append((item.source, summary.error))
        message(f"knet predict: {summary.error}")
    video = f"{base}{OVERLAY_SUFFIX}" if summary.video else "no video (no frame was segmented)"
    frames = f"{summary.frames} frame{'s' if summary.frames != 1 else ''}"
    print(f"wrote {video} ({frames}, {summary.fps_out:g} fps) and {base}.json"
          + (f" and the frames' files ({base.name}_NNNNNN...)" if args.save_frames and summary.frames else ""))
    return summary

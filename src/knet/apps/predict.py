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

A corrupt or unreadable image is reported by name and skipped; the others are still written and
the exit code is 1. A missing path, a folder without images or a glob that matches nothing is an
error before any work starts (exit code 2).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Set

from ..data.io import IMAGE_SUFFIXES
from ..errors import DataError, KnetError
from ..inference.files import PredictItem, predict
from ..utils.outputs import refuse_overwriting_inputs
from . import options
_MAGIC = set("*?[")
# What a result may write per image, after its output name (see :mod:`knet.inference.results`).
OUTPUT_SUFFIXES = (".png", "_overlay.png", ".npy", ".json")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _has_magic(text: str) -> bool:
    return any(ch in _MAGIC for ch in text)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _inside(path: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _folder_images(folder: Path, exclude: Optional[Path]) -> List[Path]:
    """Image files under ``folder`` (recursively, hidden files and folders skipped, nothing under
    ``exclude``), sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(root_path / d, exclude))
        for name in sorted(files):
            path = root_path / name
            if not name.startswith(".") and _is_image_name(path) and path.is_file():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _glob_base(pattern: str) -> Path:
    """The leading directories of ``pattern`` that hold no wildcard."""
    parts = Path(pattern).parts
    base: List[str] = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def expand_inputs(inputs: Sequence[str], out_dir: Optional[Path] = None) -> List[PredictItem]:
    """Files, folders and globs -> the images to segment with their output names.

    - a file: ``<stem>`` (whatever its suffix; a non-image fails later, by name);
    - a folder: every image under it (recursively), named by its path relative to the folder;
    - a glob (``*``, ``?``, ``[...]``, ``**`` for any depth): every image file it matches, named
      by its path relative to the pattern's first directory without wildcards.

    The same file given twice is segmented once. When two images would still get the same output
    name (``a.jpg`` and ``a.png`` in one folder, or files of equal stems named one by one), the
    later ones get ``_2``, ``_3``, ... appended, and a note says so.

    Raises:
        DataError: before any work, for a path that does not exist, a folder holding no images or a
            glob that matches no image.
    """
    if not inputs:
        raise DataError("no inputs: give image files, folders or globs")
    exclude = out_dir.resolve() if out_dir is not None and out_dir.exists() else None
    items: List[PredictItem] = []
    seen: Set[Path] = set()

    def add(path: Path, relative: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            items.append(PredictItem(path, relative))

    problems: List[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            images = _folder_images(path, exclude)
            if not images:
                problems.append(f"{text}: folder holds no images (looked for {', '.join(IMAGE_SUFFIXES)}, "
                                "in subfolders too)")
            for image in images:
                add(image, image.relative_to(path).with_suffix(""))
        elif path.is_file():
            add(path, Path(path.stem))
        elif os.path.lexists(text):
            problems.append(f"{text}: not a regular file or folder")
        elif _has_magic(text):
            base = _glob_base(text)
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            images = [m for m in matches if m.is_file() and _is_image_name(m) and not _inside(m, exclude)]
            if not images:
                what = f"only non-image files ({len(matches)})" if matches else "nothing"
                problems.append(f"{text}: the pattern matches {what}; expected image files "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            for image in images:
                add(image, image.relative_to(base).with_suffix(""))
        else:
            problems.append(f"{text}: no such file or folder")
    if problems:
        raise DataError("; ".join(problems))
    return _unique_names(items)


def _unique_names(items: List[PredictItem]) -> List[PredictItem]:
    """Rename items whose outputs would overwrite another item's (suffix ``_2``, ``_3``, ...)."""
    claimed: Set[str] = set()
    result = []
    for item in items:
        relative, n = item.relative, 1
        while True:
            names = {(relative.parent / (relative.name + s)).as_posix().lower()
                     for s in OUTPUT_SUFFIXES}
            if not names & claimed:
                break
            n += 1
            relative = item.relative.with_name(f"{item.relative.name}_{n}")
        if relative != item.relative:
            print(f"knet predict: note: {item.path} is written as {relative.as_posix()}.png "
                  f"({item.relative.as_posix()}.png is taken by another input)", file=sys.stderr)
        claimed |= names
        result.append(PredictItem(item.path, relative))
    return result


# --------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or globs (quote them: 'photos/*.jpg')")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the outputs")
    options.add_model(parser)
    options.add_weights(parser, required=True)
    options.add_overrides(parser)
    options.add_test_pipeline(parser)
    options.add_device(parser)
    options.add_threads(parser)
    options.add_compile(parser)
    options.add_quiet(parser)
    parser.add_argument("--opacity", type=float, default=0.5, metavar="X",
                        help="weight of the class colours in the overlays, 0..1 (default 0.5)")
    parser.add_argument("--save-probs", action="store_true",
                        help="semantic models: also write the class probabilities as <stem>.npy, float32 (C, H, W)")
    parser.add_argument("--score-thr", type=float, default=0.3, metavar="X",
                        help="instance models: the lowest score of the instances written and drawn (default 0.3)")


def _build_segmenter(args: argparse.Namespace):
    from ..inference.segmenter import Segmenter

    if args.compile and options.checkpoint_is_onnx(args):
        raise KnetError("--compile applies to torch models, not to an .onnx --checkpoint")
    return Segmenter(options.load_weights(args), device=args.device, mode=args.mode, tta=args.tta,
                     test_scale=args.test_scale, crop_size=args.crop_size, stride=args.stride,
                     batch_size=args.batch_size, score_thr=args.score_thr, compile=args.compile)


allocator_setting = options.inference_allocator


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.opacity <= 1.0:
        raise KnetError(f"--opacity must be between 0 and 1, got {args.opacity}")
    options.check_positive("batch-size", args.batch_size)
    options.check_positive("threads", args.threads)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KnetError(f"--out-dir {out_dir}: exists and is not a folder")
    items = expand_inputs(args.inputs, out_dir)  # every input error before the model is loaded
    refuse_overwriting_inputs(
        [("--out-dir", item.base(out_dir).with_name(item.base(out_dir).name + suffix))
         for item in items for suffix in OUTPUT_SUFFIXES],
        [item.path for item in items] + [args.checkpoint])
    options.set_torch_threads(args)
    if not 0.0 <= args.score_thr <= 1.0:
        raise KnetError(f"--score-thr must be between 0 and 1, got {args.score_thr}")
    segmenter = _build_segmenter(args)
    if args.save_probs and not segmenter.task.has_probabilities:
        raise KnetError(f"--save-probs: a {segmenter.task.name} model has no per-class probabilities to save "
                        "(it writes segments: <stem>.json)")
    if not args.quiet:
        print(f"knet predict: {len(items)} image{'s' if len(items) != 1 else ''} with {segmenter}", file=sys.stderr)
    failures = predict(segmenter, items, out_dir, opacity=args.opacity, save_probs=args.save_probs,
                       progress=False if args.quiet else None)
    written = len(items) - len(failures)
    extra = " and probabilities (<stem>.npy)" if args.save_probs else ""
    print(f"wrote {written} image{'s' if written != 1 else ''}: {segmenter.task.output_files}{extra}, to {out_dir}")
    if failures:
        print(f"knet predict: {len(failures)} image{'s' if len(failures) != 1 else ''} failed:", file=sys.stderr)
        for path, message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0

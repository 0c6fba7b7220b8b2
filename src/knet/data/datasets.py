"""Datasets: ADE20K in the reference's layout, and a simple folder layout for users' own data.

Both give items ``dict(image, label, image_path, label_path)``:

- ``image``: uint8 (H, W, 3) RGB (see :func:`knet.data.io.read_image`);
- ``label``: uint8 (H, W) class indices, ``ignore_index`` (255 unless given) where not evaluated,
  or None when the dataset has no labels;
- ``image_path``, ``label_path``: str (``label_path`` None without labels).

Loading an item validates it: a label value that is neither a class nor the ignore value, or an image and
label of different sizes, raise :class:`knet.errors.DataError` naming the files, so that
``knet test`` can stop at (or, with ``--skip-bad``, skip) exactly that item.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..config import IGNORE_INDEX
from ..errors import DataError
from .ade20k import ade20k_class_names, ade20k_palette
from .coco import CocoInstanceDataset, CocoPanopticDataset, detect_coco_kind
from .io import IMAGE_SUFFIXES, read_image, read_label
from .palette import default_palette

# Labels are stored as uint8: at most 255 classes besides the ignore value.
MAX_CLASSES = 255


def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The reference's ``reduce_zero_label``: value 0 ("other") becomes the ignore value and
    every other value is shifted down by one; the ignore value stays. Returns int64 (H, W)."""
    label = label.astype(np.int64)
    reduced = label - 1
    reduced[(label == 0) | (label == ignore_index)] = ignore_index
    return reduced


class SegmentationDataset:
    """Base of the datasets: a list of (image, label) files, class names and a palette.

    Subclasses fill ``self.samples`` (list of (image_path, label_path or None)),
    ``self._class_names``, ``self._palette`` and ``self.reduce_zero_label``.
    """

    name = "dataset"

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.samples: List[tuple] = []
        self._class_names: List[str] = []
        self._palette: List[List[int]] = []
        self.reduce_zero_label = False
        # The label value of pixels that are not evaluated (the model config's data.ignore_index).
        self.ignore_index = int(ignore_index)

    # ---- metadata ------------------------------------------------------------------------
    @property
    def class_names(self) -> List[str]:
        return list(self._class_names)

    @property
    def palette(self) -> List[List[int]]:
        """RGB colour per class, ``[[r, g, b], ...]``."""
        return [list(c) for c in self._palette]

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def has_labels(self) -> bool:
        return any(label_path is not None for _, label_path in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    # ---- loading -------------------------------------------------------------------------
    def load_image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB image of item ``index``."""
        return read_image(self.samples[index][0])

    def load_label(self, index: int) -> Optional[np.ndarray]:
        """uint8 (H, W) label of item ``index`` (reduced when the dataset says so, values
        checked), or None when the item has no label."""
        label_path = self.samples[index][1]
        if label_path is None:
            return None
        raw = read_label(label_path)
        if raw.dtype.kind == "i" and (raw < 0).any():  # signed 16/32-bit label files
            raise DataError(f"{label_path}: negative label value {int(raw[raw < 0].flat[0])}")
        label = reduce_zero_label(raw, self.ignore_index) if self.reduce_zero_label else raw
        bad = (label >= self.num_classes) & (label != self.ignore_index)
        if bad.any():
            value = int(label[bad].flat[0])
            file_value = value + 1 if self.reduce_zero_label else value
            reduced = f" ({value} after reduce-zero-label)" if self.reduce_zero_label else ""
            raise DataError(
                f"{label_path}: label value {file_value}{reduced} is neither a class "
                f"(0..{self.num_classes - 1}) nor {self.ignore_index} (ignore)"
            )
        return label.astype(np.uint8)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        image_path, label_path = self.samples[index]
        image = self.load_image(index)
        label = self.load_label(index)
        if label is not None and label.shape != image.shape[:2]:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label "
                f"{label_path} is {label.shape[1]}x{label.shape[0]} (width x height)"
            )
        return {
            "image": image,
            "label": label,
            "image_path": str(image_path),
            "label_path": None if label_path is None else str(label_path),
        }

    def relative_name(self, index: int) -> str:
        """Path of item ``index``'s image relative to its split folder (for output names)."""
        return self.samples[index][0].name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.num_classes} classes)"


def _list_images(folder: Path, suffixes: Sequence[str], recursive: bool) -> List[Path]:
    """Image files under ``folder`` with one of ``suffixes`` (any case), sorted; hidden files
    skipped."""
    pattern = "**/*" if recursive else "*"
    files = [
        p for p in folder.glob(pattern)
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    ]
    return sorted(files)


class ADE20KDataset(SegmentationDataset):
    """ADE20K (SceneParsing ADEChallengeData2016), the reference's layout::

        ROOT/images/{training,validation}/*.jpg
        ROOT/annotations/{training,validation}/*.png   (same names; 0 = "other")

    Args:
        root: the folder holding ``images/`` and ``annotations/``, or its parent containing
            ``ADEChallengeData2016``.
        split: ``training`` or ``validation`` (``train`` and ``val`` are accepted too).

    Labels are reduced as in the reference: file value 0 becomes 255 (ignored) and every other
    value moves down by one, giving the 150 classes of :mod:`knet.data.ade20k`.
    """

    name = "ade20k"
    SPLIT_ALIASES = {"train": "training", "val": "validation"}

    def __init__(self, root: os.PathLike, split: str = "validation", ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(ignore_index)
        self.root = self._find_root(Path(root))
        self.split = self.SPLIT_ALIASES.get(split, split)
        self.reduce_zero_label = True
        self._class_names = ade20k_class_names()
        self._palette = ade20k_palette()
        image_dir = self.root / "images" / self.split
        label_dir = self.root / "annotations" / self.split
        if not image_dir.is_dir():
            raise DataError(
                f"missing split folder {image_dir}: expected the ADE20K images of split "
                f"{self.split!r} there (splits: training, validation)"
            )
        if not label_dir.is_dir():
            raise DataError(f"missing label folder {label_dir}: expected the .png annotations of split {self.split!r}")
        # The reference lists the .jpg files recursively, sorted, and finds each label at the
        # same relative path with a .png suffix.
        images = _list_images(image_dir, (".jpg",), recursive=True)
        if not images:
            raise DataError(f"no .jpg images in {image_dir} (expected ADE20K images such as ADE_val_00000001.jpg)")
        self.image_dir, self.label_dir = image_dir, label_dir
        self.samples = [(p, label_dir / p.relative_to(image_dir).with_suffix(".png")) for p in images]

    @staticmethod
    def _find_root(root: Path) -> Path:
        for candidate in (root, root / "ADEChallengeData2016"):
            if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
                return candidate
        raise DataError(
            f"{root}: not an ADE20K folder; expected images/ and annotations/ in it "
            "(the ADEChallengeData2016 folder) or in its ADEChallengeData2016 subfolder"
        )

    def relative_name(self, index: int) -> str:
        return self.samples[index][0].relative_to(self.image_dir).as_posix()

    def load_label(self, index: int) -> Optional[np.ndarray]:
        label_path = self.samples[index][1]
        if not label_path.exists():
            raise DataError(f"missing label {label_path} for image {self.samples[index][0]}")
        return super().load_label(index)


class FolderDataset(SegmentationDataset):
    """Users' own data in a simple folder layout::

        ROOT/classes.txt            one class name per line (their number is num_classes)
        ROOT/palette.txt            optional: "r g b" per line, one line per class
        ROOT/images/{split}/*       .jpg .jpeg .png .bmp .tif .tiff .webp
        ROOT/masks/{split}/*.png    class index per pixel, 255 = ignore; matched by file stem

    Masks may be grayscale (8 or 16 bit) or palette PNGs (their indices are the classes). Without
    a ``masks/{split}`` folder the dataset has no labels (fine for prediction, not evaluation);
    with one, every image needs its mask.

    Args:
        root: the dataset folder.
        split: the subfolder of ``images/`` and ``masks/`` (e.g. ``train``, ``val``).
        reduce_zero_label: masks where 0 means "ignore": 0 becomes 255 and every other value
            moves down by one (as for ADE20K).
    """

    name = "folder"

    def __init__(self, root: os.PathLike, split: str = "val", reduce_zero_label: bool = False,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(ignore_index)
        self.root = Path(root)
        self.split = split
        self.reduce_zero_label = bool(reduce_zero_label)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        self._class_names = self._read_classes(self.root / "classes.txt")
        palette_file = self.root / "palette.txt"
        if palette_file.exists():
            self._palette = self._read_palette(palette_file, self.num_classes)
        else:
            self._palette = [list(colour) for colour in default_palette(self.num_classes)]

        image_dir = self.root / "images" / split
        mask_dir = self.root / "masks" / split
        if not image_dir.is_dir():
            raise DataError(f"missing split folder {image_dir}: expected the images of split {split!r} there")
        images = _list_images(image_dir, IMAGE_SUFFIXES, recursive=False)
        if not images:
            raise DataError(f"no images in {image_dir} (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
        by_stem: Dict[str, Path] = {}
        for path in images:
            if path.stem in by_stem:
                raise DataError(
                    f"two images with the stem {path.stem!r} ({by_stem[path.stem].name}, {path.name}) "
                    f"in {image_dir}: masks are matched by stem, so stems must be unique"
                )
            by_stem[path.stem] = path
        self.image_dir, self.mask_dir = image_dir, mask_dir if mask_dir.is_dir() else None
        self.samples = [
            (path, (mask_dir / f"{path.stem}.png") if self.mask_dir is not None else None) for path in images
        ]

    @staticmethod
    def _read_classes(path: Path) -> List[str]:
        if not path.is_file():
            raise DataError(f"missing {path}: expected one class name per line")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read class names ({err})") from None
        names: List[str] = []
        for number, line in enumerate(lines, 1):
            name = line.strip()
            if not name:
                continue
            if name in names:
                raise DataError(f"{path}:{number}: class name {name!r} appears twice")
            names.append(name)
        if not names:
            raise DataError(f"{path}: no class names (expected one per line)")
        if len(names) > MAX_CLASSES:
            raise DataError(
                f"{path}: {len(names)} classes; at most {MAX_CLASSES} are supported "
                f"(labels are stored as 8-bit values, 255 being the ignore value)"
            )
        return names

    @staticmethod
    def _read_palette(path: Path, num_classes: int) -> List[List[int]]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read palette ({err})") from None
        palette = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.replace(",", " ").split()
            try:
                colour = [int(p) for p in parts]
            except ValueError:
                colour = []
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise DataError(f"{path}:{number}: expected 'r g b' with values 0..255, got {line.strip()!r}")
            palette.append(colour)
        if len(palette) != num_classes:
            raise DataError(f"{path}: {len(palette)} colours for {num_classes} classes (classes.txt); "
                            "expected one per class")
        return palette

    def load_label(self, index: int) -> Optional[np.ndarray]:
        image_path, label_path = self.samples[index]
        if label_path is not None and not label_path.exists():
            raise DataError(f"missing mask {label_path} for image {image_path}")
        return super().load_label(index)


DATASETS: Dict[str, Any] = {
    "ade20k": ADE20KDataset,
    "folder": FolderDataset,
    "coco_panoptic": CocoPanopticDataset,
    "coco_instance": CocoInstanceDataset,
}


def detect_dataset_kind(root: os.PathLike, preferred: Sequence[str] = ()) -> str:
    """The layout of ``root``: ``folder`` when it holds ``classes.txt``; ``coco_panoptic`` /
    ``coco_instance`` when ``annotations/`` holds COCO json files (a root with both: the first of
    ``preferred``, the kinds the model's task reads, that it holds); ``ade20k`` when it holds
    ``annotations/`` or ``ADEChallengeData2016/``; otherwise a DataError saying what was expected."""
    root = Path(root)
    if (root / "classes.txt").is_file():
        return "folder"
    coco = detect_coco_kind(root)
    if coco:
        chosen = [kind for kind in preferred if kind in coco]
        if chosen:
            return chosen[0]
        if len(coco) == 1:
            return coco[0]
        raise DataError(f"{root}: holds both COCO panoptic and instance annotations; pass --dataset "
                        f"{' or '.join(coco)}")
    if (root / "annotations").is_dir() or (root / "ADEChallengeData2016").is_dir():
        return "ade20k"
    raise DataError(f"{root}: neither a folder dataset (expected classes.txt, images/, masks/), COCO (expected "
                    "annotations/panoptic_<split>.json or instances_<split>.json) nor ADE20K (expected annotations/ "
                    "and images/, or ADEChallengeData2016/); pass --dataset to say which")


def build_dataset(kind: str, root: os.PathLike, split: Optional[str] = None, **kwargs: Any) -> Any:
    """The dataset of ``kind`` (``ade20k``, ``folder``, ``coco_panoptic`` or ``coco_instance``) at ``root``.

    ``split`` defaults to the evaluation split (``validation`` for ADE20K, ``val`` for a folder
    dataset, ``val2017`` for COCO); ``kwargs`` go to the class (``ignore_index``;
    ``reduce_zero_label`` for ``folder``; ``filter_empty_gt`` for COCO).
    """
    if kind not in DATASETS:
        raise DataError(f"unknown dataset kind {kind!r}; valid: {', '.join(DATASETS)}")
    cls = DATASETS[kind]
    if split is not None:
        kwargs["split"] = split
    try:
        inspect.signature(cls).bind(root, **kwargs)
    except TypeError as err:
        raise DataError(f"dataset {kind!r}: {err}") from None
    return cls(root, **kwargs)

"""``knet.Segmenter``: segment images in three lines of Python.

    import knet
    segmenter = knet.Segmenter("knet-r50-fcn", checkpoint="knet_s3_fcn_r50-d8.pth")
    result = segmenter("room.jpg")          # result.labels, result.classes, result.overlay()

A segmenter runs exactly the pipeline of ``knet test`` and ``knet predict``
(:class:`knet.inference.pipeline.TestPipeline`: keep-ratio resize to the test scale, normalise,
whole-image or sliding-window forward, logits resized to the original size; optionally
multi-scale + flip). It takes image paths, RGB numpy arrays, PIL images, or lists of them, and
returns :class:`SegmentationResult` objects.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, overload

import numpy as np

from ..config import KNetConfig
from ..errors import KnetError
from .pipeline import as_runner, is_torch_module, softmax_numpy

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = Union[PathLike, np.ndarray, Any]  # Any: a PIL.Image.Image (Pillow is imported lazily)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassShare:
    """A class present in a label map and the fraction of the pixels it covers (0..1)."""

    index: int
    name: str
    fraction: float
    colour: Tuple[int, int, int]


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 label maps for up to 255 classes, uint16 beyond (as ``knet predict`` writes them)."""
    return np.dtype(np.uint8 if num_classes <= 255 else np.uint16)


def class_shares(labels: np.ndarray, class_names: Sequence[str],
                 palette: Sequence[Sequence[int]]) -> List[ClassShare]:
    """The classes present in ``labels`` with their pixel fractions, largest first (ties by index)."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(class_names))
    total = max(int(labels.size), 1)
    present = [int(i) for i in np.flatnonzero(counts)]
    present.sort(key=lambda i: (-int(counts[i]), i))
    return [ClassShare(index=i, name=_name(class_names, i), fraction=float(counts[i]) / total,
                       colour=_colour(palette, i)) for i in present]


def _name(class_names: Sequence[str], index: int) -> str:
    return str(class_names[index]).strip() if index < len(class_names) else f"class_{index}"


def _colour(palette: Sequence[Sequence[int]], index: int) -> Tuple[int, int, int]:
    if not palette:
        return (0, 0, 0)
    r, g, b = palette[index % len(palette)][:3]
    return int(r), int(g), int(b)


class SegmentationResult:
    """The segmentation of one image.

    Attributes:
        labels: (H, W) class index per pixel at the image's original size (uint8; uint16 when the
            model has more than 255 classes).
        image: the (H, W, 3) uint8 RGB image that was segmented.
        source: the file it was read from, or None for arrays and PIL images.
        class_names, palette: names and RGB colours of the model's classes.
    """

    def __init__(self, image: np.ndarray, scores: Any, scores_are_probabilities: bool,
                 class_names: Sequence[str], palette: Sequence[Sequence[int]],
                 source: Optional[str] = None) -> None:
        self.image = image
        self.source = source
        self.class_names = list(class_names)
        self.palette = [list(c) for c in palette]
        self._scores = scores  # (C, H, W) float32: a torch CPU tensor, or numpy (ONNX Runtime)
        self._scores_are_probabilities = scores_are_probabilities
        self.labels: np.ndarray = np.asarray(scores.argmax(axis=0)).astype(label_dtype(scores.shape[0]))
        self._classes: Optional[List[ClassShare]] = None

    @property
    def num_classes(self) -> int:
        return int(self._scores.shape[0])

    @property
    def classes(self) -> List[ClassShare]:
        """The classes present, largest pixel fraction first."""
        if self._classes is None:
            self._classes = class_shares(self.labels, self.class_names, self.palette)
        return self._classes

    def probabilities(self) -> np.ndarray:
        """Class probabilities, float32 (C, H, W): the softmax of the logits, or with
        multi-scale + flip the mean of the views' probabilities. Their argmax is ``labels``."""
        if isinstance(self._scores, np.ndarray):
            return self._scores if self._scores_are_probabilities else softmax_numpy(self._scores)
        if self._scores_are_probabilities:
            return self._scores.numpy()
        return self._scores.softmax(dim=0).numpy()

    def colorized(self) -> np.ndarray:
        """The label map in the palette's colours, uint8 (H, W, 3) RGB."""
        from .visualize import colorize

        return colorize(self.labels, self.palette)

    def overlay(self, opacity: float = 0.5, legend: bool = True, pil: bool = False) -> Any:
        """The image blended with the palette colours of its labels.

        Args:
            opacity: weight of the colours (0: the image only, 1: the colours only).
            legend: add a panel at the right naming the classes present, largest first, with
                their colours and pixel percentages.
            pil: return a ``PIL.Image.Image`` instead of a uint8 (H, W', 3) RGB array.
        """
        from .visualize import overlay as blend

        if not 0.0 <= opacity <= 1.0:
            raise KnetError(f"opacity must be between 0 and 1, got {opacity}")
        picture = blend(self.image, self.labels, self.palette, opacity)
        if legend:
            picture = add_legend(picture, self.classes)
        if pil:
            from PIL import Image

            return Image.fromarray(picture)
        return picture

    def write(self, base: Path, opacity: float = 0.5, save_probs: bool = False) -> List[Path]:
        """Write ``<base>.png`` (the label map), ``<base>_overlay.png`` (with a legend) and with
        ``save_probs`` ``<base>.npy`` (float32 (C, H, W) probabilities), each atomically."""
        from ..data.io import write_image
        from ..utils.atomic import atomic_write

        paths = [base.with_name(base.name + ".png"), base.with_name(base.name + "_overlay.png")]
        write_image(paths[0], self.labels)
        write_image(paths[1], self.overlay(opacity=opacity, legend=True))
        if save_probs:
            paths.append(base.with_name(base.name + ".npy"))
            probabilities = self.probabilities().astype(np.float32, copy=False)
            atomic_write(paths[2], lambda f: np.save(f, probabilities))
        return paths

    def __repr__(self) -> str:
        top = ", ".join(f"{c.name} {100 * c.fraction:.1f}%" for c in self.classes[:5])
        more = f", +{len(self.classes) - 5} more" if len(self.classes) > 5 else ""
        where = f"{self.source}: " if self.source else ""
        return f"<SegmentationResult {where}{self.labels.shape[1]}x{self.labels.shape[0]}, {top}{more}>"


# --------------------------------------------------------------------------------------------
# Legend
# --------------------------------------------------------------------------------------------
def add_legend(picture: np.ndarray, classes: Sequence[ClassShare], max_entries: int = 40) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 RGB with a legend panel appended at its right: a colour swatch,
    the class name and its pixel percentage for each of ``classes`` (at most ``max_entries``, the
    rest summarised in one line). The panel grows the canvas downwards when it is taller than the
    picture; the picture's pixels are left unchanged at the top left."""
    import cv2

    height, width = picture.shape[:2]
    scale = float(np.clip(height / 700.0, 0.35, 1.0))
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    entries = [(c.colour, f"{c.name} {100 * c.fraction:.1f}%") for c in classes[:max_entries]]
    if len(classes) > max_entries:
        rest = sum(c.fraction for c in classes[max_entries:])
        entries.append(((255, 255, 255), f"+{len(classes) - max_entries} more {100 * rest:.1f}%"))
    (_, text_h), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    line = text_h + baseline + max(4, int(8 * scale))
    swatch = text_h + baseline
    margin = max(4, int(10 * scale))
    text_w = max([cv2.getTextSize(text, font, scale, thickness)[0][0] for _, text in entries] or [0])
    panel_w = margin * 3 + swatch + text_w
    panel_h = margin * 2 + line * len(entries)
    canvas = np.full((max(height, panel_h), width + panel_w, 3), 255, dtype=np.uint8)
    canvas[:height, :width] = picture
    for row, (colour, text) in enumerate(entries):
        top = margin + row * line
        x0 = width + margin
        cv2.rectangle(canvas, (x0, top), (x0 + swatch, top + swatch), tuple(int(v) for v in colour), -1)
        cv2.rectangle(canvas, (x0, top), (x0 + swatch, top + swatch), (0, 0, 0), 1)
        cv2.putText(canvas, text, (x0 + swatch + margin, top + text_h), font, scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return canvas


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def to_rgb_array(image: Any) -> np.ndarray:
    """An image given as a numpy array or PIL image -> uint8 (H, W, 3) RGB.

    Arrays: uint8 (H, W, 3) RGB as is; (H, W) grayscale and (H, W, 1) replicated to three
    channels; (H, W, 4) RGBA loses its alpha. PIL images of any mode are converted to RGB.
    """
    if isinstance(image, np.ndarray):
        array = image
    elif hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        array = np.asarray(image.convert("RGB"))
    else:
        raise KnetError(f"cannot segment a {type(image).__name__}: give a file path, a uint8 RGB "
                        "numpy array or a PIL image")
    if array.dtype != np.uint8:
        raise KnetError(f"image arrays must be uint8 RGB, got dtype {array.dtype} "
                        "(convert with (x * 255).clip(0, 255).astype(np.uint8) for 0..1 floats)")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise KnetError(f"image arrays must be (H, W, 3) RGB, (H, W) grayscale or (H, W, 4) RGBA; "
                        f"got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[..., :3]
    return np.ascontiguousarray(array)


def load_input(item: ImageInput) -> Tuple[np.ndarray, Optional[str]]:
    """``(uint8 RGB array, source path or None)`` of one input; files are read with
    :func:`knet.data.io.read_image` (the reference's decoding), which raises DataError naming a
    missing or corrupt file."""
    if isinstance(item, (str, os.PathLike)):
        from ..data.io import read_image

        return read_image(item), os.fspath(item)
    return to_rgb_array(item), None


# --------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------
class Segmenter:
    """A model and the test pipeline, ready to segment images.

    Args:
        model: a preset name (with ``checkpoint``), a ``KNet`` module (used as it is: its own
            weights and device unless ``device`` is given), None when ``checkpoint`` carries
            its config (a native directory or a knet training checkpoint), or a model runner
            (``config``, ``device``, ``__call__``; e.g. the ONNX Runtime one of :meth:`from_onnx`),
            used as it is.
        checkpoint: a reference ``.pth``, a knet training checkpoint or a native directory.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        mode: ``whole`` (K-Net's setting) or ``slide``; ``crop_size``/``stride`` (width, height)
            for ``slide``.
        tta: multi-scale + flip (the results table's "ms+flip" protocol).
        test_scale: (width, height) the images are resized to fit; default the model's.
        batch_size: images per forward; images of equal size share a forward, which gives
            exactly the batch-of-one result.
        score_thr: instance models: the lowest score an instance needs to be shown and written
            (mmdetection's display default, 0.3).
        overrides: config overrides when building ``model`` from a name.
        compile: run a torch model through ``torch.compile`` (Inductor, frozen weights): each new
            input size compiles once (tens of seconds for a full-size model), later calls of that
            size are faster; for long runs.

    A torch model runs as an inference copy made here (BatchNorms folded into the convolutions):
    the model you pass is not changed, and changing it later does not change this segmenter.

    Calling it on one input returns a result (semantic models: :class:`SegmentationResult`;
    panoptic and instance models: :class:`~knet.inference.mask_results.PanopticSegmentationResult`,
    :class:`~knet.inference.mask_results.InstanceSegmentationResult`); on a list, a list. A semantic
    result keeps its class scores for :meth:`SegmentationResult.probabilities` (C x H x W floats);
    for many images use :meth:`stream`, which yields the results one at a time.
    """

    def __init__(self, model: Union[str, Any, None] = None, checkpoint: Optional[PathLike] = None, *,
                 device: Optional[str] = None, mode: str = "whole", tta: bool = False,
                 test_scale: Optional[Tuple[int, int]] = None, crop_size: Optional[Tuple[int, int]] = None,
                 stride: Optional[Tuple[int, int]] = None, batch_size: int = 1, score_thr: float = 0.3,
                 overrides: Optional[Dict[str, Any]] = None, compile: bool = False) -> None:
        from ..tasks import get_task

        if not 0.0 <= float(score_thr) <= 1.0:
            raise KnetError(f"score threshold must be between 0 and 1, got {score_thr}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise KnetError(f"batch size must be a positive integer, got {batch_size!r}")
        if _is_model_runner(model):
            # A runner (ONNX Runtime's, say) is used as it is, and without torch: its config was
            # completed when it was written.
            if checkpoint is not None:
                raise KnetError("a model runner holds its own weights: leave checkpoint out")
            if compile:
                raise KnetError("compile applies to torch models, not to a model runner")
            self.model = model
            self.config: KNetConfig = model.config
            runner = model
        else:
            self.model = self._torch_model(model, checkpoint, device, overrides)
            from ..checkpoint import with_class_meta

            self.config = with_class_meta(self.model.config)
            runner = as_runner(self.model, compile=compile)  # an inference copy: self.model stays as it is
        self.batch_size = batch_size
        self.score_thr = float(score_thr)
        self.task = get_task(self.config.task)
        self.pipeline = self.task.pipeline(runner, mode=mode, crop_size=crop_size, stride=stride,
                                           test_scale=test_scale, tta=tta)

    @staticmethod
    def _torch_model(model: Any, checkpoint: Optional[PathLike], device: Optional[str],
                     overrides: Optional[Dict[str, Any]]) -> Any:
        """The torch model of the constructor's arguments, on its device, in eval mode."""
        from ..checkpoint import load_model
        from ..utils.device import resolve_device

        if is_torch_module(model):
            if checkpoint is not None:
                from ..checkpoint import load_checkpoint

                load_checkpoint(model, checkpoint)
            module = model
        elif checkpoint is not None:
            if model is not None and not isinstance(model, str):
                raise KnetError(f"model must be a preset name or a KNet module, got {type(model).__name__}")
            module = load_model(checkpoint, model, overrides)
        elif isinstance(model, str):
            raise KnetError(f"Segmenter({model!r}) needs weights: pass checkpoint=PATH (a reference "
                            ".pth, a knet checkpoint or a native directory); for random weights on "
                            f"purpose pass knet.build_model({model!r})")
        else:
            raise KnetError("Segmenter needs a model: a preset name with checkpoint=PATH, a checkpoint "
                            "that carries its config, or a KNet module")
        if device is not None or not is_torch_module(model):
            module = module.to(resolve_device(device or "auto"))
        return module.eval()

    @classmethod
    def from_pretrained(cls, directory: PathLike, **kwargs: Any) -> "Segmenter":
        """A segmenter of a native directory (``model.safetensors`` + ``config.json``, as written by
        ``knet convert`` or ``knet.save_pretrained``); keyword arguments as for the constructor."""
        from ..checkpoint import from_pretrained

        overrides = kwargs.pop("overrides", None) or {}
        model = from_pretrained(directory, **overrides)
        kwargs.setdefault("device", "auto")
        return cls(model, **kwargs)

    @classmethod
    def from_onnx(cls, path: PathLike, *, device: Optional[str] = None, threads: Optional[int] = None,
                  **kwargs: Any) -> "Segmenter":
        """A segmenter of a file written by ``knet export --format onnx``, run by ONNX Runtime
        (:class:`~knet.inference.onnx_runner.OnnxRunner`; the config comes from the file).

        ``device``: ``auto`` (ONNX Runtime's CUDA provider when it has one, else the CPU), ``cpu``,
        ``cuda`` or ``cuda:N``; ``threads``: its CPU threads (default torch's number). Other keyword
        arguments as for the constructor (``mode``, ``tta``, ``test_scale``, ``batch_size`` ...).
        """
        from .onnx_runner import OnnxRunner

        if "checkpoint" in kwargs or "overrides" in kwargs:
            raise KnetError("an ONNX file holds its weights and config: checkpoint and overrides do not apply")
        return cls(OnnxRunner(path, device=device or "auto", threads=threads), **kwargs)

    # ---- properties ----------------------------------------------------------------------
    @property
    def class_names(self) -> List[str]:
        return list(self.config.class_names or [])

    @property
    def palette(self) -> List[List[int]]:
        return [list(c) for c in (self.config.palette or [])]

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    @property
    def device(self) -> Any:
        return self.pipeline.device

    # ---- segmenting ----------------------------------------------------------------------
    def segment_arrays(self, images: Sequence[np.ndarray],
                       sources: Optional[Sequence[Optional[str]]] = None) -> List[SegmentationResult]:
        """Segment uint8 RGB arrays in one call of the test pipeline (no further batching)."""
        if not images:
            return []
        sources = list(sources) if sources is not None else [None] * len(images)
        return self.task.results(self.pipeline, list(images), sources, self.config, score_thr=self.score_thr)

    def stream(self, inputs: Iterable[ImageInput]) -> Iterator[SegmentationResult]:
        """Yield one result per input, in order, reading and segmenting ``batch_size`` at a time.
        Raises DataError at the first file that cannot be read (naming it)."""
        pending: List[Tuple[np.ndarray, Optional[str]]] = []
        for item in inputs:
            pending.append(load_input(item))
            if len(pending) == self.batch_size:
                yield from self.segment_arrays([p[0] for p in pending], [p[1] for p in pending])
                pending = []
        if pending:
            yield from self.segment_arrays([p[0] for p in pending], [p[1] for p in pending])

    @overload
    def __call__(self, inputs: List[ImageInput]) -> List[SegmentationResult]: ...

    @overload
    def __call__(self, inputs: ImageInput) -> SegmentationResult: ...

    def __call__(self, inputs: Any) -> Any:
        """Segment a path, an RGB numpy array or a PIL image (-> one result), or a list or tuple
        of them (-> a list of results, in order)."""
        if isinstance(inputs, (list, tuple)):
            return list(self.stream(inputs))
        return next(self.stream([inputs]))

    def __repr__(self) -> str:
        p = self.pipeline
        extra = ", tta" if p.tta else ""
        return (f"Segmenter({self.config.name}, {self.config.task}, {self.num_classes} classes, {p.mode}{extra}, "
                f"test scale {p.test_scale[0]}x{p.test_scale[1]}, device {self.device})")



def _is_model_runner(model: Any) -> bool:
    """A model runner (``config``, ``device``, callable) that is not a torch module."""
    return (not isinstance(model, str) and not is_torch_module(model) and callable(model)
            and hasattr(model, "config") and hasattr(model, "device"))


__all__ = ["ClassShare", "SegmentationResult", "Segmenter", "add_legend", "class_shares", "label_dtype",
           "load_input", "to_rgb_array"]

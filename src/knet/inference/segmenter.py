"""``knet.Segmenter``: segment images in three lines of Python.

    import knet
    segmenter = knet.Segmenter("knet-r50-fcn", checkpoint="knet_s3_fcn_r50-d8.pth")
    result = segmenter("room.jpg")          # result.labels, result.classes, result.overlay()

A segmenter runs exactly the pipeline of ``knet test`` and ``knet predict``
(:class:`knet.inference.pipeline.TestPipeline`: keep-ratio resize to the test scale, normalise,
whole-image or sliding-window forward, logits resized to the original size; optionally
multi-scale + flip). It takes image paths, RGB numpy arrays, PIL images, or lists of them, and
returns one :class:`~knet.inference.results.SegmentationResult` per image, of the model's task.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, overload

import numpy as np

from ..config import KNetConfig
from ..errors import KnetError
from ..tasks import get_task
from ..data.video import Frame
from .pipeline import as_runner, is_torch_module
from .results import SegmentationResult

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = Union[PathLike, np.ndarray, Any]  # Any: a PIL.Image.Image (Pillow is imported lazily)
VideoSource = Union[PathLike, int]  # a video file or URL, a camera index


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
            its config or only one preset fits it, or a model runner (``config``, ``device``,
            ``__call__``; e.g. the ONNX Runtime one :func:`knet.load` gives for an ``.onnx`` file),
            used as it is.
        checkpoint: any source of :func:`knet.load`: a reference ``.pth``, a knet training
            checkpoint, a native directory or an ``.onnx`` file of ``knet export`` (run in ONNX
            Runtime); loaded into ``model`` when that is a module (:func:`knet.load_checkpoint`).
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        mode: ``whole`` (K-Net's setting) or ``slide``; ``crop_size``/``stride`` (width, height)
            for ``slide``.
        tta: multi-scale + flip (the results table's "ms+flip" protocol).
        test_scale: (width, height) the images are resized to fit; default the model's.
        batch_size: images per forward; images of equal size share a forward, which gives the
            batch-of-one result up to float rounding (labels can differ at near-ties).
        score_thr: instance models: the lowest score an instance needs to be shown and written
            (mmdetection's display default, 0.3).
        overrides: config overrides when building ``model`` from a name.
        compile: run a torch model through ``torch.compile`` (Inductor, frozen weights): each new
            input size compiles once (tens of seconds for a full-size model), later calls of that
            size are faster; for long runs.
        flush_denormals: on the CPU, treat denormal floats as zero during each forward (restored
            afterwards): a trained model's softmaxes produce them, and matrix products slow down on
            them by up to a hundred times.
        precision: ``"fp32"`` (default), ``"bf16"`` (CPUs with AMX or AVX512-BF16, recent GPUs)
            or ``"fp16"`` (GPUs): the format of the convolutions and matrix products
            (:mod:`knet.utils.precision`); refused, with the reason, where the device lacks it.

    A torch model runs as an inference copy made here (BatchNorms folded into the convolutions):
    the model you pass is not changed, and changing it later does not change this segmenter.

    Calling it on one input returns a :class:`~knet.inference.results.SegmentationResult` of the
    model's task (:class:`~knet.inference.results.SemanticResult`,
    :class:`~knet.inference.results.PanopticResult` or :class:`~knet.inference.results.InstanceResult`);
    on a list, a list. A semantic result keeps its class scores for
    :meth:`~knet.inference.results.SemanticResult.probabilities` (C x H x W floats); for many images
    use :meth:`stream`, which yields the results one at a time.
    """

    def __init__(self, model: Union[str, Any, None] = None, checkpoint: Optional[PathLike] = None, *,
                 device: Optional[str] = None, mode: str = "whole", tta: bool = False,
                 test_scale: Optional[Tuple[int, int]] = None, crop_size: Optional[Tuple[int, int]] = None,
                 stride: Optional[Tuple[int, int]] = None, batch_size: int = 1, score_thr: float = 0.3,
                 overrides: Optional[Dict[str, Any]] = None, compile: bool = False,
                 flush_denormals: bool = True, precision: str = "fp32") -> None:
        if not 0.0 <= float(score_thr) <= 1.0:
            raise KnetError(f"score threshold must be between 0 and 1, got {score_thr}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise KnetError(f"batch size must be a positive integer, got {batch_size!r}")
        if checkpoint is not None and (model is None or isinstance(model, str)):
            from .loading import load

            model, checkpoint = load(checkpoint, model, device=device or "auto", overrides=overrides), None
        if _is_model_runner(model):
            # A runner (ONNX Runtime's, say) is used as it is, and without torch: its config was
            # completed when it was written.
            if checkpoint is not None:
                raise KnetError("a model runner holds its own weights: leave checkpoint out")
            runner = as_runner(model, compile=compile, precision=precision)
            self.model = model
            self.config: KNetConfig = model.config
        else:
            self.model = self._torch_model(model, checkpoint, device, overrides)
            from ..checkpoint import with_class_meta

            self.config = with_class_meta(self.model.config)
            # an inference copy: self.model stays as it is
            runner = as_runner(self.model, compile=compile, flush_denormals=flush_denormals, precision=precision)
        self.batch_size = batch_size
        self.score_thr = float(score_thr)
        self.task = get_task(self.config.task)
        self.pipeline = self.task.pipeline(runner, mode=mode, crop_size=crop_size, stride=stride,
                                           test_scale=test_scale, tta=tta)

    @staticmethod
    def _torch_model(model: Any, checkpoint: Optional[PathLike], device: Optional[str],
                     overrides: Optional[Dict[str, Any]]) -> Any:
        """The torch model of the constructor's arguments, on its device, in eval mode."""
        from ..utils.device import resolve_device

        if is_torch_module(model):
            if checkpoint is not None:
                from ..checkpoint import load_checkpoint

                load_checkpoint(model, checkpoint)
            module = model
        elif isinstance(model, str):
            raise KnetError(f"Segmenter({model!r}) needs weights: pass checkpoint=PATH (a reference "
                            ".pth, a knet checkpoint, a native directory or an .onnx file); for random "
                            f"weights on purpose pass knet.build_model({model!r})")
        elif model is not None:
            raise KnetError(f"model must be a preset name, a KNet module or a model runner, got {type(model).__name__}")
        else:
            raise KnetError("Segmenter needs a model: a preset name with checkpoint=PATH, a checkpoint "
                            "that carries its config, or a KNet module")
        if device is not None or not is_torch_module(model):
            module = module.to(resolve_device(device or "auto"))
        return module.eval()

    @classmethod
    def from_pretrained(cls, source: PathLike, model: Optional[str] = None, *, device: Optional[str] = None,
                        overrides: Optional[Dict[str, Any]] = None, threads: Optional[int] = None,
                        **kwargs: Any) -> "Segmenter":
        """A segmenter of any weights :func:`knet.load` reads: a reference ``.pth`` (``model``: the
        preset, when the shapes of several fit), a knet training checkpoint, a native directory
        (as ``knet convert`` or ``knet.save_pretrained`` write it) or an ``.onnx`` file of
        ``knet export`` (run in ONNX Runtime, ``threads`` its CPU threads). Other keyword
        arguments as for the constructor."""
        from .loading import load

        loaded = load(source, model, device=device or "auto", overrides=overrides, threads=threads)
        return cls(loaded, device=device, **kwargs)

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

    def stream(self, source: Union[VideoSource, Iterable[Any]], batch_size: Optional[int] = None, every: int = 1, *,
               start: Optional[float] = None, end: Optional[float] = None,
               max_frames: Optional[int] = None) -> Iterator[SegmentationResult]:
        """Yield one result per frame or image of ``source``, in order, segmenting ``batch_size``
        (default the segmenter's) at a time, without holding more than a few batches in memory.

        Args:
            source: a video file (a path: anything OpenCV's decoder opens), a camera (an ``int``
                index or ``"camera:N"``), a stream URL (``rtsp://``, ``http(s)://``), a
                :class:`knet.data.video.VideoReader`, or any iterable of images (paths, uint8 RGB
                arrays, PIL images; a generator is read as it goes).
            batch_size: frames per forward; frames of equal size share one (the batch-of-one
                results, up to float rounding in the order a batch's sums are taken).
            every: keep every N-th frame or item (video frames keep their index in the video).
            start: videos only: the first second to segment.
            end: videos only: the second to stop at (frames with ``start <= t < end``).
            max_frames: stop after this many frames or items.

        Each result has ``frame_index`` (the frame's index in the video, or the item's position
        in the iterable) and ``timestamp`` (seconds from the video's start; None for iterables).
        Frames are read and decoded in a background thread, a couple of batches ahead of the
        model. Raises DataError at the first file that cannot be read (naming it), or after the
        last good frame of a video that breaks off (naming the frame).
        """
        from ..utils.background import prefetch

        size = self.batch_size if batch_size is None else batch_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise KnetError(f"batch size must be a positive integer, got {size!r}")
        frames = _frames(source, every, start, end, max_frames)
        yield from self._segment_frames(prefetch(frames, 2 * size, name="knet-frames"), size)

    def _segment_frames(self, frames: Iterable[Frame], batch_size: int) -> Iterator[SegmentationResult]:
        """Results of ``frames``, ``batch_size`` at a time, with their frame index and timestamp."""
        pending: List[Frame] = []

        def flush() -> List[SegmentationResult]:
            results = self.segment_arrays([f.image for f in pending], [f.source for f in pending])
            for frame, result in zip(pending, results):
                result.frame_index, result.timestamp = frame.index, frame.timestamp
            pending.clear()
            return results

        iterator = iter(frames)
        while True:
            try:
                frame = next(iterator)
            except StopIteration:
                break
            except KnetError:  # a video that breaks off: the frames before the break come first
                if pending:
                    yield from flush()
                raise
            pending.append(frame)
            if len(pending) == batch_size:
                yield from flush()
        if pending:
            yield from flush()

    @overload
    def __call__(self, inputs: Union[List[ImageInput], Tuple[ImageInput, ...]]) -> List[SegmentationResult]: ...

    @overload
    def __call__(self, inputs: ImageInput) -> SegmentationResult: ...

    def __call__(self, inputs: Any) -> Any:
        """Segment a path, an RGB numpy array or a PIL image (-> one result), or a list or tuple
        of them (-> a list of results, in order)."""
        if isinstance(inputs, (list, tuple)):
            return list(self._segment_frames(_frames(inputs), self.batch_size))
        return next(self._segment_frames(_frames([inputs]), self.batch_size))

    def __repr__(self) -> str:
        p = self.pipeline
        extra = ", tta" if p.tta else ""
        return (f"Segmenter({self.config.name}, {self.config.task}, {self.num_classes} classes, {p.mode}{extra}, "
                f"test scale {p.test_scale[0]}x{p.test_scale[1]}, device {self.device})")



def _frames(source: Any, every: int = 1, start: Optional[float] = None, end: Optional[float] = None,
            max_frames: Optional[int] = None) -> Iterator[Frame]:
    """The frames of a stream's ``source`` (see :meth:`Segmenter.stream`), read as they are needed."""
    from ..data.video import VideoReader

    if isinstance(source, (str, os.PathLike, int)) and not isinstance(source, bool):
        source = VideoReader(source, every=every, start=start, end=end, max_frames=max_frames)
    elif isinstance(source, VideoReader):
        if (every, start, end, max_frames) != (1, None, None, None):
            raise KnetError("give every, start, end and max_frames to the VideoReader itself")
    elif start is not None or end is not None:
        raise KnetError("start and end apply to videos (a path, a camera or a URL), not to an iterable of images")
    if isinstance(source, VideoReader):
        yield from source
        return
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise KnetError(f"every must be a positive integer, got {every!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise KnetError(f"max_frames must be a positive integer, got {max_frames!r}")
    kept = 0
    for position, item in enumerate(source):
        if max_frames is not None and kept >= max_frames:
            return
        if position % every:
            continue
        kept += 1
        if isinstance(item, Frame):
            yield item
        else:
            image, path = load_input(item)
            yield Frame(position, None, image, path)


def _is_model_runner(model: Any) -> bool:
    """A model runner (``config``, ``device``, callable) that is not a torch module."""
    return (not isinstance(model, str) and not is_torch_module(model) and callable(model)
            and hasattr(model, "config") and hasattr(model, "device"))


__all__ = ["Segmenter", "load_input", "to_rgb_array"]

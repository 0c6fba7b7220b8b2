"""The one test pipeline behind ``knet test``, ``knet predict``, ``Segmenter`` and ``evaluate``.

For uint8 RGB images of any size (the reference's test pipeline, step by step):

1. keep-ratio resize (OpenCV bilinear, uint8) to fit the test scale, (2048, 512) by default;
2. normalise ((x - mean) / std, RGB, float32);
3. ``model.inference`` (whole image or sliding window) -> logits at the resized size;
4. logits resized to the original size (bilinear, align_corners=False) -> (C, H, W);
5. the label map is their argmax.

Multi-scale + flip (``tta=True``): for each ratio r (0.5 ... 1.75) the image is resized to fit the
test scale times r, ``(int(W r), int(H r))``, and run with and without a horizontal flip (of the
resized uint8 image); each view's logits are resized to the original size, softmaxed and flipped
back, and the 12 views averaged -> class probabilities (C, H, W).

Batching never pads a model input: K-Net's kernel update assembles group features by summing over
every pixel, so padding would change the result. Images whose resized sizes are equal are stacked
into one batch instead, which gives the batch-of-one result up to float rounding (a batch's
convolutions may sum in another order, so labels can differ at near-ties).

A runner that ``takes_numpy`` (the ONNX Runtime one) runs the same steps on numpy arrays: step 4
is OpenCV's bilinear resize (the same half-pixel sampling as torch's, align_corners=False), and
the pipeline imports no torch.
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..config import KNetConfig
from ..data.transforms import Size, normalize, resize_keep_ratio, scaled
from ..errors import KnetError
from ..utils.precision import check_precision, precision_name

MODES = ("whole", "slide")


def is_torch_module(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch: a module cannot exist
    before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


class TorchRunner:
    """The model-runner interface of the test pipelines, for a torch model.

    A runner has ``config`` (the model's config), ``device`` (where inputs go) and
    ``__call__(x, mode="whole", crop_size=None, stride=None)``: normalised float32 images
    (N, 3, h, w) on ``device`` -> what the model's ``inference`` gives, in float32: a semantic
    model's logits (N, C, h, w) at the input size; a panoptic/instance model's last-stage class
    logits (N, K, C) and stride-4 mask logits (N, K, h/4, w/4) (``h``, ``w`` multiples of 32). A
    compiled model or another runtime plugs into :class:`TestPipeline` and
    :class:`~knet.inference.mask_pipeline.MaskTestPipeline`, and so into ``knet test``,
    ``knet predict`` and ``Segmenter``, by providing the same three things.

    The runner runs an inference copy of ``model`` made when it is built
    (:func:`knet.models.fuse.inference_copy`: eval mode, BatchNorms folded into their
    convolutions, no gradients; on the CPU with Winograd 3x3 convolutions; channels-last for
    ResNet backbones, and its inputs made so), so the
    caller's model is never changed, and neither is the process (for glibc's allocator setting,
    which the CLI verbs opt into, see :mod:`knet.utils.memory`). On the CPU each call flushes
    denormal floats to zero on torch's threads and restores their mode afterwards
    (:func:`knet.utils.float_modes.flush_denormals`; ``flush_denormals=False`` turns it off): a
    trained model's softmaxes produce denormals, and matrix products slow down on them by up to a
    hundred times. ``compile=True`` runs
    the copy's ``inference`` through ``torch.compile`` (Inductor, with frozen weights): the first
    call of each input shape compiles (tens of seconds for a full-size model), later ones reuse it.
    ``precision`` (:mod:`knet.utils.precision`): ``"bf16"`` / ``"fp16"`` run the convolutions and
    matrix products under autocast in that format (the copy's weights stored in it, channels-last);
    refused where the device has no native support. Outputs are float32 in every precision.
    """

    takes_numpy = False

    def __init__(self, model: Any, compile: bool = False, flush_denormals: bool = True,
                 precision: str = "fp32") -> None:
        import torch

        from ..models.fuse import inference_copy, prefers_channels_last
        from ..utils.device import module_device

        self.config: KNetConfig = model.config
        self.precision = precision_name(precision)
        self.compute_dtype = check_precision(self.precision, module_device(model))
        self.channels_last = prefers_channels_last(model, self.compute_dtype)
        self.model = inference_copy(model, compute_dtype=self.compute_dtype, channels_last=self.channels_last)
        self.flush_denormals = bool(flush_denormals)
        self.compiled = bool(compile)
        self._inference = self.model.inference
        if self.compiled:
            self._inference = torch.compile(self.model.inference, options={"freezing": True})

    @property
    def device(self) -> Any:
        from ..utils.device import module_device

        return module_device(self.model)

    def __call__(self, x: Any, mode: str = "whole", crop_size: Optional[Tuple[int, int]] = None,
                 stride: Optional[Tuple[int, int]] = None) -> Any:
        import torch

        from ..utils.float_modes import flush_denormals

        device = self.device
        on_cpu = device.type == "cpu"
        autocast = (torch.autocast(device.type, dtype=self.compute_dtype) if self.compute_dtype is not None
                    else nullcontext())
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), flush_denormals(self.flush_denormals and on_cpu), autocast:
            out = self._inference(x, mode=mode, crop_size=crop_size, stride=stride)
        return tuple(t.float() for t in out) if isinstance(out, tuple) else out.float()


def as_runner(model: Any, compile: bool = False, flush_denormals: bool = True, precision: str = "fp32") -> Any:
    """A torch model wrapped as a :class:`TorchRunner`; a runner (ONNX Runtime's, say) is returned
    as it is, and ``compile`` or a ``precision`` other than fp32 for it is an error."""
    if is_torch_module(model):
        return TorchRunner(model, compile=compile, flush_denormals=flush_denormals, precision=precision)
    if compile:
        raise KnetError("compile applies to torch models, not to a model runner")
    if precision_name(precision) != "fp32":
        raise KnetError(f"precision {precision} applies to torch models, not to a model runner "
                        "(an .onnx file keeps the precision it was exported in)")
    return model


class TestPipeline:
    """The reference's test pipeline for a model (see the module docstring).

    Args:
        model: a ``KNet`` (run where its parameters are, in eval mode; its train/eval flag is
            restored afterwards) or a model runner (see :class:`TorchRunner`).
        mode: ``whole`` (the reference's K-Net setting) or ``slide``.
        crop_size, stride: sliding-window crop and step, (width, height); default the config's
            crop and two thirds of it.
        test_scale: (width, height) to fit; default the config's ``data.test_scale``.
        tta: multi-scale + flip over ``tta_ratios`` (default the config's).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, model: Any, mode: str = "whole", crop_size: Optional[Size] = None,
                 stride: Optional[Size] = None, test_scale: Optional[Size] = None, tta: bool = False,
                 tta_ratios: Optional[Sequence[float]] = None) -> None:
        if mode not in MODES:
            raise KnetError(f"inference mode {mode!r} is not one of: {', '.join(MODES)}")
        self.runner = as_runner(model)
        self.model = model
        self.numpy = bool(getattr(self.runner, "takes_numpy", False))
        data = self.runner.config.data
        self.mode = mode
        self.crop_size: Size = tuple(crop_size) if crop_size is not None else tuple(data.crop_size)
        self.stride: Size = (tuple(stride) if stride is not None
                             else (max(1, self.crop_size[0] * 2 // 3), max(1, self.crop_size[1] * 2 // 3)))
        self.test_scale: Size = tuple(test_scale) if test_scale is not None else tuple(data.test_scale)
        self.tta = bool(tta)
        self.tta_ratios = tuple(tta_ratios) if tta_ratios is not None else tuple(data.tta_ratios)
        self.mean, self.std = tuple(data.mean), tuple(data.std)
        self.align_corners = bool(getattr(self.runner.config, "align_corners", False))
        for name, size in (("crop size", self.crop_size), ("stride", self.stride), ("test scale", self.test_scale)):
            if len(size) != 2 or min(size) <= 0:
                raise KnetError(f"{name} must be two positive integers (width, height), got {size}")
        if self.tta and not self.tta_ratios:
            raise KnetError("multi-scale + flip needs at least one ratio")

    @property
    def device(self) -> Any:
        return self.runner.device

    # ---- public ----------------------------------------------------------------------------
    def scores(self, images: Sequence[np.ndarray]) -> List[Any]:
        """Per image float32 (C, H, W) at its original size: logits, or with ``tta`` the mean
        class probabilities of the 12 views. Torch tensors on the model's device, or numpy
        arrays for a runner that ``takes_numpy``."""
        check_images(images)
        with self._no_grad():
            if self.tta:
                return self._tta_scores(images)
            return self._logits(images, self.test_scale, flip=False, softmax=False)

    def predict(self, images: Sequence[np.ndarray]) -> List[Any]:
        """Per image the int64 (H, W) label map (argmax of :meth:`scores`): a torch tensor on the
        model's device, or a numpy array for a runner that ``takes_numpy``."""
        return [s.argmax(axis=0) for s in self.scores(images)]

    __call__ = predict

    # ---- steps -----------------------------------------------------------------------------
    def _no_grad(self) -> Any:
        if self.numpy:
            return nullcontext()
        import torch

        return torch.no_grad()

    def _run(self, batch: np.ndarray) -> Any:
        """uint8 (B, h, w, 3) RGB -> logits (B, C, h, w) at that size."""
        x = normalize(batch, self.mean, self.std)
        if not self.numpy:
            import torch

            x = torch.from_numpy(x).to(self.device)
        crop = (self.crop_size[1], self.crop_size[0])  # the model takes (h, w)
        stride = (self.stride[1], self.stride[0])
        return self.runner(x, self.mode, crop, stride)

    def _logits(self, images: Sequence[np.ndarray], scale: Size, flip: bool,
                softmax: bool) -> List[Any]:
        """Each image keep-ratio resized to fit ``scale`` and run (see :meth:`_views`)."""
        resized = [resize_keep_ratio(image, scale) for image in images]
        return self._views(resized, [image.shape[:2] for image in images], flip, softmax)

    def _views(self, resized: Sequence[np.ndarray], sizes: Sequence[Tuple[int, int]], flip: bool,
               softmax: bool) -> List[Any]:
        """Resized uint8 images, optionally flipped, run in batches of equal size; the outputs
        resized back to the original ``sizes`` (H, W) (and softmaxed, flipped back).
        Returns one (C, H, W) tensor per image, in input order."""
        outputs: List[Optional[Any]] = [None] * len(resized)
        for indices in _group_by_size(resized).values():
            batch = np.stack([resized[i] for i in indices])
            if flip:
                batch = batch[:, :, ::-1]
            logits = self._run(np.ascontiguousarray(batch))
            to_original = _to_original_numpy if self.numpy else _to_original_torch
            for row, i in enumerate(indices):
                outputs[i] = to_original(logits[row:row + 1], sizes[i], flip, softmax, self.align_corners)
        return outputs  # type: ignore[return-value]

    def _tta_scores(self, images: Sequence[np.ndarray]) -> List[Any]:
        """Mean probabilities over every ratio, unflipped then flipped (the reference's order of
        summation)."""
        totals: List[Optional[Any]] = [None] * len(images)
        sizes = [image.shape[:2] for image in images]
        views = 0
        for ratio in self.tta_ratios:
            scale = scaled(self.test_scale, ratio)
            resized = [resize_keep_ratio(image, scale) for image in images]
            for flip in (False, True):
                views += 1
                for i, probs in enumerate(self._views(resized, sizes, flip=flip, softmax=True)):
                    if totals[i] is None:
                        totals[i] = probs
                    else:
                        totals[i] += probs  # in place (torch and numpy alike)
        return [t / views for t in totals]  # type: ignore[operator]


def _to_original_torch(logits: Any, size: Tuple[int, int], flip: bool, softmax: bool,
                       align_corners: bool) -> Any:
    """(1, C, h, w) torch -> (C, H, W): bilinear resize to ``size`` (H, W), softmax, flip back."""
    import torch.nn.functional as F

    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)
    out = logits[0]
    if softmax:
        out = out.softmax(dim=0)
    if flip:
        out = out.flip(-1)
    return out


def _to_original_numpy(logits: np.ndarray, size: Tuple[int, int], flip: bool, softmax: bool,
                       align_corners: bool) -> np.ndarray:
    """(1, C, h, w) numpy -> (C, H, W), as :func:`_to_original_torch`: OpenCV's bilinear resize
    samples at half-pixel centres, torch's with align_corners=False, which every K-Net config uses."""
    if align_corners:
        raise KnetError("the numpy pipeline resizes with align_corners=False; this config asks for True")
    out = logits[0]
    if tuple(out.shape[-2:]) != tuple(size):
        # OpenCV resizes (h, w, channels) images of up to 4 channels.
        hwc = np.ascontiguousarray(out.transpose(1, 2, 0))
        parts = [cv2.resize(hwc[:, :, c:c + 4], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                 for c in range(0, hwc.shape[2], 4)]
        parts = [p[:, :, None] if p.ndim == 2 else p for p in parts]
        out = np.concatenate(parts, axis=2).transpose(2, 0, 1)
    if softmax:
        out = softmax_numpy(out)
    if flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def softmax_numpy(scores: np.ndarray) -> np.ndarray:
    """The softmax over the first axis (classes) of float32 (C, ...) scores."""
    out = np.exp(scores - scores.max(axis=0, keepdims=True))
    out /= out.sum(axis=0, keepdims=True)
    return out


def _group_by_size(images: Sequence[np.ndarray]) -> Dict[Tuple[int, int], List[int]]:
    """Indices of ``images`` grouped by (H, W), groups in order of first appearance."""
    groups: Dict[Tuple[int, int], List[int]] = OrderedDict()
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[:2]), []).append(i)
    return groups


def check_images(images: Sequence[np.ndarray]) -> None:
    """A one-line KnetError for anything that is not a uint8 (H, W, 3) RGB array."""
    for i, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0):
            described = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                         else type(image).__name__)
            raise KnetError(f"image {i}: expected a uint8 (H, W, 3) RGB array, got a {described}")

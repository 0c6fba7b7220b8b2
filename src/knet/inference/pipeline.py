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
into one batch instead, which gives exactly the batch-of-one result.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KnetError
from ..data.transforms import Size, resize_keep_ratio, scaled

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
MODES = ("whole", "slide")


def resolve_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """The torch device for a ``--device`` value.

    ``auto`` picks CUDA when available, then Apple's MPS, then the CPU. ``cuda``, ``cuda:N`` and
    ``mps`` fail with a clear message when that device is not available.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise KnetError("device 'mps' requested but Apple's MPS backend is not available here")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise KnetError(f"device {name!r} requested but CUDA is not available here (use --device cpu)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KnetError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise KnetError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


class TestPipeline:
    """The reference's test pipeline for a model (see the module docstring).

    Args:
        model: a ``KNet`` (anything with ``config.data`` and ``inference(x, mode, crop_size,
            stride)``); it runs where its parameters are, in eval mode (its train/eval flag is
            restored afterwards).
        mode: ``whole`` (the reference's K-Net setting) or ``slide``.
        crop_size, stride: sliding-window crop and step, (width, height); default the config's
            crop and two thirds of it.
        test_scale: (width, height) to fit; default the config's ``data.test_scale``.
        tta: multi-scale + flip over ``tta_ratios`` (default the config's).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, model: nn.Module, mode: str = "whole", crop_size: Optional[Size] = None,
                 stride: Optional[Size] = None, test_scale: Optional[Size] = None, tta: bool = False,
                 tta_ratios: Optional[Sequence[float]] = None) -> None:
        if mode not in MODES:
            raise KnetError(f"inference mode {mode!r} is not one of: {', '.join(MODES)}")
        data = model.config.data
        self.model = model
        self.mode = mode
        self.crop_size: Size = tuple(crop_size) if crop_size is not None else tuple(data.crop_size)
        self.stride: Size = (tuple(stride) if stride is not None
                             else (max(1, self.crop_size[0] * 2 // 3), max(1, self.crop_size[1] * 2 // 3)))
        self.test_scale: Size = tuple(test_scale) if test_scale is not None else tuple(data.test_scale)
        self.tta = bool(tta)
        self.tta_ratios = tuple(tta_ratios) if tta_ratios is not None else tuple(data.tta_ratios)
        self.mean = torch.tensor(data.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(data.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.align_corners = bool(getattr(model.config, "align_corners", False))
        for name, size in (("crop size", self.crop_size), ("stride", self.stride), ("test scale", self.test_scale)):
            if len(size) != 2 or min(size) <= 0:
                raise KnetError(f"{name} must be two positive integers (width, height), got {size}")
        if self.tta and not self.tta_ratios:
            raise KnetError("multi-scale + flip needs at least one ratio")

    @property
    def device(self) -> torch.device:
        return _model_device(self.model)

    # ---- public ----------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, images: Sequence[np.ndarray]) -> List[torch.Tensor]:
        """Per image float32 (C, H, W) at its original size, on the model's device: logits, or
        with ``tta`` the mean class probabilities of the 12 views."""
        _check_images(images)
        was_training = self.model.training
        self.model.eval()
        try:
            if self.tta:
                return self._tta_scores(images)
            return self._logits(images, self.test_scale, flip=False, softmax=False)
        finally:
            self.model.train(was_training)

    def predict(self, images: Sequence[np.ndarray]) -> List[torch.Tensor]:
        """Per image the int64 (H, W) label map (argmax of :meth:`scores`), on the model's device."""
        return [s.argmax(dim=0) for s in self.scores(images)]

    __call__ = predict

    # ---- steps -----------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (B, h, w, 3) RGB -> logits (B, C, h, w) at that size."""
        device = self.device
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float()
        x = (x - self.mean.to(device)) / self.std.to(device)
        crop = (self.crop_size[1], self.crop_size[0])  # the model takes (h, w)
        stride = (self.stride[1], self.stride[0])
        return self.model.inference(x, mode=self.mode, crop_size=crop, stride=stride).float()

    def _logits(self, images: Sequence[np.ndarray], scale: Size, flip: bool,
                softmax: bool) -> List[torch.Tensor]:
        """Each image keep-ratio resized to fit ``scale`` and run (see :meth:`_views`)."""
        resized = [resize_keep_ratio(image, scale) for image in images]
        return self._views(resized, [image.shape[:2] for image in images], flip, softmax)

    def _views(self, resized: Sequence[np.ndarray], sizes: Sequence[Tuple[int, int]], flip: bool,
               softmax: bool) -> List[torch.Tensor]:
        """Resized uint8 images, optionally flipped, run in batches of equal size; the outputs
        resized back to the original ``sizes`` (H, W) (and softmaxed, flipped back).
        Returns one (C, H, W) tensor per image, in input order."""
        outputs: List[Optional[torch.Tensor]] = [None] * len(resized)
        for indices in _group_by_size(resized).values():
            batch = np.stack([resized[i] for i in indices])
            if flip:
                batch = batch[:, :, ::-1]
            logits = self._run(np.ascontiguousarray(batch))
            for row, i in enumerate(indices):
                outputs[i] = self._to_original(logits[row:row + 1], sizes[i], flip, softmax)
        return outputs  # type: ignore[return-value]

    def _to_original(self, logits: torch.Tensor, size: Tuple[int, int], flip: bool,
                     softmax: bool) -> torch.Tensor:
        """(1, C, h, w) -> (C, H, W): bilinear resize to ``size`` (H, W), softmax, flip back."""
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)
        out = logits[0]
        if softmax:
            out = out.softmax(dim=0)
        if flip:
            out = out.flip(-1)
        return out

    def _tta_scores(self, images: Sequence[np.ndarray]) -> List[torch.Tensor]:
        """Mean probabilities over every ratio, unflipped then flipped (the reference's order of
        summation)."""
        totals: List[Optional[torch.Tensor]] = [None] * len(images)
        sizes = [image.shape[:2] for image in images]
        views = 0
        for ratio in self.tta_ratios:
            scale = scaled(self.test_scale, ratio)
            resized = [resize_keep_ratio(image, scale) for image in images]
            for flip in (False, True):
                views += 1
                for i, probs in enumerate(self._views(resized, sizes, flip=flip, softmax=True)):
                    totals[i] = probs if totals[i] is None else totals[i].add_(probs)
        return [t / views for t in totals]  # type: ignore[operator]


def _group_by_size(images: Sequence[np.ndarray]) -> Dict[Tuple[int, int], List[int]]:
    """Indices of ``images`` grouped by (H, W), groups in order of first appearance."""
    groups: Dict[Tuple[int, int], List[int]] = OrderedDict()
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[:2]), []).append(i)
    return groups


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0):
            described = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                         else type(image).__name__)
            raise KnetError(f"image {i}: expected a uint8 (H, W, 3) RGB array, got a {described}")


def inference(model: nn.Module, images: Sequence[np.ndarray], *, mode: str = "whole",
              crop_size: Optional[Size] = None, stride: Optional[Size] = None,
              test_scale: Optional[Size] = None, tta: bool = False) -> List[torch.Tensor]:
    """Functional form of :meth:`TestPipeline.scores`: per image (C, H, W) logits (or
    multi-scale + flip probabilities with ``tta``) at its original size."""
    pipeline = TestPipeline(model, mode=mode, crop_size=crop_size, stride=stride,
                            test_scale=test_scale, tta=tta)
    return pipeline.scores(images)


def predict_labels(model: nn.Module, image: np.ndarray, *, device: Union[str, torch.device, None] = None,
                   mode: str = "whole", tta: bool = False, test_scale: Optional[Size] = None) -> np.ndarray:
    """The label map, int64 (H, W) numpy, of one uint8 (H, W, 3) RGB image with the test pipeline.

    ``device``: run there (the model is moved when it is elsewhere); None: where the model is.
    """
    if device is not None:
        model.to(resolve_device(device))
    pipeline = TestPipeline(model, mode=mode, test_scale=test_scale, tta=tta)
    return pipeline.predict([image])[0].cpu().numpy()

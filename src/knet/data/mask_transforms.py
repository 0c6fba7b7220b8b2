"""Data transforms of K-Net's panoptic and instance models: the official mmdet 2.x pipelines.

Test (every det config)::

    Resize(img_scale=(1333, 800), keep_ratio=True)   mmcv.imrescale: cv2 bilinear on the uint8 image
    Normalize(mean, std, to_rgb=True)                 -> float32 (3, h, w)
    Pad(size_divisor=32)                              0 after normalising, at the bottom/right

Train::

    Resize(img_scale=(1333, 800), keep_ratio=True)                               (1x)
    Resize(img_scale=[(1333, 640), (1333, 800)], multiscale_mode='range', ...)   (ms-3x)
    RandomFlip(flip_ratio=0.5)                                                   horizontal
    Normalize, Pad(size_divisor=32)   masks padded with 0, the semantic map with 255

then mmdet's collate pads every image of a batch to the batch's largest (H, W) (images with 0, the
semantic map with 255) and K-Net pads the masks to it (with 0) before bringing them to stride 4
(:func:`knet.losses.batch_targets`). The semantic maps' 255 is ``seg_pad_value``, the model config's
``data.ignore_index``.

Keep-ratio resizing scales by ``min(long_max / long_side, short_max / short_side)`` (upscaling
small images too) to ``int(side * factor + 0.5)``; images are resized as uint8 with OpenCV's
bilinear (its fixed-point result, which the official goldens reproduce bit-exactly), masks and
semantic maps with OpenCV's nearest neighbour (mmdet's ``BitmapMasks.rescale`` / ``imrescale``).
Shapes are ``(height, width)`` here, as mmdet's ``img_shape``; scales are mmdet's ``(long, short)``
pairs. Randomness comes only from the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from .transforms import keep_ratio_size, normalize

__all__ = [
    "DET_MEAN",
    "DET_STD",
    "MaskBatch",
    "MaskSample",
    "MaskTrainTransform",
    "SIZE_DIVISOR",
    "TEST_SCALE",
    "TRAIN_SCALES_1X",
    "TRAIN_SCALES_MS_3X",
    "TestInput",
    "collate_mask_samples",
    "pad_bottom_right",
    "padded_shape",
    "prepare_test_image",
    "rescale_image",
    "rescale_masks",
    "rescale_shape",
    "sample_scale",
    "stack_padded",
]

Shape = Tuple[int, int]  # (height, width)
Scale = Tuple[int, int]  # mmdet img_scale: (long edge, short edge) bounds, in either order

# img_norm_cfg of the det configs (RGB).
DET_MEAN = (123.675, 116.28, 103.53)
DET_STD = (58.395, 57.12, 57.375)
TEST_SCALE: Scale = (1333, 800)
TRAIN_SCALES_1X: Tuple[Scale, ...] = ((1333, 800),)
TRAIN_SCALES_MS_3X: Tuple[Scale, ...] = ((1333, 640), (1333, 800))
SIZE_DIVISOR = 32
# Default padding of the semantic maps: their ignore value (the model config's data.ignore_index).
SEG_PAD_VALUE = 255


# --------------------------------------------------------------------------------------------
# Resizing and padding (shared by the test pipeline and training)
# --------------------------------------------------------------------------------------------
def rescale_shape(height: int, width: int, scale: Scale) -> Shape:
    """(new_height, new_width) of mmcv's keep-ratio ``imrescale`` of a ``height`` x ``width``
    image to fit ``scale``: factor ``min(max(scale) / long_side, min(scale) / short_side)``,
    each side ``int(side * factor + 0.5)``."""
    new_width, new_height = keep_ratio_size(width, height, scale)
    return new_height, new_width


def rescale_image(image: np.ndarray, scale: Scale) -> np.ndarray:
    """Keep-ratio resize of a uint8 (H, W, 3) image to fit ``scale`` with OpenCV's bilinear
    (on the uint8 values, as mmcv: the result is uint8)."""
    height, width = rescale_shape(*image.shape[:2], scale)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def rescale_masks(masks: np.ndarray, shape: Shape) -> np.ndarray:
    """Nearest-neighbour resize of (K, H, W) masks (or a (H, W) map) to ``shape`` = (h, w), with
    OpenCV's nearest as mmdet's ``BitmapMasks.rescale`` / ``imrescale(interpolation='nearest')``."""
    height, width = shape
    if masks.ndim == 2:
        return cv2.resize(masks, (width, height), interpolation=cv2.INTER_NEAREST)
    if masks.shape[0] == 0:
        return np.zeros((0, height, width), dtype=masks.dtype)
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in masks])


def padded_shape(height: int, width: int, size_divisor: int = SIZE_DIVISOR) -> Shape:
    """The shape mmdet's ``Pad(size_divisor=d)`` gives: each side rounded up to a multiple of d."""
    return -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor


def pad_bottom_right(array: np.ndarray, shape: Shape, value: float = 0) -> np.ndarray:
    """Pad the last two axes of ``array`` (image (3, h, w), masks (K, h, w) or map (h, w)) at the
    bottom and right to ``shape`` = (H, W) with ``value``."""
    pad_h, pad_w = shape[0] - array.shape[-2], shape[1] - array.shape[-1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad an array of shape {array.shape} to {tuple(shape)}")
    if pad_h == 0 and pad_w == 0:
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
    return np.pad(array, widths, constant_values=value)


def stack_padded(arrays: Sequence[np.ndarray], value: float = 0) -> np.ndarray:
    """Stack arrays whose last two axes differ, each padded at the bottom/right to the largest
    (H, W) with ``value``: mmdet's collate of a batch (images 0, semantic maps 255)."""
    height = max(a.shape[-2] for a in arrays)
    width = max(a.shape[-1] for a in arrays)
    return np.stack([pad_bottom_right(a, (height, width), value) for a in arrays])


# --------------------------------------------------------------------------------------------
# Test
# --------------------------------------------------------------------------------------------
@dataclass
class TestInput:
    """One image through the test pipeline.

    Attributes:
        image: float32 (3, H, W) normalised RGB, 0 in the padding; H, W multiples of 32.
        ori_shape: (h, w) of the original image (results are resized back to it).
        img_shape: (h, w) of the resized image inside ``image``.
        pad_shape: (H, W) = ``image.shape[1:]``.
        scale_factor: (w_scale, h_scale) = resized / original size per axis.
    """

    __test__ = False  # not a pytest class

    image: np.ndarray
    ori_shape: Shape
    img_shape: Shape
    pad_shape: Shape
    scale_factor: Tuple[float, float]


def prepare_test_image(image: np.ndarray, scale: Scale = TEST_SCALE, mean: Sequence[float] = DET_MEAN,
                       std: Sequence[float] = DET_STD, size_divisor: int = SIZE_DIVISOR) -> TestInput:
    """The official test pipeline on a uint8 (H, W, 3) RGB image: keep-ratio resize to fit
    ``scale``, normalise, pad to a multiple of ``size_divisor`` with 0."""
    resized = rescale_image(image, scale)
    chw = normalize(resized, mean, std)
    img_shape = resized.shape[:2]
    pad_shape = padded_shape(*img_shape, size_divisor)
    return TestInput(image=pad_bottom_right(chw, pad_shape, 0.0), ori_shape=image.shape[:2], img_shape=img_shape,
                     pad_shape=pad_shape, scale_factor=(img_shape[1] / image.shape[1], img_shape[0] / image.shape[0]))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def sample_scale(rng: np.random.Generator, scales: Sequence[Scale], mode: str = "range") -> Scale:
    """The target scale of mmdet's ``Resize`` for one image.

    One scale is used as it is. ``range`` (``multiscale_mode='range'``) draws the long edge
    uniformly among the integers between the smallest and largest long edges, then the short edge
    likewise (for ms-3x: long 1333, short in 640..800); ``value`` picks one of ``scales``.
    Returns (long, short).
    """
    if len(scales) == 1:
        return max(scales[0]), min(scales[0])
    if mode == "range":
        if len(scales) != 2:
            raise ValueError(f"multiscale mode 'range' takes 2 scales, got {len(scales)}")
        longs = [max(s) for s in scales]
        shorts = [min(s) for s in scales]
        long_edge = int(rng.integers(min(longs), max(longs) + 1))
        short_edge = int(rng.integers(min(shorts), max(shorts) + 1))
        return long_edge, short_edge
    if mode == "value":
        chosen = scales[int(rng.integers(len(scales)))]
        return max(chosen), min(chosen)
    raise ValueError(f"unknown multiscale mode {mode!r}; valid: range, value")


@dataclass
class MaskSample:
    """One training sample after the pipeline.

    Attributes:
        image: float32 (3, H, W) normalised, 0 in the padding; H, W multiples of 32.
        masks: uint8 (K, H, W) thing masks, 0 in the padding.
        labels: int64 (K,) thing labels.
        sem_seg: uint8 (H, W) semantic map, ``seg_pad_value`` in the padding (panoptic), or None
            (instance).
        img_shape: (h, w) of the resized image inside ``image``.
        flipped: whether the sample was flipped horizontally.
        scale_factor: (w_scale, h_scale) = resized / original size per axis.
        seg_pad_value: the semantic map's padding (its ignore value), which the collate continues.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    sem_seg: Optional[np.ndarray]
    img_shape: Shape
    flipped: bool
    scale_factor: Tuple[float, float]
    seg_pad_value: int = SEG_PAD_VALUE

    @property
    def pad_shape(self) -> Shape:
        return tuple(self.image.shape[1:])


class MaskTrainTransform:
    """The official training pipeline: ``transform(image, target, rng) -> MaskSample``.

    ``image`` is uint8 (H, W, 3) RGB; ``target`` any mapping with ``masks`` ((K, H, W) bool or
    0/1), ``labels`` ((K,) int) and ``sem_seg`` ((H, W) uint8 or None) -- a dataset item of
    :mod:`knet.data.coco` is one, so ``transform(item["image"], item, rng)`` works.

    Args:
        scales: mmdet ``img_scale``: one (long, short) pair (:data:`TRAIN_SCALES_1X`) or two for
            multi-scale training (:data:`TRAIN_SCALES_MS_3X`).
        multiscale_mode: ``range`` or ``value`` (see :func:`sample_scale`).
        flip_prob: probability of a horizontal flip.
        mean, std: normalisation (RGB).
        size_divisor: padding multiple.
        seg_pad_value: value of the semantic map's padding (its ignore value).

    Random draws happen in mmdet's order (scale, then flip).
    """

    def __init__(self, scales: Sequence[Scale] = TRAIN_SCALES_1X, multiscale_mode: str = "range",
                 flip_prob: float = 0.5, mean: Sequence[float] = DET_MEAN, std: Sequence[float] = DET_STD,
                 size_divisor: int = SIZE_DIVISOR, seg_pad_value: int = SEG_PAD_VALUE) -> None:
        self.scales = [tuple(int(v) for v in s) for s in scales]
        if not self.scales:
            raise ValueError("at least one training scale is needed")
        if multiscale_mode not in ("range", "value"):
            raise ValueError(f"unknown multiscale mode {multiscale_mode!r}; valid: range, value")
        self.multiscale_mode = multiscale_mode
        self.flip_prob = float(flip_prob)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.size_divisor = int(size_divisor)
        self.seg_pad_value = int(seg_pad_value)

    def __call__(self, image: np.ndarray, target: Mapping[str, Any], rng: np.random.Generator) -> MaskSample:
        masks = np.asarray(target["masks"]).astype(np.uint8)
        labels = np.asarray(target["labels"], dtype=np.int64)
        sem_seg = target.get("sem_seg")
        if masks.shape[1:] != image.shape[:2] or (sem_seg is not None and sem_seg.shape != image.shape[:2]):
            raise ValueError(f"image {image.shape[:2]}, masks {masks.shape[1:]} and semantic map "
                             f"{None if sem_seg is None else sem_seg.shape} must have the same (H, W)")

        scale = sample_scale(rng, self.scales, self.multiscale_mode)
        resized = rescale_image(image, scale)
        img_shape = resized.shape[:2]
        masks = rescale_masks(masks, img_shape)
        if sem_seg is not None:
            sem_seg = rescale_masks(np.asarray(sem_seg, dtype=np.uint8), img_shape)

        flipped = bool(rng.random() < self.flip_prob)
        if flipped:
            resized = resized[:, ::-1]
            masks = masks[:, :, ::-1]
            if sem_seg is not None:
                sem_seg = sem_seg[:, ::-1]

        pad_shape = padded_shape(*img_shape, self.size_divisor)
        chw = pad_bottom_right(normalize(np.ascontiguousarray(resized), self.mean, self.std), pad_shape, 0.0)
        masks = np.ascontiguousarray(pad_bottom_right(masks, pad_shape, 0))
        if sem_seg is not None:
            sem_seg = np.ascontiguousarray(pad_bottom_right(sem_seg, pad_shape, self.seg_pad_value))
        scale_factor = (img_shape[1] / image.shape[1], img_shape[0] / image.shape[0])
        return MaskSample(image=chw, masks=masks, labels=labels, sem_seg=sem_seg, img_shape=img_shape,
                          flipped=flipped, scale_factor=scale_factor, seg_pad_value=self.seg_pad_value)


@dataclass
class MaskBatch:
    """A collated training batch (tensors on the CPU).

    Attributes:
        images: float32 (B, 3, H, W), (H, W) the largest padded shape of the batch, 0 padding.
        masks: per image uint8 (K_i, H, W) thing masks, 0 padding.
        labels: per image int64 (K_i,).
        sem_seg: uint8 (B, H, W) semantic maps padded with their ignore value, or None (instance
            models).
        img_shapes: per image (h, w) of the resized image (the region without padding).
    """

    images: torch.Tensor
    masks: List[torch.Tensor]
    labels: List[torch.Tensor]
    sem_seg: Optional[torch.Tensor]
    img_shapes: List[Shape]

    @property
    def batch_shape(self) -> Shape:
        return tuple(self.images.shape[-2:])

    def to(self, device: Any) -> "MaskBatch":
        return MaskBatch(images=self.images.to(device), masks=[m.to(device) for m in self.masks],
                         labels=[t.to(device) for t in self.labels],
                         sem_seg=None if self.sem_seg is None else self.sem_seg.to(device),
                         img_shapes=list(self.img_shapes))


def collate_mask_samples(samples: Sequence[MaskSample], seg_pad_value: Optional[int] = None) -> MaskBatch:
    """Batch samples as mmdet's collate does: every image, mask and semantic map padded at the
    bottom/right to the batch's largest (H, W) (images and masks with 0, maps with
    ``seg_pad_value``, by default the samples' own ``seg_pad_value``)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if len({s.sem_seg is None for s in samples}) != 1:
        raise ValueError("either every sample of a batch has a semantic map or none has")
    if seg_pad_value is None:
        # The samples carry the transform's value, so the task's collate needs no config.
        values = {s.seg_pad_value for s in samples}
        if len(values) != 1:
            raise ValueError(f"the samples of a batch have different semantic map paddings {sorted(values)}")
        seg_pad_value = values.pop()
    images = stack_padded([s.image for s in samples], 0.0)
    shape = images.shape[-2:]
    masks = [torch.from_numpy(np.ascontiguousarray(pad_bottom_right(s.masks, shape, 0))) for s in samples]
    sem_seg = None
    if samples[0].sem_seg is not None:
        sem_seg = torch.from_numpy(np.stack([pad_bottom_right(s.sem_seg, shape, seg_pad_value) for s in samples]))
    return MaskBatch(images=torch.from_numpy(images), masks=masks,
                     labels=[torch.from_numpy(np.asarray(s.labels, dtype=np.int64)) for s in samples],
                     sem_seg=sem_seg, img_shapes=[tuple(s.img_shape) for s in samples])

"""The reference's data pipelines, with its exact semantics.

Training (mmsegmentation's ADE20K recipe)::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size=512x512, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    normalise (mean/std, RGB), then pad to the crop: image with 0 (in normalised space),
    label with the ignore value (255) -- the reference's data preprocessor pads after normalising.

Testing: keep-ratio resize to fit the test scale (2048, 512), normalise (the whole test pipeline
is :class:`knet.inference.pipeline.TestPipeline`).

Images are uint8 (H, W, 3) RGB arrays, labels integer (H, W) arrays, sizes ``(width, height)`` as
in :class:`knet.config.DataConfig`. Randomness comes only from the ``numpy.random.Generator``
passed in, so a pipeline run is reproducible from its seed. Resizing uses OpenCV (bilinear for
images, nearest for labels) so that resized pixels equal the reference's.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..config import IGNORE_INDEX, DataConfig

Size = Tuple[int, int]  # (width, height)


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------
def keep_ratio_size(width: int, height: int, scale: Size) -> Size:
    """The size the reference's keep-ratio resize gives an image of ``width`` x ``height``.

    The image is scaled by the largest factor that keeps its long side within ``max(scale)`` and
    its short side within ``min(scale)``: ``factor = min(long_max / long_side, short_max /
    short_side)``, rounded half up per side.

    Returns:
        (new_width, new_height).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot resize an image of size {width}x{height}")
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(width, height), short_max / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def resize(array: np.ndarray, size: Size, nearest: bool = False) -> np.ndarray:
    """Resize an image (H, W, C) bilinearly, or a label (H, W) with nearest neighbour, to
    ``size`` = (width, height) with OpenCV, as the reference does."""
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(array, tuple(int(s) for s in size), interpolation=interpolation)


def resize_keep_ratio(array: np.ndarray, scale: Size, nearest: bool = False) -> np.ndarray:
    """Keep-ratio resize of an image (bilinear) or label (``nearest=True``) to fit ``scale``
    (width, height); see :func:`keep_ratio_size`."""
    height, width = array.shape[:2]
    return resize(array, keep_ratio_size(width, height, scale), nearest=nearest)


def scaled(scale: Size, ratio: float) -> Size:
    """``scale`` times ``ratio`` truncated to integers, as the reference's multi-scale test and
    random resize compute it: ``(int(w * ratio), int(h * ratio))``."""
    return int(scale[0] * ratio), int(scale[1] * ratio)


# --------------------------------------------------------------------------------------------
# Normalising and padding
# --------------------------------------------------------------------------------------------
def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB -> float32 (..., 3, H, W): ``(x - mean) / std`` per channel in
    float32, the reference's arithmetic. The one normalisation of training and testing."""
    mean32 = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    chw = np.ascontiguousarray(np.moveaxis(image, -1, -3)).astype(np.float32)
    return (chw - mean32) / std32


def pad_to(image: np.ndarray, label: Optional[np.ndarray], size: Size, pad_value: float = 0.0,
           label_pad_value: int = IGNORE_INDEX) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Pad a normalised image (3, H, W) and its label (H, W) at the bottom and right to
    ``size`` = (width, height); sizes already as large are left as they are.

    The image pad value applies in normalised space (0 = the mean colour), as the reference's
    data preprocessor pads after normalising.
    """
    width, height = size
    pad_h = max(height - image.shape[1], 0)
    pad_w = max(width - image.shape[2], 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=pad_value)
        if label is not None:
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=label_pad_value)
    return image, label


# --------------------------------------------------------------------------------------------
# Random training transforms
# --------------------------------------------------------------------------------------------
def random_resize(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale: Size,
                  ratio_range: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """Keep-ratio resize to fit ``scale`` times a ratio drawn uniformly from ``ratio_range``:
    the target is ``(int(scale_w * r), int(scale_h * r))``. Image bilinear, label nearest."""
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low
    target = scaled(scale, ratio)
    height, width = image.shape[:2]
    size = keep_ratio_size(width, height, target)
    return resize(image, size), resize(label, size, nearest=True)


def _crop_box(shape: Tuple[int, ...], crop: Size, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """A uniformly placed crop window (y1, y2, x1, x2) of size ``crop`` (width, height),
    clipped to the array when it is smaller."""
    crop_w, crop_h = crop
    offset_h = int(rng.integers(0, max(shape[0] - crop_h, 0) + 1))
    offset_w = int(rng.integers(0, max(shape[1] - crop_w, 0) + 1))
    return offset_h, offset_h + crop_h, offset_w, offset_w + crop_w


def crop_class_ratio_ok(label: np.ndarray, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX) -> bool:
    """The reference's acceptance test of a crop: more than one class present and the largest
    class below ``cat_max_ratio`` of the counted pixels (ignored pixels not counted)."""
    counts = np.bincount(label.ravel())
    if ignore_index < counts.size:
        counts[ignore_index] = 0
    counts = counts[counts > 0]
    return counts.size > 1 and counts.max() / counts.sum() < cat_max_ratio


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop_size: Size,
                cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX,
                max_tries: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """Crop ``crop_size`` (width, height) at a random place (the whole side when the image is
    smaller). While a crop fails :func:`crop_class_ratio_ok`, draw another, checking at most
    ``max_tries`` of them; the reference then keeps the next draw unchecked."""
    box = _crop_box(label.shape, crop_size, rng)
    if cat_max_ratio < 1.0:
        for _ in range(max_tries):
            y1, y2, x1, x2 = box
            if crop_class_ratio_ok(label[y1:y2, x1:x2], cat_max_ratio, ignore_index):
                break
            box = _crop_box(label.shape, crop_size, rng)
    y1, y2, x1, x2 = box
    return image[y1:y2, x1:x2], label[y1:y2, x1:x2]


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                prob: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """Flip image and label horizontally together with probability ``prob``."""
    if rng.random() < prob:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    return image, label


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``values * alpha + beta`` in float32, clipped to [0, 255] and truncated to uint8."""
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range: Tuple[float, float] = (0.5, 1.5),
                           saturation_range: Tuple[float, float] = (0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
    """The reference's PhotoMetricDistortion on a uint8 (H, W, 3) RGB image.

    Each step happens with probability 1/2, in this order: brightness (add a value drawn from
    [-delta, delta]); contrast (multiply) here when a coin says so; saturation (multiply HSV's S);
    hue (shift HSV's H by an integer in [-delta, delta), modulo 180); contrast here otherwise.
    Every step clips to [0, 255] and truncates to uint8, and the colour steps each convert to
    OpenCV's 8-bit HSV and back, as the reference does. Random draws happen in the reference's
    order, so a given generator state gives one result.
    """
    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*contrast_range))
        return img

    img = image
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.integers(2) == 1
    if contrast_first:
        img = contrast(img)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + shift) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        img = contrast(img)
    return img


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------
class TrainPipeline:
    """The reference's training pipeline with the parameters of a :class:`DataConfig`.

    ``pipeline(image, label, rng)`` takes a uint8 (H, W, 3) RGB image and its (H, W) label
    (class indices, ``ignore_index`` for ignored pixels) and returns

    - image: float32 (3, crop_h, crop_w), normalised, padded with 0 at the bottom/right;
    - label: int64 (crop_h, crop_w), padded with ``ignore_index``.
    """

    def __init__(self, data: Optional[DataConfig] = None, flip_prob: float = 0.5,
                 photometric: bool = True) -> None:
        self.data = data or DataConfig()
        self.flip_prob = flip_prob
        self.photometric = photometric

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        cfg = self.data
        image, label = random_resize(image, label, rng, cfg.train_scale, cfg.ratio_range)
        image, label = random_crop(image, label, rng, cfg.crop_size, cfg.cat_max_ratio, cfg.ignore_index)
        image, label = random_flip(image, label, rng, self.flip_prob)
        if self.photometric:
            image = photometric_distortion(image, rng)
        chw = normalize(image, cfg.mean, cfg.std)
        chw, label = pad_to(chw, label, cfg.crop_size, 0.0, cfg.ignore_index)
        return chw, label.astype(np.int64)

"""The reference's train/test transforms: geometry, statistics, determinism, pad/normalise order."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from knet.config import DataConfig
from knet.data.transforms import (
    TrainPipeline, crop_class_ratio_ok, keep_ratio_size, normalize, pad_to,
    photometric_distortion, random_crop, random_flip, random_resize, resize_keep_ratio, scaled,
)

MEAN, STD = DataConfig().mean, DataConfig().std


class Scripted:
    """A stand-in for numpy's Generator that returns scripted values, to drive each branch."""

    def __init__(self, integers=(), uniform=(), random=()):
        self._integers, self._uniform, self._random = list(integers), list(uniform), list(random)

    def integers(self, low, high=None):
        return self._integers.pop(0)

    def uniform(self, low, high):
        return self._uniform.pop(0)

    def random(self):
        return self._random.pop(0)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- keep-ratio resize -----------------------------------------------------------------------
@pytest.mark.parametrize("size, scale, expected", [
    ((60, 45), (2048, 512), (683, 512)),      # the golden image: short side bound
    ((683, 512), (2048, 512), (683, 512)),
    ((4000, 500), (2048, 512), (2048, 256)),  # very wide: long side bound
    ((45, 60), (2048, 640), (640, 853)),
    ((300, 200), (1024, 256), (384, 256)),
])
def test_keep_ratio_size(size, scale, expected):
    assert keep_ratio_size(*size, scale) == expected


def test_keep_ratio_rule_matches_formula():
    rng = np.random.default_rng(1)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(1, 3000, 2))
        scale = (int(rng.integers(100, 3000)), int(rng.integers(100, 3000)))
        f = min(max(scale) / max(w, h), min(scale) / min(w, h))
        assert keep_ratio_size(w, h, scale) == (int(w * f + 0.5), int(h * f + 0.5))


def test_resize_uses_opencv_bilinear_and_nearest():
    image = _image(45, 60)
    np.testing.assert_array_equal(
        resize_keep_ratio(image, (2048, 512)), cv2.resize(image, (683, 512), interpolation=cv2.INTER_LINEAR))
    label = np.random.default_rng(0).integers(0, 5, (45, 60)).astype(np.uint8)
    out = resize_keep_ratio(label, (2048, 512), nearest=True)
    np.testing.assert_array_equal(out, cv2.resize(label, (683, 512), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(out)) <= set(np.unique(label))


def test_scaled_truncates():
    assert scaled((2048, 512), 0.75) == (1536, 384)
    assert scaled((2048, 640), 1.75) == (3584, 1120)


# ---- random resize ---------------------------------------------------------------------------
def test_random_resize_scale_range_and_determinism():
    image, label = _image(300, 400), np.zeros((300, 400), np.uint8)
    short_sides = []
    for seed in range(200):
        out, out_label = random_resize(image, label, np.random.default_rng(seed), (2048, 512), (0.5, 2.0))
        assert out.shape[:2] == out_label.shape
        # Expected: the ratio r is the generator's first draw; fit (int(2048 r), int(512 r)).
        r = np.random.default_rng(seed).random() * 1.5 + 0.5
        expected = keep_ratio_size(400, 300, (int(2048 * r), int(512 * r)))
        assert out.shape[1::-1] == expected
        short_sides.append(out.shape[0])
    assert 256 <= min(short_sides) and max(short_sides) <= 1024
    assert min(short_sides) < 300 and max(short_sides) > 950  # the whole range is reached
    a = random_resize(image, label, np.random.default_rng(7), (2048, 512), (0.5, 2.0))[0]
    b = random_resize(image, label, np.random.default_rng(7), (2048, 512), (0.5, 2.0))[0]
    np.testing.assert_array_equal(a, b)


# ---- random crop -----------------------------------------------------------------------------
def test_crop_ratio_rule():
    assert not crop_class_ratio_ok(np.zeros((4, 4), np.uint8), 0.75)          # one class
    assert not crop_class_ratio_ok(np.array([[0, 0, 0, 1]]), 0.75)           # exactly 0.75
    assert crop_class_ratio_ok(np.array([[0, 0, 1, 1]]), 0.75)
    # Ignored pixels are not counted: 2 of class 0 and 1 of class 1 -> 0.67 < 0.75.
    assert crop_class_ratio_ok(np.array([[0, 0, 1, 255, 255, 255]]), 0.75)
    assert not crop_class_ratio_ok(np.array([[0, 255, 255, 255]]), 0.75)    # only one counted class


def test_random_crop_geometry():
    image = _image(100, 120)
    label = np.arange(100 * 120).reshape(100, 120) % 7
    out, out_label = random_crop(image, label.astype(np.uint8), np.random.default_rng(0), (64, 48))
    assert out.shape == (48, 64, 3) and out_label.shape == (48, 64)
    # The crop is a window of the input at one offset, for image and label alike.
    found = [(y, x) for y in range(100 - 48 + 1) for x in range(120 - 64 + 1)
             if np.array_equal(image[y:y + 48, x:x + 64], out)]
    assert len(found) == 1
    y, x = found[0]
    np.testing.assert_array_equal(label[y:y + 48, x:x + 64], out_label)
    # Smaller than the crop: the whole side is kept (padding comes later).
    small, small_label = random_crop(_image(30, 40), np.zeros((30, 40), np.uint8), np.random.default_rng(0), (64, 48))
    assert small.shape == (30, 40, 3) and small_label.shape == (30, 40)


def test_random_crop_retries_until_no_class_dominates():
    # Class 1 fills the image except a 20x20 block of class 2 in one corner: most 32x32 crops are
    # all class 1, the accepted ones overlap the block.
    label = np.ones((128, 128), np.uint8)
    label[:20, :20] = 2
    image = _image(128, 128)
    accepted = 0
    plain = 0
    for seed in range(200):
        _, crop = random_crop(image, label, np.random.default_rng(seed), (32, 32), cat_max_ratio=0.75)
        accepted += crop_class_ratio_ok(crop, 0.75)
        _, crop = random_crop(image, label, np.random.default_rng(seed), (32, 32), cat_max_ratio=1.0)
        plain += crop_class_ratio_ok(crop, 0.75)
    # Without retries ~4% of crops qualify; with up to 10 retries far more do.
    assert plain < 25 and accepted > 3 * plain


def test_random_crop_follows_the_reference_retry_order():
    # Reference: draw a box; up to 10 times: accept if ok, else draw again. After 10 failures the
    # 11th box is kept unchecked. An all-one-class label always fails: 11 draws of 2 integers.
    label = np.zeros((50, 50), np.uint8)
    rng = np.random.default_rng(3)
    _, crop = random_crop(_image(50, 50), label, rng, (10, 10))
    reference = np.random.default_rng(3)
    for _ in range(11):  # one (y, x) draw per try: 10 retries and the final crop
        reference.integers(0, 41), reference.integers(0, 41)
    assert rng.random() == reference.random()  # both generators consumed exactly 22 integers


# ---- flip ------------------------------------------------------------------------------------
def test_flip_moves_image_and_label_together():
    image = _image(8, 9)
    label = np.arange(72, dtype=np.uint8).reshape(8, 9)
    flips = 0
    for seed in range(400):
        out, out_label = random_flip(image, label, np.random.default_rng(seed), 0.5)
        if np.array_equal(out, image):
            np.testing.assert_array_equal(out_label, label)
        else:
            flips += 1
            np.testing.assert_array_equal(out, image[:, ::-1])
            np.testing.assert_array_equal(out_label, label[:, ::-1])
    assert 160 < flips < 240  # p = 0.5


# ---- photometric distortion ------------------------------------------------------------------
def test_photometric_brightness_only():
    image = _image(6, 7)
    # brightness yes (+20.7); mode 1 -> contrast first: no; saturation no; hue no.
    rng = Scripted(integers=[1, 1, 0, 0, 0], uniform=[20.7])
    out = photometric_distortion(image, rng)
    expected = np.clip(image.astype(np.float32) + np.float32(20.7), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_photometric_contrast_before_or_after_colour_steps():
    image = _image(6, 7)

    def contrast(img, a):
        return np.clip(img.astype(np.float32) * np.float32(a), 0, 255).astype(np.uint8)

    def saturate(img, a):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * np.float32(a), 0, 255).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    # mode 1: contrast, then saturation.
    first = photometric_distortion(image, Scripted(integers=[0, 1, 1, 1, 0], uniform=[1.4, 0.6]))
    np.testing.assert_array_equal(first, saturate(contrast(image, 1.4), 0.6))
    # mode 0: saturation, then contrast (contrast's coin is drawn last).
    last = photometric_distortion(image, Scripted(integers=[0, 0, 1, 0, 1], uniform=[0.6, 1.4]))
    np.testing.assert_array_equal(last, contrast(saturate(image, 0.6), 1.4))


def test_photometric_hue_shift_wraps_modulo_180():
    image = _image(6, 7)
    out = photometric_distortion(image, Scripted(integers=[0, 0, 0, 1, -18, 0]))
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) - 18) % 180
    np.testing.assert_array_equal(out, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def test_photometric_statistics_and_determinism():
    image = np.full((16, 16, 3), 128, np.uint8)
    changes = []
    for seed in range(300):
        out = photometric_distortion(image, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        changes.append(float(out.mean()) - 128.0)
    changes = np.array(changes)
    assert 0.15 < (changes == 0).mean() < 0.35  # grey: unchanged unless brightness or contrast (p=1/4)
    assert np.abs(changes).max() <= 128.0 * 0.5 + 32 + 1
    a = photometric_distortion(_image(9, 9), np.random.default_rng(5))
    b = photometric_distortion(_image(9, 9), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


# ---- normalise and pad -----------------------------------------------------------------------
def test_normalize_values_and_layout():
    image = _image(3, 4)
    out = normalize(image, MEAN, STD)
    assert out.shape == (3, 3, 4) and out.dtype == np.float32
    expected = (np.float32(image[1, 2, 0]) - np.float32(MEAN[0])) / np.float32(STD[0])
    assert out[0, 1, 2] == expected


def test_pad_after_normalise_gives_zero_and_ignore():
    chw = normalize(_image(5, 6), MEAN, STD)
    label = np.ones((5, 6), np.int64)
    padded, padded_label = pad_to(chw, label, (8, 7))
    assert padded.shape == (3, 7, 8) and padded_label.shape == (7, 8)
    np.testing.assert_array_equal(padded[:, :5, :6], chw)
    assert (padded[:, 5:, :] == 0).all() and (padded[:, :, 6:] == 0).all()
    assert (padded_label[5:, :] == 255).all() and (padded_label[:, 6:] == 255).all()
    assert (padded_label[:5, :6] == 1).all()


def test_train_pipeline_output_and_pad_order():
    cfg = DataConfig(crop_size=(64, 48), train_scale=(128, 32), ratio_range=(0.5, 0.5))
    image, label = _image(40, 50), np.full((40, 50), 3, np.uint8)
    label[:10] = 1
    out, out_label = TrainPipeline(cfg)(image, label, np.random.default_rng(0))
    assert out.shape == (3, 48, 64) and out.dtype == np.float32
    assert out_label.shape == (48, 64) and out_label.dtype == np.int64
    # Fit (64, 16): 50x40 -> 20x16, so most of the crop is padding: 0 (the mean colour) after
    # normalising, 255 in the label.
    assert (out[:, 16:, :] == 0).all() and (out[:, :, 20:] == 0).all()
    assert (out_label[16:, :] == 255).all() and (out_label[:, 20:] == 255).all()
    assert set(np.unique(out_label[:16, :20])) <= {1, 3}


def test_train_pipeline_is_deterministic_in_the_seed():
    pipe = TrainPipeline(DataConfig(crop_size=(32, 32), train_scale=(256, 64)))
    image = _image(60, 80)
    label = (np.arange(60 * 80).reshape(60, 80) // 700 % 4).astype(np.uint8)
    a = pipe(image, label, np.random.default_rng(11))
    b = pipe(image, label, np.random.default_rng(11))
    c = pipe(image, label, np.random.default_rng(12))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_test_input_is_resized_to_fit_the_test_scale_and_normalised():
    data = DataConfig()
    out = normalize(resize_keep_ratio(_image(45, 60), data.test_scale), data.mean, data.std)
    assert out.shape == (3, 512, 683) and out.dtype == np.float32
    out = normalize(resize_keep_ratio(_image(45, 60), (100, 50)), data.mean, data.std)
    assert out.shape == (3, 50, 67)


def test_normalize_takes_batches():
    data = DataConfig()
    images = np.stack([_image(7, 9), _image(7, 9)[::-1]])
    batch = normalize(images, data.mean, data.std)
    assert batch.shape == (2, 3, 7, 9)
    np.testing.assert_array_equal(batch[1], normalize(images[1], data.mean, data.std))

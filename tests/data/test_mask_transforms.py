"""Transforms of the panoptic/instance models: mmcv's sizes and rounding, the official test
pipeline on the golden images, the training pipeline (scale draws, flips, padding, seeds) and the
collate -> prepare_targets path against the official targets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from knet.data.mask_transforms import (
    DET_MEAN, DET_STD, TRAIN_SCALES_MS_3X, MaskSample, MaskTrainTransform, collate_mask_samples,
    pad_bottom_right, padded_shape, prepare_test_image, rescale_image, rescale_masks, rescale_shape, sample_scale,
    stack_padded,
)
from knet.data.transforms import normalize
from knet.losses import batch_targets, prepare_targets

from tests.conftest import golden_path


def _scene(h=48, w=64, seed=0):
    """An asymmetric image, two thing masks and a semantic map (stuff 3/4, things 0/1, void 255)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 5:20, 3:15] = True
    masks[1, 25:40, 30:60] = True
    sem = np.full((h, w), 3, dtype=np.uint8)
    sem[h // 2:] = 4
    sem[masks[0]], sem[masks[1]] = 0, 1
    sem[0:3, 50:] = 255
    return image, {"masks": masks, "labels": np.array([0, 1]), "sem_seg": sem}


# ---- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, scale, expected", [
    ((480, 640), (1333, 800), (800, 1067)),    # short side bound: 640 * 5/3 = 1066.67 -> 1067
    ((75, 110), (1333, 800), (800, 1173)),     # the golden images (upscaled)
    ((130, 90), (1333, 800), (1156, 800)),
    ((100, 1000), (1333, 800), (133, 1333)),   # long side bound: 100 * 1.333 = 133.3 -> 133
    ((427, 640), (800, 1333), (800, 1199)),    # scale given (short, long): the same rule
    ((480, 640), (1333, 640), (640, 853)),     # the smallest ms-3x scale
])
def test_rescale_shape(shape, scale, expected):
    assert rescale_shape(*shape, scale) == expected
    assert rescale_image(np.zeros((*shape, 3), np.uint8), scale).shape == (*expected, 3)


@pytest.mark.parametrize("shape, expected", [((800, 1067), (800, 1088)), ((1156, 800), (1184, 800)),
                                             ((32, 64), (32, 64)), ((33, 1), (64, 32))])
def test_padded_shape(shape, expected):
    assert padded_shape(*shape) == expected


def test_pad_and_stack_values():
    chw = np.ones((3, 2, 3), np.float32)
    padded = pad_bottom_right(chw, (4, 5), 0.0)
    assert padded.shape == (3, 4, 5) and padded[:, :2, :3].all()
    assert not padded[:, 2:].any() and not padded[:, :, 3:].any()
    stacked = stack_padded([np.zeros((2, 3), np.uint8), np.zeros((4, 1), np.uint8)], 255)
    assert stacked.shape == (2, 4, 3)
    assert (stacked[0, 2:] == 255).all() and (stacked[1, :, 1:] == 255).all() and (stacked[0, :2] == 0).all()
    with pytest.raises(ValueError):
        pad_bottom_right(chw, (1, 5))


def test_rescale_masks_is_opencv_nearest():
    _, target = _scene()
    resized = rescale_masks(target["masks"].astype(np.uint8), (77, 101))
    for mask, out in zip(target["masks"].astype(np.uint8), resized):
        np.testing.assert_array_equal(out, cv2.resize(mask, (101, 77), interpolation=cv2.INTER_NEAREST))
    assert rescale_masks(np.zeros((0, 5, 6), np.uint8), (10, 12)).shape == (0, 10, 12)
    sem = rescale_masks(target["sem_seg"], (77, 101))
    assert set(np.unique(sem)) <= set(np.unique(target["sem_seg"]))


# ---- test pipeline -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["knet-det-panoptic", "knet-det-instance"])
def test_test_pipeline_matches_the_official_one(name):
    golden = np.load(golden_path(f"det/{name}.tiny.pipe.npz"))
    for i in range(2):
        image = golden[f"pipe_img_{i}"]
        out = prepare_test_image(image)
        assert out.img_shape == tuple(golden[f"pipe_img_shape_{i}"][:2])
        assert out.pad_shape == tuple(golden[f"pipe_pad_shape_{i}"][:2]) == out.image.shape[1:]
        assert out.ori_shape == image.shape[:2]
        np.testing.assert_allclose(out.scale_factor * 2, golden[f"pipe_scale_factor_{i}"], rtol=1e-6)
        resized_sum = rescale_image(image, (1333, 800)).reshape(-1, 3).sum(0)
        np.testing.assert_array_equal(resized_sum, golden[f"pipe_resized_sum_{i}"])  # cv2 uint8 bilinear, exactly
        np.testing.assert_allclose(out.image[:, ::8, ::8], golden[f"pipe_x_sub_{i}"], rtol=0, atol=1e-5)
        h, w = out.img_shape
        assert not out.image[:, h:].any() and not out.image[:, :, w:].any()  # 0 padding after normalising


# ---- training pipeline ---------------------------------------------------------------------------
def test_sample_scale_draws_like_mmdet():
    rng = np.random.default_rng(3)
    draws = [sample_scale(rng, TRAIN_SCALES_MS_3X, "range") for _ in range(3000)]
    assert {long for long, _ in draws} == {1333}
    shorts = [short for _, short in draws]
    assert min(shorts) == 640 and max(shorts) == 800 and len(set(shorts)) == 161  # integers, both ends
    # mmdet's order of draws: the long edge, then the short edge, each randint(low, high + 1).
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    assert sample_scale(a, [(1333, 640), (1400, 800)]) == (int(b.integers(1333, 1401)), int(b.integers(640, 801)))
    assert sample_scale(a, [(1333, 640), (1333, 800), (900, 500)], "value") in {(1333, 640), (1333, 800), (900, 500)}
    state = a.bit_generator.state
    assert sample_scale(a, [(800, 1333)]) == (1333, 800) and a.bit_generator.state == state  # no draw
    with pytest.raises(ValueError):
        sample_scale(a, [(1, 2), (3, 4), (5, 6)], "range")


def test_train_sample_layout_and_values():
    image, target = _scene()
    transform = MaskTrainTransform(scales=[(100, 60)], flip_prob=0.0)
    sample = transform(image, target, np.random.default_rng(0))
    assert sample.img_shape == (60, 80) and sample.pad_shape == (64, 96) and not sample.flipped
    assert sample.image.dtype == np.float32 and sample.masks.dtype == np.uint8 and sample.sem_seg.dtype == np.uint8
    assert sample.scale_factor == (80 / 64, 60 / 48)
    resized = cv2.resize(image, (80, 60), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(sample.image[:, :60, :80], normalize(resized, DET_MEAN, DET_STD))
    np.testing.assert_array_equal(sample.masks[:, :60, :80], rescale_masks(target["masks"].astype(np.uint8), (60, 80)))
    np.testing.assert_array_equal(sample.sem_seg[:60, :80], rescale_masks(target["sem_seg"], (60, 80)))
    # Padding: image 0 (after normalising), masks 0, semantic map 255.
    assert not sample.image[:, 60:].any() and not sample.image[:, :, 80:].any()
    assert not sample.masks[:, 60:].any() and not sample.masks[:, :, 80:].any()
    assert (sample.sem_seg[60:] == 255).all() and (sample.sem_seg[:, 80:] == 255).all()
    np.testing.assert_array_equal(sample.labels, [0, 1])

    instance = transform(image, {"masks": target["masks"], "labels": target["labels"]}, np.random.default_rng(0))
    assert instance.sem_seg is None
    with pytest.raises(ValueError, match="same"):
        transform(image[:40], target, np.random.default_rng(0))


def test_flip_moves_image_masks_and_map_together():
    image, target = _scene()
    plain = MaskTrainTransform(scales=[(100, 60)], flip_prob=0.0)(image, target, np.random.default_rng(1))
    flipped = MaskTrainTransform(scales=[(100, 60)], flip_prob=1.0)(image, target, np.random.default_rng(1))
    assert flipped.flipped and not plain.flipped
    h, w = plain.img_shape  # flipping happens before padding: only the image region mirrors
    np.testing.assert_array_equal(flipped.image[:, :h, :w], plain.image[:, :h, :w][:, :, ::-1])
    np.testing.assert_array_equal(flipped.masks[:, :h, :w], plain.masks[:, :h, :w][:, :, ::-1])
    np.testing.assert_array_equal(flipped.sem_seg[:h, :w], plain.sem_seg[:h, :w][:, ::-1])
    assert (flipped.sem_seg[:, w:] == 255).all() and not flipped.masks[:, :, w:].any()
    # The flipped thing masks still sit on their own pixels of the flipped semantic map.
    for mask, label in zip(flipped.masks, flipped.labels):
        assert (flipped.sem_seg[mask.astype(bool)] == label).all()


def test_multiscale_training_is_reproducible_by_seed():
    image, target = _scene(120, 160)
    transform = MaskTrainTransform(scales=TRAIN_SCALES_MS_3X)
    a = transform(image, target, np.random.default_rng([7, 1]))
    b = transform(image, target, np.random.default_rng([7, 1]))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.sem_seg, b.sem_seg)
    assert a.flipped == b.flipped
    outcomes = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        expected_short = sample_scale(np.random.default_rng(seed), TRAIN_SCALES_MS_3X)[1]
        sample = transform(image, target, rng)
        assert sample.img_shape[0] == expected_short  # 120x160: the short side is bound
        assert sample.pad_shape == padded_shape(*sample.img_shape)
        outcomes.add((sample.img_shape, sample.flipped))
    assert len(outcomes) > 6 and {f for _, f in outcomes} == {True, False}


# ---- collate and targets -------------------------------------------------------------------------
def _sample(image, masks, labels, sem, img_shape):
    return MaskSample(image=image, masks=masks, labels=labels, sem_seg=sem, img_shape=img_shape, flipped=False,
                      scale_factor=(1.0, 1.0))


def test_collate_pads_to_the_batch_and_feeds_prepare_targets():
    image, target = _scene()
    transform = MaskTrainTransform(scales=[(100, 60)], flip_prob=0.5)
    small = transform(image, target, np.random.default_rng(0))                  # padded 64 x 96
    large = transform(image[:, :40], {k: (v[..., :40] if k != "labels" else v) for k, v in target.items()},
                      np.random.default_rng(1))                                   # 60 x 50 -> 64 x 64
    tall = MaskTrainTransform(scales=[(130, 90)], flip_prob=0.0)(image[:, :30], {
        "masks": target["masks"][:, :, :30], "labels": target["labels"], "sem_seg": target["sem_seg"][:, :30]},
        np.random.default_rng(2))                                                 # 130 x 81 -> 160 x 96
    batch = collate_mask_samples([small, large, tall])
    assert batch.batch_shape == (160, 96) and batch.images.shape == (3, 3, 160, 96)
    assert batch.images.dtype == torch.float32 and batch.sem_seg.dtype == torch.uint8
    for sample, img, masks, sem in zip([small, large, tall], batch.images, batch.masks, batch.sem_seg):
        h, w = sample.pad_shape
        np.testing.assert_array_equal(img[:, :h, :w].numpy(), sample.image)
        assert not img[:, h:].any() and not img[:, :, w:].any()
        assert masks.shape[1:] == (160, 96) and not masks[:, h:].any() and not masks[:, :, w:].any()
        assert (sem[h:] == 255).all() and (sem[:, w:] == 255).all()
    assert batch.img_shapes == [small.img_shape, large.img_shape, tall.img_shape]

    # Padding here and prepare_targets' own padding of the per-sample arrays agree.
    targets = batch_targets(batch, num_thing_classes=3)
    expected = prepare_targets([torch.from_numpy(s.masks) for s in (small, large, tall)],
                               [torch.from_numpy(s.labels) for s in (small, large, tall)], (160, 96),
                               [torch.from_numpy(s.sem_seg) for s in (small, large, tall)], num_thing_classes=3)
    for got, want in zip(targets, expected):
        assert got.masks.shape == (2, 40, 24)
        torch.testing.assert_close(got.masks, want.masks, rtol=0, atol=0)
        torch.testing.assert_close(got.stuff_masks, want.stuff_masks, rtol=0, atol=0)
        assert got.stuff_labels.tolist() == want.stuff_labels.tolist() == [3, 4]

    instance = collate_mask_samples([_sample(s.image, s.masks, s.labels, None, s.img_shape) for s in (small, tall)])
    assert instance.sem_seg is None and batch_targets(instance, 3)[0].stuff_masks is None
    with pytest.raises(ValueError):
        collate_mask_samples([small, _sample(tall.image, tall.masks, tall.labels, None, tall.img_shape)])


def test_batch_targets_equal_the_official_ones():
    """The official forward_train's targets from the golden batch (image 0 given at img_shape)."""
    golden = np.load(golden_path("det/knet-det-panoptic.tiny.npz"))
    samples = []
    for i in range(2):
        h, w = (int(v) for v in golden["img_shape"][i][:2])
        sem = golden["gt_semantic_seg"][i, 0]
        # The image at its pad shape, masks and map at the image's size: the collate pads them.
        samples.append(_sample(golden["x"][i], golden[f"gt_masks_{i}"][:, :h, :w],
                               golden[f"gt_labels_{i}"], sem[:h, :w], (h, w)))
    batch = collate_mask_samples(samples)
    np.testing.assert_array_equal(batch.images.numpy(), golden["x"])
    np.testing.assert_array_equal(batch.sem_seg.numpy(), golden["gt_semantic_seg"][:, 0])
    for i, target in enumerate(batch_targets(batch, num_thing_classes=80)):
        np.testing.assert_array_equal(batch.masks[i].numpy(), golden[f"gt_masks_{i}"])
        np.testing.assert_allclose(target.masks.numpy(), golden[f"train_gt_masks_assign_{i}"], atol=1e-6)
        np.testing.assert_allclose(target.stuff_masks.numpy(), golden[f"train_gt_sem_seg_{i}"], atol=1e-6)
        np.testing.assert_array_equal(target.stuff_labels.numpy(), golden[f"train_gt_sem_cls_{i}"])

"""Semantic metrics with hand-computed cases: absent classes, ignored pixels, batches, rounding,
the table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from knet.metrics.semantic import SegmentationMetric, compute_metrics, confusion_matrix, format_table


# ---- hand-computed metrics -------------------------------------------------------------------
def test_hand_computed_case_with_absent_classes_and_ignore():
    # 4 classes. Class 2 never labelled but predicted once; class 3 absent from both.
    label = np.array([[0, 0, 1, 1],
                      [0, 255, 1, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 3, 0, 0]])
    metric = SegmentationMetric(4)
    metric.update(pred, label)
    areas = metric.areas()
    # valid pixels: (0,0) 0->0, (0,1) 0->1, (0,2) 1->1, (0,3) 1->1, (1,0) 0->2, (1,2) 1->0
    np.testing.assert_array_equal(areas["intersect"], [1, 2, 0, 0])
    np.testing.assert_array_equal(areas["pred"], [2, 3, 1, 0])   # the ignored pixels' predictions don't count
    np.testing.assert_array_equal(areas["label"], [3, 3, 0, 0])
    np.testing.assert_array_equal(areas["union"], [4, 4, 1, 0])
    m = metric.compute(["w", "x", "y", "z"])
    assert m["aAcc"] == 50.0                                   # 3 / 6
    assert m["per_class"]["w"] == {"IoU": 25.0, "Acc": 33.33}  # 1/4, 1/3
    assert m["per_class"]["x"] == {"IoU": 50.0, "Acc": 66.67}  # 2/4, 2/3
    assert m["per_class"]["y"] == {"IoU": 0.0, "Acc": None}    # predicted, never labelled
    assert m["per_class"]["z"] == {"IoU": None, "Acc": None}   # absent from both: left out
    assert m["mIoU"] == 25.0                                   # (25 + 50 + 0) / 3
    assert m["mAcc"] == 50.0                                   # (33.33.. + 66.66..) / 2


def test_batch_update_equals_single_updates_and_is_memory_bounded():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 5, (3, 7, 9))
    labels = rng.integers(0, 5, (3, 7, 9))
    labels[rng.random((3, 7, 9)) < 0.2] = 255
    batched, single = SegmentationMetric(5), SegmentationMetric(5)
    batched.update(torch.from_numpy(preds), torch.from_numpy(labels))
    for pred, label in zip(preds, labels):
        single.update(pred, label)
    assert torch.equal(batched.confusion, single.confusion)
    assert batched.confusion.shape == (5, 5)  # state independent of the number of images
    # Brute-force reference areas.
    valid = labels != 255
    for c in range(5):
        inter = ((preds == c) & (labels == c) & valid).sum()
        assert batched.areas()["intersect"][c] == inter
        assert batched.areas()["union"][c] == (((preds == c) | (labels == c)) & valid).sum()


def test_areas_and_confusion():
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 1], [255, 0]])
    metric = SegmentationMetric(2)
    metric.update(pred, label)
    areas = metric.areas()
    assert areas["intersect"].tolist() == [1, 1] and areas["union"].tolist() == [2, 2]
    assert areas["pred"].tolist() == [1, 2] and areas["label"].tolist() == [2, 1]
    assert confusion_matrix(pred, label, 2).tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="label value 7 is not a class"):
        confusion_matrix(pred, torch.tensor([[0, 7], [0, 0]]), 2)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(pred, label[0], 2)


def test_all_ignored_gives_none():
    metric = SegmentationMetric(2)
    metric.update(np.zeros((2, 2), np.int64), np.full((2, 2), 255))
    m = metric.compute()
    assert m == {"aAcc": None, "mIoU": None, "mAcc": None,
                 "per_class": {"0": {"IoU": None, "Acc": None}, "1": {"IoU": None, "Acc": None}}}


def test_compute_metrics_rounds_like_the_reference():
    m = compute_metrics([1, 2], [3, 3], [2, 3], [2, 3])
    assert m["per_class"]["0"]["IoU"] == 33.33 and m["per_class"]["1"]["IoU"] == 66.67
    assert m["mIoU"] == 50.0 and m["aAcc"] == 60.0 and m["mAcc"] == float(np.round(100 * (0.5 + 2 / 3) / 2, 2))
    with pytest.raises(ValueError, match="class names"):
        compute_metrics([1], [1], [1], [1], ["a", "b"])


def test_format_table():
    text = format_table(compute_metrics([1, 0], [2, 0], [1, 0], [2, 0], ["cat", "dog"]))
    assert "| cat" in text and "50.00" in text and "nan" in text
    assert text.splitlines()[-2].split("|")[1:4] == [" 50.00 ", " 50.00 ", " 50.00 "]

"""PanopticQuality against hand-computed answers on 10 x 10 maps (rows are 10 pixels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from knet.data.coco_categories import coco_panoptic_categories
from knet.metrics import PanopticQuality

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 11, "name": "grass", "isthing": 0},
]
PERSON, CAR, SKY, GRASS = 1, 3, 10, 11


def seg(segment_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd}


def row(result: dict, name: str) -> dict:
    return next(r for r in result if r["name"] == name)


def approx_results(result: dict, expected: dict) -> None:
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert (result[key] is None) if value is None else result[key] == pytest.approx(value, abs=1e-9), key


def test_perfect_prediction_is_100():
    gt = np.zeros((10, 10), np.int64)
    gt[:4] = 7            # sky
    gt[4:, :5] = 8        # grass
    gt[4:7, 5:] = 20      # person
    gt[7:, 5:] = 21       # car
    gt_segments = [seg(7, SKY), seg(8, GRASS), seg(20, PERSON), seg(21, CAR)]
    pred = gt * 3 + 1     # the same segments under other ids
    pred_segments = [{"id": s["id"] * 3 + 1, "category_id": s["category_id"]} for s in gt_segments]
    pq = PanopticQuality(CATEGORIES)
    pq.update(pred, pred_segments, gt, gt_segments)
    approx_results(pq.compute(), {k: 100.0 for k in
                                  ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]})
    assert [(r["TP"], r["FP"], r["FN"]) for r in pq.per_class()] == [(1, 0, 0)] * 4


def test_missed_instance_is_a_false_negative():
    gt = np.full((10, 10), 1, np.int64)  # sky
    gt[6:, :3] = 2                        # person A (12 px)
    gt[6:, 6:] = 3                        # person B (16 px)
    gt_segments = [seg(1, SKY), seg(2, PERSON), seg(3, PERSON)]
    pred = gt.copy()
    pred[gt == 3] = 0                     # person B not predicted (void)
    pq = PanopticQuality(CATEGORIES)
    pq.update(pred, [{"id": 1, "category_id": SKY}, {"id": 2, "category_id": PERSON}], gt, gt_segments)
    # person: TP 1 (IoU 1), FN 1 -> PQ = 1 / (1 + 0.5) = 2/3; car and grass never seen: left out.
    approx_results(pq.compute(), {"PQ": (200 / 3 + 100) / 2, "SQ": 100.0, "RQ": (200 / 3 + 100) / 2,
                                  "PQ_th": 200 / 3, "SQ_th": 100.0, "RQ_th": 200 / 3,
                                  "PQ_st": 100.0, "SQ_st": 100.0, "RQ_st": 100.0})
    person = row(pq.per_class(), "person")
    assert (person["TP"], person["FP"], person["FN"]) == (1, 0, 1)
    assert row(pq.per_class(), "car")["PQ"] is None


def test_false_positive_and_things_stuff_split():
    gt = np.zeros((10, 10), np.int64)
    gt[:5] = 1                            # sky, 50 px
    gt[5:] = 2                            # grass, 50 px
    pred = gt.copy()
    pred[6:9, 2:5] = 3                    # a 3 x 3 car on the grass: no car there
    pq = PanopticQuality(CATEGORIES)
    pq.update(pred, [{"id": 1, "category_id": SKY}, {"id": 2, "category_id": GRASS},
                     {"id": 3, "category_id": CAR}], gt, [seg(1, SKY), seg(2, GRASS)])
    # grass: IoU 41/50 = 0.82, TP; car: FP -> PQ = SQ = RQ = 0; sky: 100.
    approx_results(pq.compute(), {"PQ": (100 + 82 + 0) / 3, "SQ": (100 + 82 + 0) / 3, "RQ": (100 + 100 + 0) / 3,
                                  "PQ_th": 0.0, "SQ_th": 0.0, "RQ_th": 0.0,
                                  "PQ_st": 91.0, "SQ_st": 91.0, "RQ_st": 100.0})
    grass, car = row(pq.per_class(), "grass"), row(pq.per_class(), "car")
    assert grass["PQ"] == pytest.approx(82.0) and grass["RQ"] == pytest.approx(100.0)
    assert (car["TP"], car["FP"], car["FN"], car["PQ"]) == (0, 1, 0, 0.0)


def test_crowd_region_stays_in_the_union_and_excuses_its_category():
    gt = np.zeros((10, 10), np.int64)
    gt[:2] = 1                            # person instance, 20 px
    gt[2:5] = 2                           # person crowd, 30 px
    gt[5:] = 3                            # sky, 50 px
    gt_segments = [seg(1, PERSON), seg(2, PERSON, iscrowd=1), seg(3, SKY)]
    pred = np.full((10, 10), 30, np.int64)
    pred[:3] = 10                         # person: the instance + 10 crowd px
    pred[3:5] = 11                        # person: 20 px, all on the crowd
    pred_segments = [{"id": 10, "category_id": PERSON}, {"id": 11, "category_id": PERSON},
                     {"id": 30, "category_id": SKY}]
    pq = PanopticQuality(CATEGORIES)
    pq.update(pred, pred_segments, gt, gt_segments)
    person = row(pq.per_class(), "person")
    # IoU = 20 / (30 + 20 - 20) = 2/3 (the crowd pixels count against it, as in panopticapi);
    # segment 11 lies on a crowd region of its category: no FP; the unmatched crowd: no FN.
    assert (person["TP"], person["FP"], person["FN"]) == (1, 0, 0)
    assert person["PQ"] == pytest.approx(200 / 3) and person["SQ"] == pytest.approx(200 / 3)
    assert person["RQ"] == pytest.approx(100.0)

    # The same segment labelled car is a false positive: only a crowd of its own category excuses.
    pq = PanopticQuality(CATEGORIES)
    pred_segments[1] = {"id": 11, "category_id": CAR}
    pq.update(pred, pred_segments, gt, gt_segments)
    car = row(pq.per_class(), "car")
    assert (car["TP"], car["FP"], car["FN"]) == (0, 1, 0)


def test_void_pixels_leave_the_union_and_excuse_mostly_void_segments():
    gt = np.zeros((10, 10), np.int64)
    gt[:5] = 1                            # sky, 50 px; rows 5-7 are VOID
    gt[8:] = 2                            # grass, 20 px
    pred = np.zeros((10, 10), np.int64)
    pred[:6] = 1                          # sky + 10 void px: IoU = 50 / (60 + 50 - 50 - 10) = 1
    pred[6:8, :5] = 2                     # car, all void: ignored
    pred[7, 5:] = 3                       # person: 5 void px + 5 grass px, exactly half: an FP
    pred[8, 5:] = 3
    pred[8, :5] = 4                       # grass, 15 px: IoU 15 / 20
    pred[9] = 4
    pq = PanopticQuality(CATEGORIES)
    pq.update(pred, [{"id": 1, "category_id": SKY}, {"id": 2, "category_id": CAR},
                     {"id": 3, "category_id": PERSON}, {"id": 4, "category_id": GRASS}],
              gt, [seg(1, SKY), seg(2, GRASS)])
    per_class = pq.per_class()
    assert row(per_class, "sky")["PQ"] == pytest.approx(100.0)
    assert row(per_class, "grass")["PQ"] == pytest.approx(75.0)
    assert (row(per_class, "car")["FP"], row(per_class, "car")["PQ"]) == (0, None)
    assert (row(per_class, "person")["FP"], row(per_class, "person")["PQ"]) == (1, 0.0)
    approx_results(pq.compute(), {"PQ": 175 / 3, "SQ": 175 / 3, "RQ": 200 / 3,
                                  "PQ_th": 0.0, "SQ_th": 0.0, "RQ_th": 0.0,
                                  "PQ_st": 87.5, "SQ_st": 87.5, "RQ_st": 100.0})


def test_iou_of_exactly_one_half_does_not_match():
    gt = np.zeros((10, 10), np.int64)
    gt[:2] = 1                            # person, 20 px
    pred = np.zeros((10, 10), np.int64)
    pred[0] = 5                           # person, 10 px inside it: IoU 0.5
    pq = PanopticQuality(CATEGORIES)
    pq.update(pred, [{"id": 5, "category_id": PERSON}], gt, [seg(1, PERSON)])
    person = row(pq.per_class(), "person")
    assert (person["TP"], person["FP"], person["FN"], person["PQ"]) == (0, 1, 1, 0.0)
    assert pq.compute()["PQ_st"] is None  # no stuff category seen


def _random_image(rng: np.random.Generator):
    gt = rng.integers(1, 5, size=(12, 12))
    gt[rng.random((12, 12)) < 0.1] = 0
    gt_segments = [seg(1, PERSON), seg(2, CAR, iscrowd=1), seg(3, SKY), seg(4, GRASS)]
    pred = gt.copy()
    pred[rng.random((12, 12)) < 0.3] = 2
    pred_ids = np.unique(pred)
    pred_segments = [{"id": int(i), "category_id": [PERSON, CAR, SKY, GRASS][int(i) - 1]}
                     for i in pred_ids if i]
    return pred, pred_segments, gt, gt_segments


def test_merging_partial_accumulators_equals_one_over_all_images():
    rng = np.random.default_rng(0)
    images = [_random_image(rng) for _ in range(6)]
    whole, first, second = PanopticQuality(CATEGORIES), PanopticQuality(CATEGORIES), PanopticQuality(CATEGORIES)
    for i, image in enumerate(images):
        whole.update(*image)
        (first if i < 3 else second).update(*image)
    assert first.compute() != whole.compute()
    merged = PanopticQuality(CATEGORIES)
    merged.merge(first)
    merged.merge({k: torch.as_tensor(v) for k, v in second.state().items()})  # as after all_reduce
    assert merged.num_images == whole.num_images == 6
    assert merged.compute() == whole.compute()
    assert merged.per_class() == whole.per_class()
    summed = {k: first.state()[k] + second.state()[k] for k in whole.state()}
    for k, v in whole.state().items():
        np.testing.assert_array_equal(summed[k], v)


def test_torch_maps_and_the_coco_table_are_accepted():
    pq = PanopticQuality(coco_panoptic_categories())
    gt = torch.zeros(4, 4, dtype=torch.int64)
    gt[:2] = 5
    pq.update(gt.clone(), [{"id": 5, "category_id": 200}], gt, [seg(5, 200)])  # rug-merged
    assert pq.compute()["PQ_st"] == pytest.approx(100.0) and pq.compute()["PQ_th"] is None


def test_inconsistent_inputs_are_rejected():
    pq = PanopticQuality(CATEGORIES)
    gt = np.ones((4, 4), np.int64)
    with pytest.raises(ValueError, match="not in pred_segments"):
        pq.update(gt, [], gt, [seg(1, SKY)])
    with pytest.raises(ValueError, match="no pixel"):
        pq.update(gt, [{"id": 1, "category_id": SKY}, {"id": 2, "category_id": SKY}], gt, [seg(1, SKY)])
    with pytest.raises(ValueError, match="unknown category_id 99"):
        pq.update(gt, [{"id": 1, "category_id": 99}], gt, [seg(1, SKY)])
    with pytest.raises(ValueError, match="differ in shape"):
        pq.update(gt[:2], [{"id": 1, "category_id": SKY}], gt, [seg(1, SKY)])
    with pytest.raises(ValueError, match="reserved for void"):
        pq.update(gt, [{"id": 1, "category_id": SKY}], gt, [seg(0, SKY), seg(1, SKY)])
    assert pq.num_images == 0 and not pq.tp.any()

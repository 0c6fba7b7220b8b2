"""MaskAP on small hand-made COCO ground truths, and against COCOeval run directly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from knet.metrics import MaskAP

# pycocotools' mask decoding (annToMask, used here to draw the ground truth) warns under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
LABEL_OF = {1: 0, 3: 1, 18: 2}  # default numbering: category ids in increasing order


def box(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, iscrowd: int = 0) -> dict:
    """A COCO annotation of a mask: compressed RLE, or the uncompressed RLE COCO uses for crowds."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if iscrowd:
        runs, values, previous = [], mask.T.ravel(), False  # column-major runs, starting with 0s
        count = 0
        for value in values:
            if value != previous:
                runs.append(count)
                count, previous = 0, value
            count += 1
        runs.append(count)
        segmentation = {"size": list(mask.shape), "counts": runs}
    else:
        segmentation = {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "segmentation": segmentation, "area": float(mask.sum()),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)]}


def polygon_annotation(ann_id: int, image_id: int, category_id: int) -> dict:
    polygon = [5.0, 5.0, 55.0, 8.0, 30.0, 50.0]  # a triangle, medium-sized
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "segmentation": [polygon], "area": 1100.0, "bbox": [5.0, 5.0, 50.0, 45.0]}


def dataset(images: list, annotations: list) -> dict:
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


@pytest.fixture
def gt_dataset() -> dict:
    """Three images with small, medium and large objects of three categories, one polygon."""
    images = [{"id": 1, "height": 160, "width": 200}, {"id": 2, "height": 80, "width": 60},
              {"id": 5, "height": 100, "width": 100}]
    annotations = [
        annotation(1, 1, 3, box(160, 200, 20, 30, 140, 150)),   # large car, 120 x 120
        annotation(2, 1, 1, box(160, 200, 145, 170, 155, 180)),  # small person
        annotation(3, 2, 18, box(80, 60, 30, 10, 75, 50)),      # medium dog
        polygon_annotation(4, 2, 1),                             # medium person (triangle)
        annotation(5, 5, 18, box(100, 100, 50, 50, 90, 90)),    # medium dog
        annotation(6, 5, 1, box(100, 100, 0, 0, 20, 10)),       # small person
    ]
    return dataset(images, annotations)


def perfect_detections(gt: COCO):
    """Per image: the ground-truth masks, labels and falling scores."""
    for image_id in sorted(gt.getImgIds()):
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
        masks = np.stack([gt.annToMask(a).astype(bool) for a in anns])
        labels = np.array([LABEL_OF[a["category_id"]] for a in anns])
        yield image_id, masks, labels, np.linspace(0.9, 0.5, len(anns))


def test_perfect_prediction_is_100(gt_dataset):
    ap = MaskAP(gt_dataset)
    for image_id, masks, labels, scores in perfect_detections(COCO_from(gt_dataset)):
        ap.update(image_id, torch.from_numpy(masks), torch.from_numpy(labels), torch.from_numpy(scores))
    assert ap.compute() == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0, "APs": 100.0,
                                          "APm": 100.0, "APl": 100.0})
    assert len(ap) == 6 and ap.image_ids == [1, 2, 5]


@pytest.mark.parametrize("as_coco", [False, True])
def test_a_ground_truth_without_info_scores_under_pycocotools_2_0_10(gt_dataset, monkeypatch, as_coco):
    """pycocotools 2.0.10's loadRes reads ``self.dataset['info']`` (2.0.11 uses a default); COCO
    files may have no "info" (this ground truth has none)."""
    load_results = COCO.loadRes

    def load_results_as_2_0_10(self, results):
        assert "info" in self.dataset, "pycocotools 2.0.10 raises KeyError: 'info' here"
        return load_results(self, results)

    monkeypatch.setattr(COCO, "loadRes", load_results_as_2_0_10)
    assert "info" not in gt_dataset
    ap = MaskAP(COCO_from(gt_dataset) if as_coco else gt_dataset)
    for image_id, masks, labels, scores in perfect_detections(COCO_from(gt_dataset)):
        ap.update(image_id, torch.from_numpy(masks), torch.from_numpy(labels), torch.from_numpy(scores))
    assert ap.compute()["AP"] == pytest.approx(100.0)


def COCO_from(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(data))
    coco.createIndex()
    return coco


def test_equals_cocoeval_run_directly_on_the_exported_results(gt_dataset, tmp_path):
    rng = np.random.default_rng(0)
    ap = MaskAP(COCO_from(gt_dataset))
    for image_id, masks, labels, scores in perfect_detections(COCO_from(gt_dataset)):
        # imperfect: shifted masks, some wrong labels, random scores, random extra detections
        masks = np.roll(masks, shift=int(rng.integers(-6, 7)), axis=2)
        extra = rng.random((2,) + masks.shape[1:]) < 0.3
        masks = np.concatenate([masks, extra])
        labels = np.concatenate([labels, rng.integers(0, 3, 2)])
        labels[rng.random(len(labels)) < 0.2] = 0
        ap.update(image_id, masks, labels, rng.random(len(labels)))
    ours = ap.compute()

    path = tmp_path / "segm.json"
    ap.save_json(path)
    results = json.loads(path.read_text())
    assert len(results) == 12 and set(results[0]) == {"image_id", "category_id", "segmentation", "score"}
    assert isinstance(results[0]["segmentation"]["counts"], str)
    gt = COCO_from(gt_dataset)
    evaluator = COCOeval(gt, gt.loadRes(str(path)), iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    direct = [100.0 * float(v) for v in evaluator.stats[:6]]
    assert list(ours.values()) == direct
    assert 0 < ours["AP"] < 100


def test_a_missed_instance():
    image = {"id": 7, "height": 100, "width": 100}
    first, second = box(100, 100, 5, 5, 45, 45), box(100, 100, 50, 50, 90, 90)  # two medium dogs
    ap = MaskAP(dataset([image], [annotation(1, 7, 18, first), annotation(2, 7, 18, second)]))
    ap.update(7, first[None], np.array([2]), np.array([0.9]))
    # recall reaches 1/2 at precision 1: 51 of COCO's 101 recall points have precision 1
    result = ap.compute()
    for name in ("AP", "AP50", "AP75", "APm"):
        assert result[name] == pytest.approx(100 * 51 / 101)
    assert result["APs"] is None and result["APl"] is None  # no small or large object


def test_a_detection_on_a_crowd_region_is_no_false_positive():
    image = {"id": 3, "height": 100, "width": 100}
    dog, crowd = box(100, 100, 5, 5, 45, 45), box(100, 100, 50, 50, 90, 90)
    detections = (np.stack([dog, crowd]), np.array([2, 2]), np.array([0.8, 0.9]))

    with_crowd = MaskAP(dataset([image], [annotation(1, 3, 18, dog), annotation(2, 3, 18, crowd, iscrowd=1)]))
    with_crowd.update(3, *detections)
    assert with_crowd.compute()["AP"] == pytest.approx(100.0)

    # without the crowd annotation the same detection is a false positive ranked first
    without_crowd = MaskAP(dataset([image], [annotation(1, 3, 18, dog)]))
    without_crowd.update(3, *detections)
    assert without_crowd.compute()["AP"] == pytest.approx(50.0)


def test_merge_of_ranks_and_duplicate_images(gt_dataset):
    detections = list(perfect_detections(COCO_from(gt_dataset)))
    whole, rank0, rank1 = MaskAP(gt_dataset), MaskAP(gt_dataset), MaskAP(gt_dataset)
    for i, (image_id, masks, labels, scores) in enumerate(detections):
        whole.update(image_id, masks[:1], labels[:1], scores[:1])  # one object per image found
        (rank0 if i < 2 else rank1).update(image_id, masks[:1], labels[:1], scores[:1])
    rank1.update(2, np.zeros((0, 80, 60), bool), np.zeros(0, int), np.zeros(0))  # padded duplicate
    rank1_state = json.loads(json.dumps(rank1.state()))  # as sent between processes
    rank0.merge(rank1_state)
    assert rank0.results() == whole.results()
    assert rank0.compute() == whole.compute()
    assert rank0.compute()["AP"] < 100  # the other objects are missed


def test_nothing_detected_and_partial_evaluation(gt_dataset):
    ap = MaskAP(gt_dataset)
    assert ap.compute() == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": 0.0}
    image_id, masks, labels, scores = next(perfect_detections(COCO_from(gt_dataset)))
    ap.update(image_id, masks, labels, scores)
    assert ap.compute()["AP"] < 100  # the other images' objects count as missed
    assert ap.compute(image_ids=ap.image_ids)["AP"] == pytest.approx(100.0)


def test_label_mapping_and_errors(gt_dataset):
    ap = MaskAP(gt_dataset, category_ids=[18, 1])  # label 0 -> dog, 1 -> person
    mask = box(80, 60, 30, 10, 75, 50)
    ap.update(2, mask[None], np.array([0]), np.array([0.5]))
    assert ap.results()[0]["category_id"] == 18
    with pytest.raises(ValueError, match="already updated"):
        ap.update(2, mask[None], np.array([0]), np.array([0.5]))
    with pytest.raises(ValueError, match="not in the ground truth"):
        ap.update(4, mask[None], np.array([0]), np.array([0.5]))
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        ap.update(1, box(160, 200, 0, 0, 5, 5)[None], np.array([2]), np.array([0.5]))
    with pytest.raises(ValueError, match="the image is"):
        ap.update(1, mask[None], np.array([0]), np.array([0.5]))
    with pytest.raises(ValueError, match="not categories"):
        MaskAP(gt_dataset, category_ids=[2])

"""The panoptic and instance tasks' datasets, classes, evaluators and results files, on the
synthetic COCO toy set: predictions equal to the ground truth score PQ 100 / AP 100, the files of
``--format-only`` read back (pycocotools' loadRes; PNG ids equal to the json's segments)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import knet
from knet.data.coco import rgb_to_id
from knet.data.datasets import build_dataset
from knet.data.io import read_image
from knet.data.synthetic_coco import make_synthetic_coco
from knet.metrics import PanopticQuality
from knet.postprocess import InstancePrediction, PanopticPrediction, PanopticSegment
from knet.tasks import get_task


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """6 training and 5 held-out 64x64 scenes; crowd regions in about half of them."""
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=6, num_val=5, size=(64, 64), seed=3,
                               crowd_prob=0.5)


def _dataset(toy, task, split="val", training=False):
    task = get_task(task)
    config = knet.get_config(f"knet-r50-fpn-{task.name}-tiny")
    return build_dataset(task.dataset_kinds[0], toy.root, split, **task.dataset_options(config, training))


def _renumbered(truth: PanopticPrediction) -> PanopticPrediction:
    """The ground truth as the model numbers its segments: ids 1, 2, ... (COCO's are random 24-bit)."""
    segment_map = torch.zeros_like(truth.segment_map)
    segments = []
    for new_id, segment in enumerate(truth.segments, 1):
        segment_map[truth.segment_map == segment.id] = new_id
        segments.append(PanopticSegment(new_id, segment.label, 0.9, segment.area, -1, segment.is_thing))
    return PanopticPrediction(segment_map, segments)


def test_datasets_and_classes_are_the_tasks(toy):
    panoptic, instance = get_task("panoptic"), get_task("instance")
    assert panoptic.dataset_kinds == ("coco_panoptic",) and instance.dataset_kinds == ("coco_instance",)
    assert get_task("semantic").dataset_kinds == ("folder", "ade20k")
    assert panoptic.default_splits(toy.root) == ("train", "val")
    train_set = _dataset(toy, "panoptic", "train", training=True)
    assert all(any(s["isthing"] for s in train_set[i]["segments"]) for i in range(len(train_set)))

    config = panoptic.adopt_classes(knet.get_config("knet-r50-fpn-panoptic-tiny"), train_set)
    assert (config.num_thing_classes, config.num_stuff_classes) == (3, 3)
    assert config.class_names == ["disc", "box", "triangle", "sky", "grass", "wall"] == toy.class_names
    assert config.category_ids == [1, 2, 8, 5, 10, 12] and config.isthing == [True] * 3 + [False] * 3
    assert config.palette == train_set.palette
    config = instance.adopt_classes(knet.get_config("knet-r50-fpn-instance-tiny"), _dataset(toy, "instance"))
    assert (config.num_thing_classes, config.num_stuff_classes, config.category_ids) == (3, 0, [1, 2, 8])


def test_ground_truth_as_predictions_scores_pq_100(toy):
    task = get_task("panoptic")
    dataset = _dataset(toy, "panoptic")
    config = task.adopt_classes(knet.get_config("knet-r50-fpn-panoptic-tiny"), dataset)
    evaluator = task.evaluator(config, dataset)
    items = [dataset[i] for i in range(len(dataset))]
    assert any(s["iscrowd"] for item in items for s in item["segments"])  # crowd regions are in the test
    evaluator.process(items, [_renumbered(task.ground_truth(item)) for item in items])
    metrics = evaluator.evaluate()
    assert {k: metrics[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")} == \
        dict.fromkeys(("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"), 100.0)
    assert list(metrics["per_class"]) == toy.class_names
    assert metrics["per_class"]["disc"]["PQ"] == 100.0 and metrics["per_class"]["sky"]["isthing"] is False
    table = task.format_metrics(metrics)
    assert "| disc " in table and "summary:" in table and "| Things |" in table and "100.00" in table

    # A prediction that misses the first stuff segment of every image and mislabels a thing.
    evaluator.reset()
    for item in items:
        truth = _renumbered(task.ground_truth(item))
        first_stuff = next(s for s in truth.segments if not s.is_thing)
        segment_map = truth.segment_map.clone()
        segment_map[segment_map == first_stuff.id] = 0
        segments = [s for s in truth.segments if s is not first_stuff]
        thing = next(s for s in segments if s.is_thing)
        segments[segments.index(thing)] = PanopticSegment(thing.id, (thing.label + 1) % 3, 0.9, thing.area, -1, True)
        evaluator.process([item], [PanopticPrediction(segment_map, segments)])
    worse = evaluator.evaluate()
    assert worse["PQ"] < 100.0 and worse["PQ_st"] < 100.0 and worse["RQ_th"] < 100.0


def test_ground_truth_as_predictions_scores_ap_100(toy):
    task = get_task("instance")
    dataset = _dataset(toy, "instance")
    config = task.adopt_classes(knet.get_config("knet-r50-fpn-instance-tiny"), dataset)
    evaluator = task.evaluator(config, dataset)
    items = [dataset[i] for i in range(len(dataset))]
    evaluator.process(items, [task.ground_truth(item) for item in items])
    metrics = evaluator.evaluate()
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == 100.0
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "AP50" in task.format_metrics(metrics) and "100.00" in task.format_metrics(metrics)
    # the dataset's own index was not rewritten by COCOeval (it keeps polygons)
    assert any(isinstance(a["segmentation"], list) for a in dataset.coco.dataset["annotations"])

    evaluator.reset()  # half the scores flipped: the ranking, hence AP, suffers
    for item in items:
        truth = task.ground_truth(item)
        noise = InstancePrediction(truth.masks.roll(7, dims=2), truth.labels, torch.full_like(truth.scores, 2.0),
                               truth.proposal_indices)
        evaluator.process([item], [InstancePrediction(torch.cat([truth.masks, noise.masks]),
                                                  torch.cat([truth.labels, noise.labels]),
                                                  torch.cat([truth.scores, noise.scores]),
                                                  torch.cat([truth.proposal_indices, noise.proposal_indices]))])
    assert evaluator.evaluate()["AP"] < 100.0


def test_ranks_combine_their_instance_detections(toy, monkeypatch):
    """Rank 0 of two scores every image: its own detections and those gathered from rank 1."""
    from knet.engine.distributed import DistInfo
    from knet.tasks import instance as module

    task = get_task("instance")
    dataset = _dataset(toy, "instance")
    config = task.adopt_classes(knet.get_config("knet-r50-fpn-instance-tiny"), dataset)
    ranks = [task.evaluator(config, dataset) for _ in range(2)]
    for rank, evaluator in enumerate(ranks):
        items = [dataset[i] for i in range(rank, len(dataset), 2)]
        evaluator.process(items, [task.ground_truth(item) for item in items])
    states = [evaluator.metric.state() for evaluator in ranks]
    monkeypatch.setattr(module, "gather_objects", lambda obj, info: states)
    monkeypatch.setattr(module, "from_main", lambda obj, info: obj)
    assert ranks[0].evaluate(DistInfo(rank=0, world_size=2))["AP"] == 100.0
    assert ranks[0].metric.image_ids == sorted(dataset.image_ids)


def test_panoptic_results_files_read_back(toy, tmp_path):
    task = get_task("panoptic")
    dataset = _dataset(toy, "panoptic")
    config = task.adopt_classes(knet.get_config("knet-r50-fpn-panoptic-tiny"), dataset)
    formatter = task.formatter(config, dataset, tmp_path / "out")
    items = [dataset[i] for i in range(len(dataset))]
    formatter.process(items, [_renumbered(task.ground_truth(item)) for item in items])
    written = formatter.evaluate()
    assert written == {"files": [str(tmp_path / "out" / "panoptic.json"), str(tmp_path / "out" / "panoptic")],
                       "num_images": len(dataset)}
    data = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    assert data["categories"] == dataset.categories
    pq = PanopticQuality(dataset.categories)
    for item, annotation in zip(items, data["annotations"]):
        assert annotation["image_id"] == item["image_id"]
        ids = rgb_to_id(read_image(tmp_path / "out" / "panoptic" / annotation["file_name"]))
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in annotation["segments_info"]}
        for segment in annotation["segments_info"]:
            assert segment["category_id"] == dataset.category_ids[segment["label"]]
            assert segment["area"] == int((ids == segment["id"]).sum())
        pq.update(ids, annotation["segments_info"], item["pan_map"], item["segments"])
    assert pq.compute()["PQ"] == pytest.approx(100.0)


def test_instance_results_file_reads_back_with_pycocotools(toy, tmp_path):
    task = get_task("instance")
    dataset = _dataset(toy, "instance")
    config = task.adopt_classes(knet.get_config("knet-r50-fpn-instance-tiny"), dataset)
    formatter = task.formatter(config, dataset, tmp_path)
    items = [dataset[i] for i in range(len(dataset))]
    formatter.process(items, [task.ground_truth(item) for item in items])
    assert formatter.evaluate() == {"files": [str(tmp_path / "segm.json")], "num_images": len(dataset)}
    gt = COCO(str(dataset.ann_file))
    results = gt.loadRes(str(tmp_path / "segm.json"))
    assert len(results.getAnnIds()) == sum(len(item["labels"]) for item in items)
    evaluation = COCOeval(gt, results, iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_semantic_task_has_no_results_format(toy):
    from knet.errors import KnetError

    with pytest.raises(KnetError, match="--format-only"):
        get_task("semantic").formatter(knet.get_config("knet-r50-fcn-tiny"), None, toy.root)

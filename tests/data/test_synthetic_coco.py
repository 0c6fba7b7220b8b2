"""The synthetic COCO toy set: files in both COCO formats, determinism, scene content and
separable classes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from knet.data.coco import CocoInstanceDataset, CocoPanopticDataset
from knet.data.synthetic import SyntheticDataError
from knet.data.synthetic_coco import make_coco_scene, make_synthetic_coco, synthetic_coco_categories


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_coco")
    return make_synthetic_coco(root, num_train=10, num_val=3, size=(72, 96), seed=5, crowd_prob=0.5)


def test_layout_and_both_formats(toy):
    root = toy.root
    assert toy.splits == {"train": 10, "val": 3} and toy.size == (72, 96)
    assert toy.class_names == ["disc", "box", "triangle", "sky", "grass", "wall"]
    for split, count in toy.splits.items():
        panoptic = json.loads((root / "annotations" / f"panoptic_{split}.json").read_text())
        instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert len(panoptic["images"]) == len(panoptic["annotations"]) == count
        assert panoptic["images"] == instances["images"]
        assert sorted(p.name for p in (root / split).iterdir()) == [i["file_name"] for i in panoptic["images"]]
        assert len(list((root / "annotations" / f"panoptic_{split}").glob("*.png"))) == count
        assert panoptic["categories"] == synthetic_coco_categories()
        assert [c["id"] for c in instances["categories"]] == [1, 2, 8]
        things = sum(s["category_id"] in (1, 2, 8) for a in panoptic["annotations"] for s in a["segments_info"])
        assert things == len(instances["annotations"])
    ids = [a["id"] for a in json.loads((root / "annotations" / "instances_train.json").read_text())["annotations"]]
    assert len(set(ids)) == len(ids)
    assert len(CocoPanopticDataset(root, "train")) == 10 and len(CocoInstanceDataset(root, "val")) == 3


def test_instance_json_uses_every_coco_encoding(toy):
    annotations = json.loads((toy.root / "annotations" / "instances_train.json").read_text())["annotations"]
    kinds = set()
    for ann in annotations:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            kinds.add("polygon")
            assert not ann["iscrowd"]
        elif isinstance(segmentation["counts"], list):
            kinds.add("uncompressed rle")
            assert ann["iscrowd"]  # COCO's crowd regions
        else:
            kinds.add("rle")  # a thing cut by a neighbour it touches
    assert kinds == {"polygon", "uncompressed rle", "rle"}


def test_deterministic_and_prefix_stable(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_train=3, num_val=1, size=(48, 64), seed=2)
    b = make_synthetic_coco(tmp_path / "b", num_train=5, num_val=1, size=(48, 64), seed=2)
    c = make_synthetic_coco(tmp_path / "c", num_train=3, num_val=1, size=(48, 64), seed=3)
    pa, pb, pc = (CocoPanopticDataset(d.root, "train") for d in (a, b, c))
    for i in range(3):
        np.testing.assert_array_equal(pa[i]["image"], pb[i]["image"])
        np.testing.assert_array_equal(pa[i]["pan_map"], pb[i]["pan_map"])
    assert (a.root / "annotations" / "instances_val.json").read_bytes() == \
           (b.root / "annotations" / "instances_val.json").read_bytes()
    assert not np.array_equal(pa[0]["image"], pc[0]["image"])


def _adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a[1:] & b[:-1]).any() or (a[:-1] & b[1:]).any() or (a[:, 1:] & b[:, :-1]).any()
                or (a[:, :-1] & b[:, 1:]).any())


def test_scene_content():
    touching = crowds = voids = 0
    stuff_counts = set()
    for seed in range(12):
        scene = make_coco_scene(seed, (96, 128), crowd_prob=0.5)
        ids = [s["id"] for s in scene.segments]
        assert len(set(ids)) == len(ids) and 0 not in ids
        assert set(np.unique(scene.pan_map)) - {0} == set(ids)  # every listed segment has pixels
        assert max(ids) > 65535  # ids spread over the three PNG channels
        things = [s for s in scene.segments if s["category_id"] in (1, 2, 8) and not s["iscrowd"]]
        assert 1 <= len(things) <= 5
        stuff_counts.add(sum(s["category_id"] in (5, 10, 12) for s in scene.segments))
        masks = [scene.pan_map == s["id"] for s in things]
        touching += any(_adjacent(masks[i], masks[j]) for i in range(len(masks)) for j in range(i))
        crowds += sum(s["iscrowd"] for s in scene.segments)
        voids += bool((scene.pan_map == 0).any())
    assert stuff_counts == {2, 3}
    assert touching >= 2 and crowds >= 2 and voids >= 2


def test_classes_are_separable_by_colour(toy):
    """Mean colour of each class over the set: far apart, so a small model can tell them."""
    pan = CocoPanopticDataset(toy.root, "train")
    sums, counts = np.zeros((6, 3)), np.zeros(6)
    for i in range(len(pan)):
        item = pan[i]
        for segment in item["segments"]:
            pixels = item["image"][item["pan_map"] == segment["id"]]
            sums[segment["label"]] += pixels.sum(0)
            counts[segment["label"]] += len(pixels)
    assert (counts > 0).all()
    means = sums / counts[:, None]
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(6, dtype=bool)].min() > 40


@pytest.mark.parametrize("kwargs", [{"num_train": -1}, {"num_val": 1.5}, {"size": (20, 64)},
                                    {"image_format": "bmp"}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(SyntheticDataError):
        make_synthetic_coco(tmp_path, **{"num_train": 1, "num_val": 1, **kwargs})

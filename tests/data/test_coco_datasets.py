"""COCO panoptic / instance datasets: both formats of the toy set agree, mmdet 2.x's target rules
(crowd, skipped segments, filters), image-info splits, the metrics' contract and every bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from knet.data.coco import (CocoInstanceDataset, CocoPanopticDataset, annotation_file, build_coco_dataset,
                            decode_segmentation, detect_coco_kind, id_to_rgb, rgb_to_id)
from knet.data.coco_categories import COCO_PANOPTIC
from knet.data.io import read_image, write_image
from knet.data.synthetic_coco import make_synthetic_coco
from knet.errors import DataError
from knet.metrics import MaskAP, PanopticQuality


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """4 training and 6 validation 64x80 scenes, lossless images, a crowd region in most."""
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, num_train=4, num_val=6, size=(64, 80), seed=1, crowd_prob=1.0, image_format="png")
    return root


@pytest.fixture
def copy(toy, tmp_path):
    """A private copy of the toy root, to break."""
    root = tmp_path / "coco"
    shutil.copytree(toy, root)
    return root


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)


# ---- metadata and detection ---------------------------------------------------------------------
def test_detect_kinds(toy, tmp_path):
    assert detect_coco_kind(toy) == ("coco_panoptic", "coco_instance")
    assert detect_coco_kind(toy, "val") == ("coco_panoptic", "coco_instance")
    assert detect_coco_kind(toy, "test") == ()
    assert detect_coco_kind(tmp_path) == ()  # no annotations/
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    assert detect_coco_kind(tmp_path) == ("coco_instance",)
    assert detect_coco_kind(tmp_path, "val2017") == ("coco_instance",)
    (tmp_path / "annotations" / "image_info_test-dev2017.json").write_text("{}")
    assert detect_coco_kind(tmp_path, "test-dev2017") == ("coco_panoptic", "coco_instance")
    assert annotation_file(tmp_path, "test-dev2017", "coco_instance")[1] is False


def test_metadata_contiguous_labels(toy):
    pan = CocoPanopticDataset(toy, "val")
    ins = CocoInstanceDataset(toy, "val")
    # Things first by id (1, 2, 8), then stuff by id (5, 10, 12).
    assert pan.class_names == ["disc", "box", "triangle", "sky", "grass", "wall"]
    assert pan.category_ids == [1, 2, 8, 5, 10, 12]
    assert pan.isthing == [True, True, True, False, False, False]
    assert (pan.num_classes, pan.num_thing_classes, pan.num_stuff_classes) == (6, 3, 3)
    assert pan.palette[0] == [220, 40, 40]
    assert [c["id"] for c in pan.categories] == pan.category_ids
    assert ins.class_names == ["disc", "box", "triangle"] and ins.category_ids == [1, 2, 8]
    assert ins.num_classes == 3 and all(ins.isthing)
    assert len(pan) == len(ins) == 6 and pan.has_labels and ins.has_labels
    assert pan.image_ids == ins.image_ids
    assert pan.samples[0][0].name == pan.relative_name(0) and pan.samples[0][1].suffix == ".png"
    assert isinstance(build_coco_dataset("coco_instance", toy, "train"), CocoInstanceDataset)
    with pytest.raises(DataError, match="unknown COCO dataset kind"):
        build_coco_dataset("coco", toy)


# ---- items ---------------------------------------------------------------------------------------
def test_panoptic_item_is_consistent(toy):
    pan = CocoPanopticDataset(toy, "val")
    for item in (pan[i] for i in range(len(pan))):
        image, pan_map, sem = item["image"], item["pan_map"], item["sem_seg"]
        assert image.dtype == np.uint8 and image.shape == (64, 80, 3)
        assert pan_map.dtype == np.int32 and sem.dtype == np.uint8 and sem.shape == pan_map.shape
        assert item["masks"].dtype == bool and item["labels"].dtype == np.int64
        assert item["label_path"].endswith(".png")
        for segment in item["segments"]:
            region = pan_map == segment["id"]
            assert region.sum() == segment["area"]
            assert (sem[region] == segment["label"]).all()  # crowd things too (mmdet 2.x)
            assert segment["isthing"] == (segment["label"] < 3)
            assert pan.category_ids[segment["label"]] == segment["category_id"]
        assert (sem[pan_map == 0] == 255).all()
        things = [s for s in item["segments"] if s["isthing"] and not s["iscrowd"]]
        assert [s["label"] for s in things] == item["labels"].tolist()
        for segment, mask in zip(things, item["masks"]):
            np.testing.assert_array_equal(mask, pan_map == segment["id"])
    assert pan[-1]["image_id"] == pan.image_ids[-1]
    with pytest.raises(IndexError):
        pan[len(pan)]


def test_both_formats_give_the_same_instances(toy):
    pan = CocoPanopticDataset(toy, "val")
    ins = CocoInstanceDataset(toy, "val")
    crowds = 0
    for i in range(len(pan)):
        a, b = pan[i], ins[i]
        assert a["image_id"] == b["image_id"]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["masks"], b["masks"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert b["sem_seg"] is None
        pan_things = [s for s in a["segments"] if s["isthing"]]
        assert [(s["label"], s["iscrowd"], s["area"]) for s in pan_things] == \
               [(s["label"], s["iscrowd"], s["area"]) for s in b["instances"]]
        for segment, ann in zip(pan_things, ins.coco.imgToAnns[a["image_id"]]):
            mask = decode_segmentation(ann["segmentation"], 64, 80)
            np.testing.assert_array_equal(mask, a["pan_map"] == segment["id"])
            crowds += segment["iscrowd"]
    assert crowds > 0  # the fixture exercises crowd regions


def test_crowd_is_background_for_training_and_ignored_in_evaluation(toy):
    pan = CocoPanopticDataset(toy, "val")
    ins = CocoInstanceDataset(toy, "val")
    index = next(i for i in range(len(pan)) if any(s["iscrowd"] for s in pan[i]["segments"]))
    item = pan[index]
    crowd = next(s for s in item["segments"] if s["iscrowd"])
    region = item["pan_map"] == crowd["id"]
    assert not item["masks"][:, region].any()  # no training mask covers the crowd
    assert not ins[index]["masks"][:, region].any()
    assert ins.coco.loadAnns(ins.coco.getAnnIds(imgIds=[item["image_id"]], iscrowd=True))

    # Perfect predictions score 100 with the crowd regions as ignore regions (no FP, no FN).
    ap = MaskAP(ins.coco, ins.category_ids)
    pq = PanopticQuality(pan.categories)
    for i in range(len(ins)):
        a, b = pan[i], ins[i]
        ap.update(b["image_id"], b["masks"], b["labels"], np.ones(len(b["labels"])))
        pq.update(a["pan_map"], a["segments"], a["pan_map"], a["segments"])
    assert ap.compute()["AP"] == pytest.approx(100.0)
    assert pq.compute()["PQ"] == pytest.approx(100.0)


def test_training_filters_like_mmdet(copy):
    pan_json = copy / "annotations" / "panoptic_train.json"
    ins_json = copy / "annotations" / "instances_train.json"
    data = json.loads(pan_json.read_text())
    ids = [image["id"] for image in data["images"]]
    stuff_only, crowd_only = ids[0], ids[1]

    def keep_stuff(entry):  # drop the things of image 0 from the PNG and the json
        png = copy / "annotations" / "panoptic_train" / entry["file_name"]
        pan_map = rgb_to_id(read_image(png))
        things = [s for s in entry["segments_info"] if s["category_id"] in (1, 2, 8)]
        for s in things:
            pan_map[pan_map == s["id"]] = 0
        write_image(png, id_to_rgb(pan_map))
        entry["segments_info"] = [s for s in entry["segments_info"] if s not in things]

    def change_panoptic(d):
        keep_stuff(d["annotations"][0])
        for s in d["annotations"][1]["segments_info"]:
            s["iscrowd"] = 1 if s["category_id"] in (1, 2, 8) else 0

    edit_json(pan_json, change_panoptic)
    edit_json(ins_json, lambda d: d.update(annotations=[
        dict(a, iscrowd=1) if a["image_id"] == crowd_only else a
        for a in d["annotations"] if a["image_id"] != stuff_only]))

    for cls in (CocoPanopticDataset, CocoInstanceDataset):
        assert cls(copy, "train").image_ids == ids
        filtered = cls(copy, "train", filter_empty_gt=True)
        # An image without things goes; one with crowd things only stays (mmdet counts them).
        assert filtered.image_ids == ids[1:]
        assert len(filtered[0]["labels"]) == 0 and filtered[0]["masks"].shape == (0, 64, 80)
        with pytest.raises(DataError, match="no images left"):
            cls(copy, "train", min_size=65)  # every image is 64 px high
        assert cls(copy, "train", min_size=64).image_ids == ids


def test_segments_mmdet_skips_are_void_for_training(copy):
    path = copy / "annotations" / "panoptic_val.json"
    data = json.loads(path.read_text())
    entry = data["annotations"][0]
    zero_area, thin = entry["segments_info"][0], entry["segments_info"][-1]
    zero_area["area"] = 0
    thin["bbox"][3] = 0.5
    path.write_text(json.dumps(data))
    item = CocoPanopticDataset(copy, "val")[0]
    for segment in (zero_area, thin):
        region = item["pan_map"] == segment["id"]
        assert (item["sem_seg"][region] == 255).all()
        assert not item["masks"][:, region].any()
        assert any(s["id"] == segment["id"] for s in item["segments"])  # still evaluation ground truth


def test_image_info_split_has_no_labels(copy):
    (copy / "val").rename(copy / "test2017")
    data = json.loads((copy / "annotations" / "instances_val.json").read_text())
    info = {"images": data["images"], "categories": data["categories"]}  # as image_info_test-dev2017.json
    (copy / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    ins = CocoInstanceDataset(copy, "test-dev2017")
    assert not ins.has_labels and len(ins) == 6 and ins.image_dir.name == "test2017"
    item = ins[0]
    assert item["image"].shape == (64, 80, 3)
    assert item["masks"] is None and item["labels"] is None and item["instances"] is None

    # Without isthing in its categories, the panoptic reader falls back to COCO's 133.
    pan = CocoPanopticDataset(copy, "test-dev2017")
    assert not pan.has_labels and pan.num_classes == 133 and pan.class_names == list(COCO_PANOPTIC.names)
    assert pan[0]["pan_map"] is None and pan[0]["sem_seg"] is None and pan[0]["segments"] is None
    # K-Net's panoptic_image_info file carries the panoptic categories.
    panoptic = json.loads((copy / "annotations" / "panoptic_val.json").read_text())
    (copy / "annotations" / "panoptic_image_info_test-dev2017.json").write_text(
        json.dumps({"images": data["images"], "categories": panoptic["categories"]}))
    pan = CocoPanopticDataset(copy, "test-dev2017")
    assert pan.num_classes == 6 and not pan.has_labels


# ---- bad input -----------------------------------------------------------------------------------
def test_missing_and_unparsable_json(copy, tmp_path):
    with pytest.raises(DataError) as err:
        CocoPanopticDataset(copy, "test")
    one_line_error(err, "panoptic_test.json", "image_info_test.json")
    with pytest.raises(DataError) as err:
        CocoInstanceDataset(copy, "val", ann_file=copy / "annotations" / "nothere.json")
    one_line_error(err, "nothere.json", "not found")
    path = copy / "annotations" / "instances_val.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError) as err:
        CocoInstanceDataset(copy, "val")
    one_line_error(err, path, "not valid json")
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="not a COCO annotation file"):
        CocoInstanceDataset(copy, "val")
    with pytest.raises(DataError, match="dataset folder not found"):
        CocoInstanceDataset(tmp_path / "missing", "val")


def test_annotation_of_unknown_image_and_empty_split(copy):
    path = copy / "annotations" / "instances_val.json"
    edit_json(path, lambda d: d["annotations"][3].update(image_id=424242))
    with pytest.raises(DataError) as err:
        CocoInstanceDataset(copy, "val")
    one_line_error(err, path, "annotations[3]", "424242")
    pan_path = copy / "annotations" / "panoptic_val.json"
    edit_json(pan_path, lambda d: d["annotations"][1].update(image_id=777))
    with pytest.raises(DataError) as err:
        CocoPanopticDataset(copy, "val")
    one_line_error(err, pan_path, "777")
    edit_json(pan_path, lambda d: d.update(images=[], annotations=[]))
    with pytest.raises(DataError) as err:
        CocoPanopticDataset(copy, "val")
    one_line_error(err, pan_path, "no images")


def test_png_ids_must_match_segments_info(copy):
    path = copy / "annotations" / "panoptic_val.json"
    data = json.loads(path.read_text())
    first, second = data["annotations"][0], data["annotations"][1]
    dropped = first["segments_info"].pop(0)
    second["segments_info"].append({"id": 99, "category_id": 5, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1]})
    path.write_text(json.dumps(data))
    pan = CocoPanopticDataset(copy, "val")
    with pytest.raises(DataError) as err:
        pan[0]
    one_line_error(err, first["file_name"], dropped["id"], first["image_id"], "not in its segments_info")
    with pytest.raises(DataError) as err:
        pan[1]
    one_line_error(err, second["file_name"], "segment id 99", second["image_id"], "not in the PNG")
    assert pan[2]["pan_map"] is not None  # one bad image does not spoil the others (--skip-bad)


def test_unknown_category_is_an_item_error(copy):
    edit_json(copy / "annotations" / "panoptic_val.json",
              lambda d: d["annotations"][0]["segments_info"][0].update(category_id=3))
    edit_json(copy / "annotations" / "instances_val.json", lambda d: d["annotations"][0].update(category_id=5))
    pan, ins = CocoPanopticDataset(copy, "val"), CocoInstanceDataset(copy, "val")
    with pytest.raises(DataError) as err:
        pan[0]
    one_line_error(err, "panoptic_val.json", "category id 3", pan.image_ids[0])
    first_image = json.loads((copy / "annotations" / "instances_val.json").read_text())["annotations"][0]["image_id"]
    with pytest.raises(DataError) as err:
        ins[ins.image_ids.index(first_image)]
    one_line_error(err, "instances_val.json", "category id 5", first_image)


def test_missing_or_resized_files(copy):
    pan = CocoPanopticDataset(copy, "val")
    image_path, png_path = pan.samples[0]
    image_path.unlink()
    with pytest.raises(DataError) as err:
        pan[0]
    one_line_error(err, image_path, "image id", pan.image_ids[0])
    png_path.unlink()
    write_image(pan.samples[1][1], np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DataError) as err:
        pan[1]
    one_line_error(err, pan.samples[1][1], "10x10")
    shutil.copy(pan.samples[2][0], image_path)  # image 0 back, its PNG still missing
    with pytest.raises(DataError) as err:
        pan[0]
    one_line_error(err, png_path, "not found")
    edit_json(copy / "annotations" / "instances_val.json", lambda d: d["images"][3].update(width=81))
    with pytest.raises(DataError) as err:
        CocoInstanceDataset(copy, "val")[3]
    one_line_error(err, "81x64")
    shutil.rmtree(copy / "annotations" / "panoptic_val")
    with pytest.raises(DataError, match="missing folder"):
        CocoPanopticDataset(copy, "val")


def test_bad_segmentation_and_categories(copy):
    path = copy / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    ann = next(a for a in data["annotations"] if not a["iscrowd"])
    ann["segmentation"] = {"counts": "x"}
    path.write_text(json.dumps(data))
    ins = CocoInstanceDataset(copy, "val")
    with pytest.raises(DataError) as err:
        ins[ins.image_ids.index(ann["image_id"])]
    one_line_error(err, "annotation", ann["id"], "bad segmentation")
    edit_json(copy / "annotations" / "panoptic_val.json", lambda d: d["categories"][0].pop("isthing"))
    with pytest.raises(DataError, match="has no 'isthing'"):
        CocoPanopticDataset(copy, "val")


# ---- helpers -------------------------------------------------------------------------------------
def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255], [256, 65535, 256 ** 3 - 1]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[1, 0].tolist() == [0, 1, 0] and rgb[1, 2].tolist() == [255, 255, 255]
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


def test_decode_segmentation_forms():
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:4, 2:6] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    np.testing.assert_array_equal(decode_segmentation({"size": [6, 7], "counts": rle["counts"].decode()}, 6, 7), mask)
    # Uncompressed (column-major runs, starting with zeros): 6 + 6 + 1 zeros, then 3 ones, ...
    runs = {"size": [6, 7], "counts": [13, 3, 3, 3, 3, 3, 3, 3, 8]}
    np.testing.assert_array_equal(decode_segmentation(runs, 6, 7), mask)
    square = decode_segmentation([[1, 1, 5, 1, 5, 4, 1, 4]], 6, 7)
    assert square.sum() == 12 and square[1:4, 1:5].all()
    assert decode_segmentation([[1, 1, 5, 5]], 6, 7).shape == (6, 7)  # a 2-point polygon is not a box
    for bad in (None, [], {"size": [6, 8], "counts": "x"}, {"size": [6, 7], "counts": 3}):
        with pytest.raises(ValueError):
            decode_segmentation(bad, 6, 7)

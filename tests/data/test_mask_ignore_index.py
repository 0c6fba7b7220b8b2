"""``data.ignore_index`` of the panoptic/instance models reaches the data: the COCO datasets' void
pixels, the training padding and the batch collate, and values that cannot work are refused."""
from __future__ import annotations

import numpy as np
import pytest

import knet
from knet.data.coco import CocoInstanceDataset, CocoPanopticDataset
from knet.data.datasets import build_dataset
from knet.data.synthetic_coco import make_synthetic_coco
from knet.errors import DataError, KnetError
from knet.tasks import get_task

IGNORE = 200


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """2 training and 3 validation 64x80 scenes (3 things, 3 stuff), lossless, crowd regions."""
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, num_train=2, num_val=3, size=(64, 80), seed=3, crowd_prob=1.0, image_format="png")
    return root


def toy_config(ignore_index: int):
    """A tiny panoptic config with the toy set's classes and the given void label."""
    config = knet.get_config("knet-r50-fpn-panoptic-tiny").replace(
        num_thing_classes=3, num_stuff_classes=3, class_names=None, palette=None, isthing=None, category_ids=None)
    return config.replace({"data.ignore_index": ignore_index, "data.train_scales": [[80, 64]]})


def test_the_dataset_marks_void_pixels_with_the_configured_value(toy):
    task = get_task("panoptic")
    default = build_dataset("coco_panoptic", toy, "val", **task.dataset_options(toy_config(255), training=False))
    other = build_dataset("coco_panoptic", toy, "val", **task.dataset_options(toy_config(IGNORE), training=False))
    assert (default.ignore_index, other.ignore_index) == (255, IGNORE)
    void_seen = False
    for index in range(len(default)):
        a, b = default[index]["sem_seg"], other[index]["sem_seg"]
        void = a == 255
        void_seen |= bool(void.any())
        assert (b[void] == IGNORE).all() and not (b[~void] == IGNORE).any()
        np.testing.assert_array_equal(a[~void], b[~void])
        assert (a[~void] < default.num_classes).all()
    assert void_seen  # the toy set has void pixels (around crowd regions and between segments)
    # The training options carry it too, next to mmdetection's filters.
    options = task.dataset_options(toy_config(IGNORE), training=True)
    assert options["ignore_index"] == IGNORE and options["filter_empty_gt"]


def test_padding_and_collate_use_the_configured_value(toy):
    config = toy_config(IGNORE)
    task = get_task("panoptic")
    dataset = CocoPanopticDataset(toy, "train", ignore_index=IGNORE)
    transform = task.train_transform(config)
    assert transform.seg_pad_value == IGNORE
    item = dataset[0]
    small = task.train_sample(item, transform, np.random.default_rng(0), config)
    # A narrower crop of the same item pads to a smaller shape, so the collate pads it further.
    narrow = {k: (v[..., :40] if k in ("image", "masks", "sem_seg") else v) for k, v in item.items()}
    narrow["image"] = item["image"][:, :40]
    narrow_sample = task.train_sample(narrow, transform, np.random.default_rng(1), config)
    assert small.seg_pad_value == narrow_sample.seg_pad_value == IGNORE
    h, w = small.img_shape
    assert (small.sem_seg[h:] == IGNORE).all() and (small.sem_seg[:, w:] == IGNORE).all()
    batch = task.collate([narrow_sample, small])
    sem = batch.sem_seg[0].numpy()
    nh, nw = narrow_sample.pad_shape
    assert sem.shape == tuple(batch.batch_shape) and nw < sem.shape[1]
    assert (sem[:, nw:] == IGNORE).all() and (sem[nh:] == IGNORE).all()
    assert not (sem == 255).any()


def test_values_that_cannot_work_are_refused_in_one_line(toy):
    for bad, fragment in ((2, "is a class label"), (256, "0..255"), (-1, "0..255")):
        for cls in (CocoPanopticDataset, CocoInstanceDataset):
            with pytest.raises(DataError) as excinfo:
                cls(toy, "val", ignore_index=bad)
            message = str(excinfo.value)
            assert f"data.ignore_index={bad}" in message and fragment in message and "\n" not in message
    # A value above the instance set's 3 classes but among the panoptic set's 6 labels.
    assert CocoInstanceDataset(toy, "val", ignore_index=4).ignore_index == 4
    with pytest.raises(DataError, match="data.ignore_index=4"):
        CocoPanopticDataset(toy, "val", ignore_index=4)
    # The model config refuses them too (a KnetError naming the key and the value).
    with pytest.raises(KnetError, match=r"data.ignore_index=5 is the label of a class"):
        toy_config(5)
    with pytest.raises(KnetError, match=r"data.ignore_index=300"):
        toy_config(300)
    assert toy_config(6).data.ignore_index == 6  # the first value above the labels

"""The shipped COCO category tables and the contiguous numbering of K-Net / mmdet 2.x."""
from __future__ import annotations

import pytest

from knet.data.coco_categories import (COCO_INSTANCE, COCO_PANOPTIC, COCO_PANOPTIC_CLASSES,
                                       COCO_STUFF_CLASSES, COCO_THING_CLASSES,
                                       coco_category_id_to_label, coco_instance_categories,
                                       coco_instance_class_names, coco_label_to_category_id,
                                       coco_panoptic_categories, coco_panoptic_palette,
                                       contiguous_categories)


def test_counts_names_and_ids():
    assert (len(COCO_PANOPTIC_CLASSES), len(COCO_THING_CLASSES), len(COCO_STUFF_CLASSES)) == (133, 80, 53)
    assert COCO_PANOPTIC_CLASSES[:3] == ("person", "bicycle", "car")
    assert COCO_PANOPTIC_CLASSES[7] == "truck"  # mmdet 2.x's CLASSES has ' truck'
    assert COCO_THING_CLASSES[-1] == "toothbrush" and COCO_STUFF_CLASSES[0] == "banner"
    assert COCO_PANOPTIC_CLASSES[-3:] == ("rock-merged", "wall-other-merged", "rug-merged")
    assert COCO_PANOPTIC.ids[:3] == (1, 2, 3) and COCO_PANOPTIC.ids[79:81] == (90, 92)
    assert COCO_PANOPTIC.ids[-1] == 200
    assert COCO_PANOPTIC.isthing == (True,) * 80 + (False,) * 53
    assert len(set(COCO_PANOPTIC_CLASSES)) == 133


def test_category_lists():
    panoptic = coco_panoptic_categories()
    assert len(panoptic) == 133 and sum(c["isthing"] for c in panoptic) == 80
    assert panoptic[0] == {"id": 1, "name": "person", "supercategory": "person", "isthing": 1,
                           "color": [220, 20, 60]}
    assert panoptic[-1]["name"] == "rug-merged" and panoptic[-1]["color"] == [250, 141, 255]
    panoptic[0]["color"][0] = 0  # fresh copies
    assert coco_panoptic_categories()[0]["color"] == [220, 20, 60]

    instance = coco_instance_categories()
    assert len(instance) == 80 and instance[0] == {"id": 1, "name": "person", "supercategory": "person"}
    assert [c["id"] for c in instance] == list(COCO_INSTANCE.ids) == list(COCO_PANOPTIC.ids[:80])
    assert instance[-1] == {"id": 90, "name": "toothbrush", "supercategory": "indoor"}
    assert coco_instance_class_names() == list(COCO_THING_CLASSES)


def test_palette():
    palette = coco_panoptic_palette()
    assert len(palette) == 133 and palette[0] == [220, 20, 60] and palette[1] == [119, 11, 32]
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette)


def test_label_and_category_id_round_trips():
    for label in range(133):
        assert coco_category_id_to_label(coco_label_to_category_id(label)) == label
    for category_id in COCO_PANOPTIC.ids:
        assert coco_label_to_category_id(coco_category_id_to_label(category_id)) == category_id
    assert coco_label_to_category_id(80) == 92 and coco_category_id_to_label(200) == 132
    assert coco_label_to_category_id(79, panoptic=False) == 90
    assert COCO_PANOPTIC.id_to_label[92] == 80
    with pytest.raises(KeyError):
        coco_category_id_to_label(12)  # a gap in COCO's ids
    with pytest.raises(KeyError):
        coco_category_id_to_label(92, panoptic=False)
    with pytest.raises(IndexError):
        coco_label_to_category_id(133)


def test_contiguous_categories_of_any_list():
    shuffled = [
        {"id": 50, "name": "road", "isthing": 0},
        {"id": 7, "name": "dog", "isthing": 1, "color": [1, 2, 3]},
        {"id": 3, "name": "sky", "isthing": False},
        {"id": 20, "name": "cat", "isthing": True},
    ]
    table = contiguous_categories(shuffled)
    assert table.ids == (7, 20, 3, 50)
    assert table.names == ("dog", "cat", "sky", "road")
    assert table.isthing == (True, True, False, False)
    assert (table.num_things, table.num_stuff) == (2, 2)
    assert table.palette[0] == (1, 2, 3) and len(set(table.palette)) == 4
    assert [table.category_id_to_label(i) for i in (7, 20, 3, 50)] == [0, 1, 2, 3]
    assert table.to_coco()[2] == {"id": 3, "name": "sky", "isthing": 0, "color": list(table.palette[2])}
    # an instances json has no isthing: all things, in id order
    assert contiguous_categories([{"id": 9, "name": "b"}, {"id": 2, "name": "a"}]).names == ("a", "b")
    # the shipped list, shuffled, numbers back to the shipped table
    assert contiguous_categories(coco_panoptic_categories()[::-1]) == COCO_PANOPTIC
    with pytest.raises(ValueError, match="duplicate"):
        contiguous_categories([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])

"""COCO's category tables, shipped with knet: the 133 COCO-panoptic categories and the 80 COCO
instance categories, and the contiguous class labels the K-Net models predict.

``coco_panoptic_categories.json`` (beside this file) is panopticapi's
``panoptic_coco_categories.json``: per category its COCO ``id``, ``name``, ``supercategory``,
``isthing`` (1 = countable thing, 0 = amorphous stuff) and the RGB ``color`` panopticapi draws it
with. The 80 things are exactly the COCO instance (``instances_*.json``) categories, with the same
ids and names.

Contiguous labels, as mmdet 2.x's ``CocoPanopticDataset`` / ``CocoDataset`` number the classes
(``cat2label``) and the K-Net heads index their class scores: the things first, in increasing
category id (labels 0..79), then the stuff in increasing category id (labels 80..132). A panoptic
model's thing labels are therefore the instance model's labels, and for COCO the order is also the
plain id order (every thing id, 1..90, is below every stuff id, 92..200).
:func:`contiguous_categories` numbers any category list the same way.

Names are COCO's. mmdet 2.x's ``CocoPanopticDataset.CLASSES`` -- and so the ``meta['CLASSES']`` of
panoptic checkpoints -- spells label 7 ``' truck'`` (a stray leading space) where COCO, its own
``THING_CLASSES`` and the instance checkpoints say ``'truck'``; all other 132 names agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from .palette import default_palette

COCO_PANOPTIC_CATEGORIES_FILE = Path(__file__).with_name("coco_panoptic_categories.json")

Color = Tuple[int, int, int]


@dataclass(frozen=True)
class CategoryTable:
    """Categories numbered with contiguous labels: label ``i`` is category ``ids[i]``.

    Things come first (labels ``0..num_things-1``), then stuff. Every field is a tuple indexed by
    label.
    """

    ids: Tuple[int, ...]
    names: Tuple[str, ...]
    isthing: Tuple[bool, ...]
    palette: Tuple[Color, ...]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.names) == len(self.isthing) == len(self.palette):
            raise ValueError("ids, names, isthing and palette must have one entry per label")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"duplicate category ids in {list(self.ids)}")
        num_things = sum(self.isthing)
        if any(self.isthing[num_things:]):
            raise ValueError("things must come before stuff in a CategoryTable")

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    @property
    def num_things(self) -> int:
        return sum(self.isthing)

    @property
    def num_stuff(self) -> int:
        return self.num_classes - self.num_things

    @property
    def thing_names(self) -> Tuple[str, ...]:
        return self.names[: self.num_things]

    @property
    def stuff_names(self) -> Tuple[str, ...]:
        return self.names[self.num_things:]

    def label_to_category_id(self, label: int) -> int:
        """The COCO category id of a contiguous label; IndexError outside ``0..num_classes-1``."""
        if not 0 <= label < self.num_classes:
            raise IndexError(f"label {label} is not in 0..{self.num_classes - 1}")
        return self.ids[label]

    def category_id_to_label(self, category_id: int) -> int:
        """The contiguous label of a COCO category id; KeyError for an unknown id."""
        try:
            return self.ids.index(category_id)
        except ValueError:
            raise KeyError(f"unknown category id {category_id}") from None

    @property
    def id_to_label(self) -> Dict[int, int]:
        """``{category_id: label}``, a fresh dict."""
        return {category_id: label for label, category_id in enumerate(self.ids)}

    def to_coco(self) -> List[Dict[str, Any]]:
        """The table as a COCO ``categories`` list (``id, name, isthing, color``), in label order."""
        return [{"id": i, "name": n, "isthing": int(t), "color": list(c)}
                for i, n, t, c in zip(self.ids, self.names, self.isthing, self.palette)]


def contiguous_categories(categories: Sequence[Mapping[str, Any]]) -> CategoryTable:
    """Number a COCO ``categories`` list as K-Net / mmdet 2.x do: things first in increasing id,
    then stuff in increasing id.

    Args:
        categories: dicts with ``id`` and ``name``; ``isthing`` (0/1 or bool) is optional and
            taken as 1 when absent (an instances json has no stuff); ``color`` ([r, g, b]) is
            optional, categories without one get :func:`knet.data.palette.default_palette`
            colours (by label).

    Raises:
        ValueError: a category lacks ``id`` or ``name``, or two share an id.
    """
    for category in categories:
        if "id" not in category or "name" not in category:
            raise ValueError(f"a category needs 'id' and 'name', got {dict(category)}")
    ordered = sorted(categories, key=lambda c: (not bool(c.get("isthing", 1)), int(c["id"])))
    fallback = default_palette(len(ordered))
    palette = []
    for label, category in enumerate(ordered):
        color = category.get("color")
        palette.append(tuple(int(v) for v in color) if color is not None else fallback[label])
    return CategoryTable(ids=tuple(int(c["id"]) for c in ordered),
                         names=tuple(str(c["name"]) for c in ordered),
                         isthing=tuple(bool(c.get("isthing", 1)) for c in ordered),
                         palette=tuple(palette))


def _load_panoptic_categories() -> List[Dict[str, Any]]:
    with open(COCO_PANOPTIC_CATEGORIES_FILE, encoding="utf-8") as f:
        return json.load(f)


_PANOPTIC_CATEGORIES: Tuple[Dict[str, Any], ...] = tuple(_load_panoptic_categories())

# The tables with K-Net's contiguous labels (panoptic: 80 things + 53 stuff; instance: 80 things).
COCO_PANOPTIC = contiguous_categories(_PANOPTIC_CATEGORIES)
COCO_INSTANCE = contiguous_categories([c for c in _PANOPTIC_CATEGORIES if c["isthing"]])

COCO_PANOPTIC_CLASSES: Tuple[str, ...] = COCO_PANOPTIC.names
COCO_THING_CLASSES: Tuple[str, ...] = COCO_PANOPTIC.thing_names
COCO_STUFF_CLASSES: Tuple[str, ...] = COCO_PANOPTIC.stuff_names
COCO_INSTANCE_CLASSES: Tuple[str, ...] = COCO_INSTANCE.names
COCO_PANOPTIC_PALETTE: Tuple[Color, ...] = COCO_PANOPTIC.palette
NUM_THING_CLASSES = COCO_PANOPTIC.num_things
NUM_STUFF_CLASSES = COCO_PANOPTIC.num_stuff

assert (COCO_PANOPTIC.num_classes, NUM_THING_CLASSES, NUM_STUFF_CLASSES) == (133, 80, 53)
assert COCO_INSTANCE.ids == COCO_PANOPTIC.ids[:80]


def coco_panoptic_categories() -> List[Dict[str, Any]]:
    """The 133 panoptic categories (``id, name, supercategory, isthing, color``) in label order,
    fresh copies (callers may modify them): a valid ``categories`` list of a panoptic json."""
    return [dict(c, color=list(c["color"])) for c in _PANOPTIC_CATEGORIES]


def coco_instance_categories() -> List[Dict[str, Any]]:
    """The 80 instance categories (``id, name, supercategory``) in label order, fresh copies: the
    ``categories`` list of COCO's ``instances_*.json``."""
    return [{"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]}
            for c in _PANOPTIC_CATEGORIES if c["isthing"]]


def coco_panoptic_class_names() -> List[str]:
    """The 133 names in label order, a fresh list."""
    return list(COCO_PANOPTIC_CLASSES)


def coco_instance_class_names() -> List[str]:
    """The 80 thing names in label order, a fresh list."""
    return list(COCO_INSTANCE_CLASSES)


def coco_panoptic_palette() -> List[List[int]]:
    """panopticapi's RGB colour of each of the 133 labels, ``[[r, g, b], ...]``, a fresh list."""
    return [list(color) for color in COCO_PANOPTIC_PALETTE]


def coco_label_to_category_id(label: int, panoptic: bool = True) -> int:
    """COCO category id of a contiguous label (0..132 panoptic, 0..79 instance)."""
    table = COCO_PANOPTIC if panoptic else COCO_INSTANCE
    return table.label_to_category_id(label)


def coco_category_id_to_label(category_id: int, panoptic: bool = True) -> int:
    """Contiguous label of a COCO category id (KeyError for ids that are not categories, e.g. 12,
    or stuff ids with ``panoptic=False``)."""
    table = COCO_PANOPTIC if panoptic else COCO_INSTANCE
    return table.category_id_to_label(category_id)

"""The generated toy dataset: layout, determinism, class coverage and argument checks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from knet.data.synthetic import make_scene, make_synthetic_dataset, synthetic_classes
from knet.errors import KnetError


def test_layout_and_files(tmp_path):
    info = make_synthetic_dataset(tmp_path / "toy", num_classes=4, num_train=5, num_val=2, size=(64, 96), seed=1)
    root = tmp_path / "toy"
    assert info.root == root and info.num_classes == 4
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == [f"{i:04d}.png" for i in range(5)]
    assert sorted(p.name for p in (root / "masks" / "val").iterdir()) == ["0000.png", "0001.png"]
    names = (root / "classes.txt").read_text().split()
    palette = [[int(v) for v in line.split()] for line in (root / "palette.txt").read_text().splitlines()]
    assert names == info.class_names and names[0] == "background" and len(set(names)) == 4
    assert palette == info.palette and len(palette) == 4 and all(len(c) == 3 for c in palette)

    image = Image.open(root / "images" / "train" / "0000.png")
    mask = Image.open(root / "masks" / "train" / "0000.png")
    assert image.mode == "RGB" and image.size == (96, 64)
    assert mask.mode == "L" and mask.size == (96, 64)
    values = np.unique(np.asarray(mask))
    assert values.min() >= 0 and values.max() < 4


def test_deterministic_and_prefix_stable(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", num_train=2, num_val=1, size=(48, 48), seed=3)
    b = make_synthetic_dataset(tmp_path / "b", num_train=4, num_val=1, size=(48, 48), seed=3)
    c = make_synthetic_dataset(tmp_path / "c", num_train=2, num_val=1, size=(48, 48), seed=4)
    for sub in ("images/train/0001.png", "masks/train/0001.png", "images/val/0000.png"):
        pa, pb, pc = (np.asarray(Image.open(d.root / sub)) for d in (a, b, c))
        assert np.array_equal(pa, pb)  # more images keep the earlier ones
        if sub.startswith("images"):
            assert not np.array_equal(pa, pc)  # another seed, another scene


def test_every_class_appears_and_classes_differ():
    image, mask = make_scene(np.random.default_rng(0), num_classes=4, size=(128, 128), num_objects=(3, 3))
    assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
    assert mask.dtype == np.uint8 and mask.shape == (128, 128)
    counts = np.zeros(4, dtype=int)
    colours = {c: [] for c in range(4)}
    for seed in range(6):
        image, mask = make_scene(seed, num_classes=4, size=(128, 128))
        counts += np.bincount(mask.ravel(), minlength=4)
        for c in range(4):
            if (mask == c).any():
                colours[c].append(image[mask == c].mean(axis=0))
    assert (counts > 0).all()
    means = np.array([np.mean(colours[c], axis=0) for c in range(4)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(4, dtype=bool)].min() > 30  # the classes look different


def test_many_classes_have_distinct_names():
    names, palette = synthetic_classes(20)
    assert len(set(names)) == 20 and len(palette) == 20
    image, mask = make_scene(1, num_classes=20, size=(64, 64), num_objects=(8, 8))
    assert mask.max() < 20


@pytest.mark.parametrize("kwargs", [dict(num_classes=1), dict(num_classes=300), dict(num_train=-1),
                                    dict(size=(4, 4))])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(KnetError):
        make_synthetic_dataset(tmp_path / "bad", **{"num_val": 1, "num_train": 1, **kwargs})

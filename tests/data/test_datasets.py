"""ADE20K and folder datasets: layouts, label reduction, metadata and every bad input."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from knet.data.ade20k import ADE20K_CLASSES, ADE20K_PALETTE
from knet.data.datasets import ADE20KDataset, FolderDataset, build_dataset, detect_dataset_kind, reduce_zero_label
from knet.errors import DataError, KnetError


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_ade20k(root: Path, split="validation", n=2, size=(12, 16)) -> Path:
    """ROOT/ADEChallengeData2016 with n .jpg images and .png labels (values 0..150)."""
    base = root / "ADEChallengeData2016"
    (base / "images" / split).mkdir(parents=True)
    (base / "annotations" / split).mkdir(parents=True)
    for i in range(n):
        name = f"ADE_val_{i + 1:08d}"
        Image.fromarray(_rgb(*size, seed=i)).save(base / "images" / split / f"{name}.jpg")
        label = (np.arange(size[0] * size[1]).reshape(size) * (i + 3)) % 151
        Image.fromarray(label.astype(np.uint8)).save(base / "annotations" / split / f"{name}.png")
    return base


def make_folder(root: Path, split="val", names=("a", "b", "c"), n=2, size=(10, 14), masks=True,
                palette=None) -> Path:
    (root / "images" / split).mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    if palette is not None:
        (root / "palette.txt").write_text("\n".join(" ".join(map(str, c)) for c in palette) + "\n")
    if masks:
        (root / "masks" / split).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(_rgb(*size, seed=i)).save(root / "images" / split / f"img{i}.jpg")
        if masks:
            label = (np.arange(size[0] * size[1]).reshape(size) + i) % len(names)
            label[0, 0] = 255
            Image.fromarray(label.astype(np.uint8)).save(root / "masks" / split / f"img{i}.png")
    return root


# ---- ADE20K ----------------------------------------------------------------------------------
def test_reduce_zero_label():
    out = reduce_zero_label(np.array([[0, 1, 2], [150, 255, 7]], np.uint8))
    np.testing.assert_array_equal(out, [[255, 0, 1], [149, 255, 6]])


@pytest.mark.parametrize("use_parent", [False, True])
def test_ade20k_layout_and_labels(tmp_path, use_parent):
    base = make_ade20k(tmp_path)
    ds = ADE20KDataset(tmp_path if use_parent else base, "validation")
    assert len(ds) == 2 and ds.num_classes == 150
    assert ds.class_names == list(ADE20K_CLASSES) and ds.palette == [list(c) for c in ADE20K_PALETTE]
    item = ds[0]
    assert item["image"].shape == (12, 16, 3) and item["image"].dtype == np.uint8
    raw = np.array(Image.open(base / "annotations" / "validation" / "ADE_val_00000001.png"))
    np.testing.assert_array_equal(item["label"], reduce_zero_label(raw))
    assert item["label"].dtype == np.uint8
    assert item["image_path"].endswith("ADE_val_00000001.jpg")
    assert item["label_path"].endswith("ADE_val_00000001.png")
    assert ADE20KDataset(base, "val").split == "validation"  # alias


def test_ade20k_bad_roots(tmp_path):
    with pytest.raises(DataError, match="expected images/ and annotations/"):
        ADE20KDataset(tmp_path, "validation")
    base = make_ade20k(tmp_path)
    with pytest.raises(DataError, match=r"missing split folder .*images.training"):
        ADE20KDataset(base, "training")
    (base / "images" / "training").mkdir()
    with pytest.raises(DataError, match=r"missing label folder .*annotations.training"):
        ADE20KDataset(base, "training")
    (base / "annotations" / "training").mkdir()
    with pytest.raises(DataError, match=r"no \.jpg images in .*training"):
        ADE20KDataset(base, "training")


def test_ade20k_bad_items(tmp_path):
    base = make_ade20k(tmp_path, n=3)
    ann = base / "annotations" / "validation"
    Image.fromarray(np.full((12, 16), 200, np.uint8)).save(ann / "ADE_val_00000001.png")
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(ann / "ADE_val_00000002.png")
    (ann / "ADE_val_00000003.png").unlink()
    ds = ADE20KDataset(base)
    with pytest.raises(DataError) as info:
        ds[0]
    msg = str(info.value)
    assert "ADE_val_00000001.png" in msg and "label value 200" in msg and "199 after reduce" in msg
    with pytest.raises(DataError) as info:
        ds[1]
    msg = str(info.value)
    assert "ADE_val_00000002.jpg is 16x12" in msg and "ADE_val_00000002.png is 16x10" in msg
    with pytest.raises(DataError, match="missing label .*ADE_val_00000003.png for image .*ADE_val_00000003.jpg"):
        ds[2]


# ---- folder ----------------------------------------------------------------------------------
def test_folder_dataset(tmp_path):
    root = make_folder(tmp_path, palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    ds = FolderDataset(root, "val")
    assert len(ds) == 2 and ds.num_classes == 3 and ds.class_names == ["a", "b", "c"]
    assert ds.palette == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    item = ds[1]
    expected = (np.arange(140).reshape(10, 14) + 1) % 3
    expected[0, 0] = 255
    np.testing.assert_array_equal(item["label"], expected)
    assert Path(item["label_path"]).name == "img1.png"
    assert repr(ds) == "FolderDataset(2 images, 3 classes)"


def test_folder_default_palette_and_reduce_zero_label(tmp_path):
    root = make_folder(tmp_path, names=("x", "y"))
    ds = FolderDataset(root, "val", reduce_zero_label=True)
    assert len(ds.palette) == 2 and ds.palette[0] != ds.palette[1]
    # file values 0, 1 (and 255) -> 255, 0 (and 255)
    label = ds[0]["label"]
    raw = np.array(Image.open(root / "masks" / "val" / "img0.png"))
    np.testing.assert_array_equal(label, np.where(raw == 1, 0, 255))


def test_folder_palette_masks_16bit_labels_and_odd_images(tmp_path):
    root = make_folder(tmp_path, names=("p", "q", "r"), n=0)
    label = np.array([[0, 1, 2, 255]] * 3, np.uint8)
    pal = Image.fromarray(label, mode="P")
    pal.putpalette([200, 0, 0, 0, 200, 0, 0, 0, 200] + [9] * (3 * 253))
    gray = np.full((3, 4), 90, np.uint8)
    Image.fromarray(gray).save(root / "images" / "val" / "g.png")          # grayscale image
    pal.save(root / "masks" / "val" / "g.png")                              # palette mask
    rgba = np.dstack([_rgb(3, 4), np.full((3, 4), 50, np.uint8)])
    Image.fromarray(rgba).save(root / "images" / "val" / "h.png")          # RGBA image
    cv2.imwrite(str(root / "masks" / "val" / "h.png"), label.astype(np.uint16))  # 16-bit mask
    ds = FolderDataset(root, "val")
    g, h = ds[0], ds[1]
    assert g["image"].shape == (3, 4, 3) and (g["image"] == 90).all()
    np.testing.assert_array_equal(g["label"], label)
    assert h["image"].shape == (3, 4, 3)
    np.testing.assert_array_equal(h["image"], rgba[..., :3])
    np.testing.assert_array_equal(h["label"], label)


def test_folder_without_masks_has_no_labels(tmp_path):
    ds = FolderDataset(make_folder(tmp_path, masks=False), "val")
    assert not ds.has_labels
    item = ds[0]
    assert item["label"] is None and item["label_path"] is None


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        FolderDataset(tmp_path / "nope", "val")
    root = make_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"missing split folder .*images.train.*split 'train'"):
        FolderDataset(root, "train")
    (root / "images" / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images in .*empty \(expected files ending in .jpg"):
        FolderDataset(root, "empty")
    Image.fromarray(_rgb(10, 14)).save(root / "images" / "val" / "img0.png")
    with pytest.raises(DataError, match="two images with the stem 'img0'"):
        FolderDataset(root, "val")


def test_folder_bad_metadata(tmp_path):
    root = make_folder(tmp_path)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"missing .*classes.txt: expected one class name per line"):
        FolderDataset(root, "val")
    (root / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"classes.txt:3: class name 'a' appears twice"):
        FolderDataset(root, "val")
    (root / "classes.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no class names"):
        FolderDataset(root, "val")
    (root / "classes.txt").write_text("a\nb\nc\n")
    (root / "palette.txt").write_text("1 2 3\n4 5\n7 8 9\n")
    with pytest.raises(DataError, match=r"palette.txt:2: expected 'r g b'"):
        FolderDataset(root, "val")
    (root / "palette.txt").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(DataError, match="2 colours for 3 classes"):
        FolderDataset(root, "val")
    (root / "palette.txt").write_text("1 2 3\n4 5 6\n7 8 300\n")
    with pytest.raises(DataError, match="values 0..255"):
        FolderDataset(root, "val")


def test_folder_bad_items(tmp_path):
    root = make_folder(tmp_path, n=4)
    masks = root / "masks" / "val"
    Image.fromarray(np.full((10, 14), 7, np.uint8)).save(masks / "img0.png")
    Image.fromarray(np.zeros((14, 10), np.uint8)).save(masks / "img1.png")
    (masks / "img2.png").unlink()
    (root / "images" / "val" / "img3.jpg").write_bytes(b"corrupt")
    ds = FolderDataset(root, "val")
    with pytest.raises(DataError, match=r"img0.png: label value 7 is neither a class \(0..2\) nor 255"):
        ds[0]
    with pytest.raises(DataError, match=r"img1.jpg is 14x10 but its label .*img1.png is 10x14"):
        ds[1]
    with pytest.raises(DataError, match=r"missing mask .*img2.png for image .*img2.jpg"):
        ds[2]
    with pytest.raises(DataError, match=r"img3.jpg: cannot decode image"):
        ds[3]


def test_build_dataset(tmp_path):
    root = make_folder(tmp_path)
    assert isinstance(build_dataset("folder", root), FolderDataset)  # split defaults to val
    assert build_dataset("folder", root, "val", reduce_zero_label=True).reduce_zero_label
    with pytest.raises(KnetError, match="unknown dataset kind 'coco'; valid: ade20k, folder"):
        build_dataset("coco", root)
    with pytest.raises(DataError, match="dataset 'ade20k'.*reduce_zero_label"):
        build_dataset("ade20k", root, reduce_zero_label=True)


def test_detect_dataset_kind(tmp_path):
    from knet.data.datasets import detect_dataset_kind

    assert detect_dataset_kind(make_folder(tmp_path / "f", n=1)) == "folder"
    assert detect_dataset_kind(make_ade20k(tmp_path / "a", n=1)) == "ade20k"
    (tmp_path / "parent" / "ADEChallengeData2016").mkdir(parents=True)
    assert detect_dataset_kind(tmp_path / "parent") == "ade20k"
    with pytest.raises(DataError, match="neither a folder dataset .*classes.txt.* nor ADE20K"):
        detect_dataset_kind(tmp_path / "empty")


def test_detect_coco_layouts(tmp_path):
    from knet.data.synthetic_coco import make_synthetic_coco

    root = make_synthetic_coco(tmp_path / "coco", num_train=1, num_val=1, size=(48, 48)).root
    with pytest.raises(DataError, match="holds both COCO panoptic and instance annotations"):
        detect_dataset_kind(root)
    assert detect_dataset_kind(root, preferred=("coco_panoptic",)) == "coco_panoptic"
    assert detect_dataset_kind(root, preferred=("coco_instance",)) == "coco_instance"
    for path in (root / "annotations").glob("panoptic_*.json"):
        path.unlink()
    assert detect_dataset_kind(root) == "coco_instance"
    dataset = build_dataset("coco_instance", root, "val")
    assert len(dataset) == 1 and dataset.num_classes == 3  # the thing classes

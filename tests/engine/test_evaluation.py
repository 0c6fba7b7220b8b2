"""Metrics with hand-computed cases (absent classes, ignored pixels, batches), the table, and
``evaluate`` on a generated folder dataset (batching, skipping bad files, overlays)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import knet
from knet.data.datasets import FolderDataset
from knet.engine.evaluation import (
    SegmentationMetric, compute_metrics, confusion_matrix, format_table, intersect_and_union,
    run_evaluation, write_json,
)
from knet.errors import DataError


# ---- hand-computed metrics -------------------------------------------------------------------
def test_hand_computed_case_with_absent_classes_and_ignore():
    # 4 classes. Class 2 never labelled but predicted once; class 3 absent from both.
    label = np.array([[0, 0, 1, 1],
                      [0, 255, 1, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 3, 0, 0]])
    metric = SegmentationMetric(4)
    metric.update(pred, label)
    areas = metric.areas()
    # valid pixels: (0,0) 0->0, (0,1) 0->1, (0,2) 1->1, (0,3) 1->1, (1,0) 0->2, (1,2) 1->0
    np.testing.assert_array_equal(areas["intersect"], [1, 2, 0, 0])
    np.testing.assert_array_equal(areas["pred"], [2, 3, 1, 0])   # the ignored pixels' predictions don't count
    np.testing.assert_array_equal(areas["label"], [3, 3, 0, 0])
    np.testing.assert_array_equal(areas["union"], [4, 4, 1, 0])
    m = metric.compute(["w", "x", "y", "z"])
    assert m["aAcc"] == 50.0                                   # 3 / 6
    assert m["per_class"]["w"] == {"IoU": 25.0, "Acc": 33.33}  # 1/4, 1/3
    assert m["per_class"]["x"] == {"IoU": 50.0, "Acc": 66.67}  # 2/4, 2/3
    assert m["per_class"]["y"] == {"IoU": 0.0, "Acc": None}    # predicted, never labelled
    assert m["per_class"]["z"] == {"IoU": None, "Acc": None}   # absent from both: left out
    assert m["mIoU"] == 25.0                                   # (25 + 50 + 0) / 3
    assert m["mAcc"] == 50.0                                   # (33.33.. + 66.66..) / 2


def test_batch_update_equals_single_updates_and_is_memory_bounded():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 5, (3, 7, 9))
    labels = rng.integers(0, 5, (3, 7, 9))
    labels[rng.random((3, 7, 9)) < 0.2] = 255
    batched, single = SegmentationMetric(5), SegmentationMetric(5)
    batched.update(torch.from_numpy(preds), torch.from_numpy(labels))
    for p, l in zip(preds, labels):
        single.update(p, l)
    assert torch.equal(batched.confusion, single.confusion)
    assert batched.confusion.shape == (5, 5)  # state independent of the number of images
    # Brute-force reference areas.
    valid = labels != 255
    for c in range(5):
        inter = ((preds == c) & (labels == c) & valid).sum()
        assert batched.areas()["intersect"][c] == inter
        assert batched.areas()["union"][c] == (((preds == c) | (labels == c)) & valid).sum()


def test_intersect_and_union_and_confusion():
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 1], [255, 0]])
    inter, union, area_pred, area_label = intersect_and_union(pred, label, 2)
    assert inter.tolist() == [1, 1] and union.tolist() == [2, 2]
    assert area_pred.tolist() == [1, 2] and area_label.tolist() == [2, 1]
    assert confusion_matrix(pred, label, 2).tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="label value 7 is not a class"):
        confusion_matrix(pred, torch.tensor([[0, 7], [0, 0]]), 2)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(pred, label[0], 2)


def test_all_ignored_gives_none():
    metric = SegmentationMetric(2)
    metric.update(np.zeros((2, 2), np.int64), np.full((2, 2), 255))
    m = metric.compute()
    assert m == {"aAcc": None, "mIoU": None, "mAcc": None,
                 "per_class": {"0": {"IoU": None, "Acc": None}, "1": {"IoU": None, "Acc": None}}}


def test_compute_metrics_rounds_like_the_reference():
    m = compute_metrics([1, 2], [3, 3], [2, 3], [2, 3])
    assert m["per_class"]["0"]["IoU"] == 33.33 and m["per_class"]["1"]["IoU"] == 66.67
    assert m["mIoU"] == 50.0 and m["aAcc"] == 60.0 and m["mAcc"] == float(np.round(100 * (0.5 + 2 / 3) / 2, 2))
    with pytest.raises(ValueError, match="class names"):
        compute_metrics([1], [1], [1], [1], ["a", "b"])


def test_format_table():
    text = format_table(compute_metrics([1, 0], [2, 0], [1, 0], [2, 0], ["cat", "dog"]))
    assert "| cat" in text and "50.00" in text and "nan" in text
    assert text.splitlines()[-2].split("|")[1:4] == [" 50.00 ", " 50.00 ", " 50.00 "]


def test_write_json_atomic(tmp_path):
    write_json(tmp_path / "m.json", {"mIoU": None})
    assert (tmp_path / "m.json").read_text() == '{\n  "mIoU": null\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ---- evaluate on a generated dataset ---------------------------------------------------------
SCALE = (64, 32)


def _folder(root: Path, sizes, num_classes=3) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(num_classes)))
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / "val" / f"{i}.png")
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        label[:2] = 255
        Image.fromarray(label).save(root / "masks" / "val" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return knet.build_model("knet-r50-fcn-tiny", num_classes=3).eval()


# Sizes: the first three resize to 43x32 under SCALE (equal: one batch of 3 at batch size 3
# after grouping with the fifth), the fourth to 32x32, the fifth to 43x32 again.
MIXED = [(30, 40), (60, 80), (45, 60), (20, 20), (15, 20)]


def test_batch_3_over_mixed_sizes_equals_batch_1(tmp_path, model):
    ds = FolderDataset(_folder(tmp_path, MIXED), "val")
    one = run_evaluation(model, ds, batch_size=1, device="cpu", test_scale=SCALE)
    three = run_evaluation(model, ds, batch_size=3, device="cpu", test_scale=SCALE)
    for key in one.areas:
        np.testing.assert_array_equal(one.areas[key], three.areas[key])
    assert one.metrics == three.metrics and one.num_images == 5


def test_batched_inputs_are_never_padded(tmp_path, model, monkeypatch):
    from knet.engine.inference import TestPipeline

    shapes = []
    original = type(model).inference

    def spy(self, x, **kwargs):
        shapes.append(tuple(x.shape))
        return original(self, x, **kwargs)

    monkeypatch.setattr(type(model), "inference", spy)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in MIXED[:4]]
    batched = TestPipeline(model, test_scale=SCALE).scores(images)
    assert sorted(shapes) == sorted([(3, 3, 32, 43), (1, 3, 32, 32)])
    for image, scores in zip(images, batched):
        single = TestPipeline(model, test_scale=SCALE).scores([image])[0]
        assert scores.shape == (3,) + image.shape[:2]
        # Equal up to float rounding (convolution algorithms may depend on the batch size).
        torch.testing.assert_close(scores, single, rtol=1e-5, atol=1e-4)
        assert torch.equal(scores.argmax(0), single.argmax(0))


def test_workers_give_the_same_result(tmp_path, model):
    ds = FolderDataset(_folder(tmp_path, MIXED[:3]), "val")
    a = knet.evaluate(model, ds, batch_size=2, device="cpu", test_scale=SCALE)
    b = knet.evaluate(model, ds, batch_size=2, device="cpu", test_scale=SCALE, workers=1)
    assert a == b and set(a) == {"aAcc", "mIoU", "mAcc", "per_class"}
    assert list(a["per_class"]) == ["c0", "c1", "c2"]


def test_evaluate_matches_manual_areas(tmp_path, model):
    from knet.engine.inference import TestPipeline

    ds = FolderDataset(_folder(tmp_path, MIXED[:2]), "val")
    metric = SegmentationMetric(3)
    for i in range(len(ds)):
        item = ds[i]
        pred = TestPipeline(model, test_scale=SCALE).predict([item["image"]])[0]
        metric.update(pred, item["label"])
    assert knet.evaluate(model, ds, device="cpu", test_scale=SCALE) == metric.compute(ds.class_names)


def test_bad_files_stop_or_are_skipped(tmp_path, model):
    root = _folder(tmp_path, MIXED[:3])
    (root / "images" / "val" / "1.png").write_bytes(b"corrupt")
    ds = FolderDataset(root, "val")
    with pytest.raises(DataError, match=r"1.png: cannot decode image"):
        run_evaluation(model, ds, device="cpu", test_scale=SCALE)
    result = run_evaluation(model, ds, device="cpu", test_scale=SCALE, skip_bad=True, batch_size=2)
    assert result.num_images == 2 and len(result.skipped) == 1
    path, message = result.skipped[0]
    assert path.endswith("1.png") and "cannot decode" in message


def test_model_and_dataset_must_agree(tmp_path, model):
    ds = FolderDataset(_folder(tmp_path / "a", MIXED[:1], num_classes=4), "val")
    with pytest.raises(DataError, match=r"model predicts 3 classes but the dataset has 4 \(.*classes.txt\)"):
        run_evaluation(model, ds, device="cpu")
    root = _folder(tmp_path / "b", MIXED[:1])
    for p in (root / "masks" / "val").iterdir():
        p.unlink()
    (root / "masks" / "val").rmdir()
    with pytest.raises(DataError, match="no labels"):
        run_evaluation(model, FolderDataset(root, "val"), device="cpu")


def test_show_dir_writes_overlays(tmp_path, model):
    ds = FolderDataset(_folder(tmp_path / "d", MIXED[:2]), "val")
    run_evaluation(model, ds, device="cpu", test_scale=SCALE, show_dir=tmp_path / "show")
    files = sorted(p.name for p in (tmp_path / "show").iterdir())
    assert files == ["0.png", "1.png"]
    picture = np.array(Image.open(tmp_path / "show" / "1.png"))
    assert picture.shape == (60, 160, 3)  # ground truth | prediction side by side


def test_progress_bar_lines_when_not_a_terminal():
    import io

    from knet.utils import ProgressBar, track

    stream = io.StringIO()
    with ProgressBar(total=20, desc="test", stream=stream) as bar:
        for _ in range(20):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # one per tenth of the way, and the start
    assert lines[-1].startswith("test: 100% |") and "20/20" in lines[-1]
    silent = io.StringIO()
    with ProgressBar(total=3, stream=silent, enabled=False) as bar:
        bar.update(3)
    assert silent.getvalue() == ""
    assert list(track(range(3), enabled=False)) == [0, 1, 2]

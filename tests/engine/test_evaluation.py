"""The one evaluation loop (``run_evaluation`` / ``evaluate``) on a generated folder dataset:
batching, workers, skipping bad files, overlays, the task's metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import knet
from knet.data.datasets import FolderDataset
from knet.engine.evaluation import run_evaluation, write_json
from knet.metrics.semantic import SegmentationMetric
from knet.errors import DataError


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
    for key, counts in one.evaluator.areas().items():
        np.testing.assert_array_equal(counts, three.evaluator.areas()[key])
    assert one.metrics == three.metrics and one.num_images == 5


def test_batched_inputs_are_never_padded(tmp_path, model, monkeypatch):
    from knet.inference.pipeline import TestPipeline

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
    from knet.inference.pipeline import TestPipeline

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



"""``knet.Segmenter``: inputs (path, numpy, PIL, lists), results (labels, classes, probabilities,
overlay), loading (preset + checkpoint, native directory) and errors."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

import knet
from knet.inference.results import SegmentationResult, SemanticResult, add_legend, class_shares
from knet.inference.segmenter import to_rgb_array
from knet.inference import pipeline as inference
from knet.errors import DataError, KnetError

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model():
    import torch

    torch.manual_seed(0)
    return knet.build_model("knet-r50-fcn-tiny", num_classes=NUM_CLASSES,
                            **{"data.test_scale": (64, 48)}).eval()


@pytest.fixture(scope="module")
def segmenter(model):
    return knet.Segmenter(model, device="cpu", batch_size=2)


@pytest.fixture()
def picture() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)


def test_result_of_an_array(segmenter, model, picture):
    result = segmenter(picture)
    assert isinstance(result, SemanticResult) and isinstance(result, SegmentationResult)
    assert result.labels.shape == (30, 50) and result.labels.dtype == np.uint8
    assert result.source is None
    expected = inference.TestPipeline(model).predict([picture])[0].numpy()
    np.testing.assert_array_equal(result.labels, expected)
    probs = result.probabilities()
    assert probs.shape == (NUM_CLASSES, 30, 50) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), result.labels)
    shares = result.classes
    assert sum(c.fraction for c in shares) == pytest.approx(1.0)
    assert [c.fraction for c in shares] == sorted((c.fraction for c in shares), reverse=True)
    for share in shares:
        assert share.fraction == pytest.approx((result.labels == share.index).mean())
        assert share.name == f"class_{share.index}"  # generic names for a model without any
    assert "SemanticResult" in repr(result)


def test_path_pil_and_list_inputs_agree(segmenter, picture, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(picture).save(path)
    from_path = segmenter(path)
    from_str = segmenter(str(path))
    from_pil = segmenter(Image.fromarray(picture))
    listed = segmenter([picture, str(path), Image.fromarray(picture).convert("RGBA")])
    assert from_path.source == str(path)
    assert isinstance(listed, list) and len(listed) == 3
    for result in (from_str, from_pil, *listed):
        np.testing.assert_array_equal(result.labels, from_path.labels)


def test_batches_of_mixed_sizes_equal_one_by_one(segmenter, model):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(30, 50, 3), (40, 40, 3), (30, 50, 3)]]
    together = segmenter(images)
    for image, result in zip(images, together):
        np.testing.assert_array_equal(result.labels, knet.Segmenter(model, device="cpu")(image).labels)


def test_tta_probabilities_are_the_pipeline_mean(model, picture):
    result = knet.Segmenter(model, device="cpu", tta=True)(picture)
    expected = inference.TestPipeline(model, tta=True).scores([picture])[0].numpy()
    np.testing.assert_allclose(result.probabilities(), expected, atol=1e-6)
    np.testing.assert_array_equal(result.labels, expected.argmax(0))


def test_overlay_array_and_pil(segmenter, picture):
    result = segmenter(picture)
    plain = result.overlay(legend=False)
    assert plain.shape == picture.shape and plain.dtype == np.uint8
    np.testing.assert_array_equal(result.overlay(opacity=0.0, legend=False), picture)
    with_legend = result.overlay()
    assert with_legend.shape[1] > picture.shape[1]
    np.testing.assert_array_equal(with_legend[:30, :50], plain)  # the picture is left unchanged
    pil = result.overlay(pil=True)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == with_legend.shape[1::-1]
    assert result.colorized().shape == picture.shape
    with pytest.raises(KnetError, match="opacity"):
        result.overlay(opacity=1.5)


def test_legend_lists_each_class():
    labels = np.array([[0, 0, 1], [2, 2, 2]], dtype=np.uint8)
    shares = class_shares(labels, ["sky", "tree", "road"], [[0, 0, 255], [0, 255, 0], [128, 128, 128]])
    assert [(c.name, round(c.fraction, 3)) for c in shares] == [("road", 0.5), ("sky", 0.333), ("tree", 0.167)]
    canvas = add_legend(np.zeros((300, 200, 3), np.uint8), shares)
    assert canvas.shape[0] == 300 and canvas.shape[1] > 200
    panel = canvas[:, 200:]
    for colour in ([0, 0, 255], [0, 255, 0], [128, 128, 128]):  # a swatch of each colour
        assert (panel == colour).all(axis=-1).sum() > 10
    tall = add_legend(np.zeros((20, 20, 3), np.uint8), shares * 5)
    assert tall.shape[0] > 20  # the canvas grows to fit the legend


def test_from_pretrained_and_preset_with_checkpoint(model, picture, tmp_path):
    knet.save_pretrained(model, tmp_path / "native")
    by_dir = knet.Segmenter.from_pretrained(tmp_path / "native", device="cpu")
    by_name = knet.Segmenter("knet-r50-fcn-tiny", checkpoint=tmp_path / "native", device="cpu",
                             overrides={"data.test_scale": (64, 48)})
    expected = knet.Segmenter(model, device="cpu")(picture).labels
    np.testing.assert_array_equal(by_dir(picture).labels, expected)
    np.testing.assert_array_equal(by_name(picture).labels, expected)
    assert by_dir.num_classes == NUM_CLASSES and len(by_dir.class_names) == NUM_CLASSES
    assert len(by_dir.palette) == NUM_CLASSES
    assert "knet-r50-fcn-tiny" in repr(by_dir)
    with pytest.raises(KnetError, match="unknown model"):
        knet.Segmenter("no-such-model", checkpoint=tmp_path / "native")


def test_errors(segmenter, tmp_path):
    with pytest.raises(KnetError, match="checkpoint="):
        knet.Segmenter("knet-r50-fcn-tiny")
    with pytest.raises(DataError, match="missing.png"):
        segmenter(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.jpg"):
        segmenter(str(tmp_path / "bad.jpg"))
    with pytest.raises(KnetError, match="uint8"):
        segmenter(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(KnetError, match="shape"):
        segmenter(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(KnetError, match="cannot segment"):
        segmenter(42)


def test_to_rgb_array_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_rgb_array(gray).shape == (3, 4, 3)
    np.testing.assert_array_equal(to_rgb_array(gray)[..., 2], gray)
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert to_rgb_array(rgba).shape == (3, 4, 3)
    assert to_rgb_array(Image.fromarray(gray)).shape == (3, 4, 3)

"""``knet predict``: input expansion (files, folders, globs), outputs, bad inputs, and label maps
equal to the argmax of the ``knet test`` pipeline with and without ``--tta``."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import knet
from knet.apps.predict import expand_inputs
from knet.cli import main
from knet.data.io import read_image
from knet.inference import pipeline as inference
from knet.errors import DataError
from knet.utils.device import cpu_has_native_bf16

NUM_CLASSES = 4
TEST_SCALE = (96, 64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A native directory of a -tiny model with 4 classes and a small test scale."""
    import torch

    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=NUM_CLASSES,
                             **{"data.test_scale": TEST_SCALE, "class_names": ["bg", "a", "b", "c"]})
    directory = tmp_path_factory.mktemp("model") / "tiny"
    knet.save_pretrained(model, directory)
    return directory


def _image(rng: np.random.Generator, h: int = 40, w: int = 56) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture()
def images(tmp_path) -> Path:
    """photos/ with a.png, b.jpg and sub/a.png (an equal stem in a subfolder)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    _write(root / "a.png", _image(rng))
    _write(root / "b.jpg", _image(rng, 48, 48))
    _write(root / "sub" / "a.png", _image(rng, 32, 60))
    return root


def _outputs(out: Path):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _labels(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# --------------------------------------------------------------------------------------------
# Input expansion
# --------------------------------------------------------------------------------------------
def test_expand_files_folder_and_glob(images, tmp_path):
    by_folder = expand_inputs([str(images)])
    assert [(i.path.relative_to(images).as_posix(), i.relative.as_posix()) for i in by_folder] == [
        ("a.png", "a"), ("b.jpg", "b"), ("sub/a.png", "sub/a")]
    by_file = expand_inputs([str(images / "b.jpg")])
    assert [i.relative.as_posix() for i in by_file] == ["b"]
    by_glob = expand_inputs([str(images / "**" / "*.png")])
    assert [i.relative.as_posix() for i in by_glob] == ["a", "sub/a"]
    by_glob = expand_inputs([str(images / "*" / "*.png")])
    assert [i.relative.as_posix() for i in by_glob] == ["sub/a"]


def test_expand_dedupes_and_renames_collisions(images, tmp_path, capsys):
    other = _write(tmp_path / "elsewhere" / "a.png", _image(np.random.default_rng(1)))
    items = expand_inputs([str(images / "a.png"), str(images), str(other)])
    names = [i.relative.as_posix() for i in items]
    assert names == ["a", "b", "sub/a", "a_2"]  # images/a.png once; elsewhere/a.png renamed
    assert "a_2.png" in capsys.readouterr().err


def test_expand_skips_the_output_folder_and_non_images(images):
    (images / "notes.txt").write_text("not an image")
    out = images / "out"
    _write(out / "a.png", np.zeros((4, 4, 3), np.uint8))
    items = expand_inputs([str(images)], out_dir=out)
    assert [i.relative.as_posix() for i in items] == ["a", "b", "sub/a"]


@pytest.mark.parametrize("make, message", [
    (lambda root: str(root / "missing.png"), "no such file or folder"),
    (lambda root: str((root / "empty").mkdir() or root / "empty"), "holds no images"),
    (lambda root: str(root / "*.tif"), "matches nothing"),
])
def test_expand_errors_before_work(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        expand_inputs([make(tmp_path)])


def test_missing_input_is_an_error_before_any_work(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(model_dir), str(images), str(tmp_path / "nope.jpg"),
                 "--out-dir", str(out), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "nope.jpg: no such file or folder" in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing was written


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def test_predict_folder_writes_labels_and_overlays(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(model_dir), str(images), "--out-dir", str(out),
                 "--device", "cpu", "--threads", "1", "--save-probs", "--opacity", "0.6"])
    assert code == 0
    assert _outputs(out) == ["a.npy", "a.png", "a_overlay.png", "b.npy", "b.png", "b_overlay.png",
                             "sub/a.npy", "sub/a.png", "sub/a_overlay.png"]
    assert str(out) in capsys.readouterr().out
    for stem in ("a", "b", "sub/a"):
        source = images / (stem + (".jpg" if stem == "b" else ".png"))
        image = read_image(source)
        labels = _labels(out / f"{stem}.png")
        assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
        assert labels.max() < NUM_CLASSES
        probs = np.load(out / f"{stem}.npy")
        assert probs.dtype == np.float32 and probs.shape == (NUM_CLASSES,) + image.shape[:2]
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(probs.argmax(0), labels)
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))
        assert overlay.shape[0] >= image.shape[0] and overlay.shape[1] > image.shape[1]  # + legend


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no AMX or AVX512-BF16")
def test_predict_in_bf16_writes_the_segmenters_bf16_labels(model_dir, images, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model_dir), str(images / "a.png"), "--out-dir", str(out),
                 "--device", "cpu", "--precision", "bf16", "--quiet"]) == 0
    expected = knet.Segmenter(checkpoint=model_dir, device="cpu", precision="bf16")(images / "a.png").labels
    np.testing.assert_array_equal(_labels(out / "a.png"), expected)


def test_predict_files_and_glob(model_dir, images, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model_dir), str(images / "b.jpg"),
                 str(images / "sub" / "*.png"), "--out-dir", str(out), "--device", "cpu"]) == 0
    assert _outputs(out) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]


def test_predict_grayscale_and_rgba(model_dir, tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(30, 44), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(36, 28, 4), dtype=np.uint8)
    _write(tmp_path / "in" / "gray.png", gray)
    _write(tmp_path / "in" / "rgba.png", rgba)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model_dir), str(tmp_path / "in"), "--out-dir", str(out),
                 "--device", "cpu"]) == 0
    assert _labels(out / "gray.png").shape == (30, 44)
    assert _labels(out / "rgba.png").shape == (36, 28)
    segmenter = knet.Segmenter.from_pretrained(model_dir, device="cpu")
    # grayscale is replicated to RGB, RGBA loses its alpha, as in the test pipeline
    np.testing.assert_array_equal(_labels(out / "gray.png"), segmenter(np.stack([gray] * 3, -1)).labels)
    np.testing.assert_array_equal(_labels(out / "rgba.png"), segmenter(rgba[..., :3].copy()).labels)


def test_corrupt_file_is_skipped_by_name(model_dir, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(model_dir), str(images), "--out-dir", str(out),
                 "--device", "cpu", "--batch-size", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot decode" in err
    assert _outputs(out) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png",
                             "sub/a.png", "sub/a_overlay.png"]
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no temporary files left


@pytest.mark.parametrize("tta", [False, True], ids=["single-scale", "tta"])
def test_labels_equal_the_test_pipeline_argmax(model_dir, images, tmp_path, tta):
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(model_dir), str(images), "--out-dir", str(out),
            "--device", "cpu", "--batch-size", "3"]
    assert main(argv + (["--tta"] if tta else [])) == 0
    model = knet.load(model_dir).eval()
    sources = [images / "a.png", images / "b.jpg", images / "sub" / "a.png"]
    expected = inference.TestPipeline(model, tta=tta).predict([read_image(p) for p in sources])
    for stem, labels in zip(["a", "b", "sub/a"], expected):
        np.testing.assert_array_equal(_labels(out / f"{stem}.png"), labels.numpy())


def test_more_than_255_classes_give_uint16_labels(tmp_path):
    import torch

    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=300, **{"data.test_scale": (64, 32)})
    knet.save_pretrained(model, tmp_path / "m300")
    _write(tmp_path / "x.png", _image(np.random.default_rng(0), 20, 30))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(tmp_path / "m300"), str(tmp_path / "x.png"),
                 "--out-dir", str(out), "--device", "cpu"]) == 0
    labels = _labels(out / "x.png")
    assert labels.dtype == np.uint16 and labels.shape == (20, 30)
    expected = knet.Segmenter(model, device="cpu")(read_image(tmp_path / "x.png")).labels
    assert expected.dtype == np.uint16
    np.testing.assert_array_equal(labels, expected)


def test_predict_needs_a_checkpoint(images, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--model", "knet-r50-fcn-tiny", str(images), "--out-dir", str(tmp_path / "o")])
    assert "--checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["same", "symlink", "dotdot"])
def test_an_out_dir_that_would_overwrite_an_input_is_refused_before_any_work(tmp_path, model_dir, capsys, out):
    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    _write(photos / "astronaut.png", _image(rng))
    _write(photos / "rocket.jpg", _image(rng))
    (tmp_path / "link").symlink_to(photos)
    out_dir = {"same": photos, "symlink": tmp_path / "link", "dotdot": photos / "x" / ".."}[out]
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    assert main(["predict", "--checkpoint", str(model_dir), str(photos), "--out-dir", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would overwrite the input" in err and "astronaut.png" in err
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_an_out_dir_beside_the_inputs_is_fine(tmp_path, model_dir):
    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    _write(photos / "rocket.jpg", _image(rng))
    before = (photos / "rocket.jpg").read_bytes()
    assert main(["predict", "--checkpoint", str(model_dir), str(photos), "--out-dir", str(photos)]) == 0
    assert (photos / "rocket.jpg").read_bytes() == before and (photos / "rocket.png").is_file()

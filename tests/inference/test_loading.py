"""``knet.load``: every kind of weights (reference and official .pth, training checkpoint, native
directory, .onnx of knet export) through one loader, the Segmenter and the CLI through it too, and
the errors that say what to do."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import knet
from knet.cli import main
from knet.errors import CheckpointError, KnetError, cli_message
from tests.conftest import golden_path, logits_tolerance


def _assert_golden_logits(model, npz_name: str) -> None:
    ref = np.load(golden_path(npz_name))
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["x_sq"])).numpy()
    assert np.abs(logits - ref["logits_sq"]).max() <= logits_tolerance(ref["logits_sq"])


@pytest.fixture(scope="module")
def native_dirs(tmp_path_factory):
    """Native directories of the tiny FCN (reference weights) and of a random panoptic model."""
    root = tmp_path_factory.mktemp("native")
    fcn = knet.load(golden_path("knet-r50-fcn.tiny.pth"))
    panoptic = knet.build_model("knet-r50-fpn-panoptic-tiny")
    return {"fcn": knet.save_pretrained(fcn, root / "fcn"),
            "panoptic": knet.save_pretrained(panoptic, root / "panoptic")}


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, native_dirs):
    """The tiny FCN exported once (no parity check: tests/export checks the exporter)."""
    for package in ("onnxscript", "onnxruntime"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'knet-seg[onnx]')")
    from knet.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "fcn.onnx"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(knet.load(native_dirs["fcn"]), path, check=False)
    finally:
        torch.set_num_threads(threads)
    return path


def test_a_reference_semantic_pth_finds_its_preset():
    model = knet.load(golden_path("knet-r50-fcn.tiny.pth"))
    assert isinstance(model, knet.KNet) and model.config.name == "knet-r50-fcn-tiny"
    assert not model.training and next(model.parameters()).device.type == "cpu"
    _assert_golden_logits(model, "knet-r50-fcn.tiny.npz")


@pytest.mark.parametrize("golden, preset", [("knet-det-panoptic", "knet-r50-fpn-panoptic-tiny"),
                                            ("knet-det-instance", "knet-r50-fpn-instance-tiny")])
def test_the_official_panoptic_and_instance_pth(golden, preset):
    model = knet.load(golden_path(f"det/{golden}.tiny.pth"), device="cpu")
    assert isinstance(model, knet.KNetMaskSegmentor) and model.config.name == preset and not model.training


def test_shared_shapes_name_the_candidates_and_a_name_settles_it():
    path = golden_path("knet-swin-t-upernet.tiny.pth")
    with pytest.raises(CheckpointError, match="knet-swin-t-upernet-tiny") as err:
        knet.load(path)
    assert "model=NAME" in str(err.value) and "(--model NAME)" in cli_message(err.value)
    assert knet.load(path, "knet-swin-t-upernet-tiny").config.name == "knet-swin-t-upernet-tiny"


def test_a_training_checkpoint_carries_its_config(tmp_path):
    model = knet.build_model("knet-r50-fcn-tiny", {"num_classes": 5})
    path = tmp_path / "iter_10.pth"
    torch.save({"state_dict": model.state_dict(), "config": model.config.to_dict(), "iteration": 10}, path)
    loaded = knet.load(path)
    assert loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_native_directory_with_overrides(native_dirs):
    model = knet.load(native_dirs["fcn"], overrides={"data.test_scale": (64, 48)})
    assert model.config.name == "knet-r50-fcn-tiny" and tuple(model.config.data.test_scale) == (64, 48)
    _assert_golden_logits(model, "knet-r50-fcn.tiny.npz")


def test_an_onnx_file_gives_the_onnx_runtime_runner(onnx_file):
    from knet.inference.onnx_runner import OnnxRunner

    runner = knet.load(onnx_file, device="cpu", threads=1)
    assert isinstance(runner, OnnxRunner) and runner.config.name == "knet-r50-fcn-tiny" and runner.threads == 1
    assert knet.load(onnx_file, "knet-r50-fcn-tiny", threads=1).config.name == "knet-r50-fcn-tiny"
    with pytest.raises(KnetError, match="holds knet-r50-fcn-tiny, not knet-r50-upernet-tiny") as err:
        knet.load(onnx_file, "knet-r50-upernet-tiny", threads=1)
    assert "leave --model out" in cli_message(err.value)
    with pytest.raises(KnetError, match="overrides do not apply"):
        knet.load(onnx_file, overrides={"num_classes": 3})


def test_the_segmenter_loads_through_it(native_dirs, onnx_file):
    picture = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    by_dir = knet.Segmenter.from_pretrained(native_dirs["fcn"], device="cpu", test_scale=(64, 48))
    by_pth = knet.Segmenter.from_pretrained(golden_path("knet-r50-fcn.tiny.pth"), "knet-r50-fcn-tiny", device="cpu",
                                            test_scale=(64, 48))
    by_onnx = knet.Segmenter(checkpoint=onnx_file, device="cpu", test_scale=(64, 48))
    expected = by_dir(picture).labels
    np.testing.assert_array_equal(by_pth(picture).labels, expected)
    assert (by_onnx(picture).labels == expected).mean() > 0.99  # float rounding may flip a boundary pixel
    with pytest.raises(KnetError, match="compile applies to torch models"):
        knet.Segmenter.from_pretrained(onnx_file, compile=True)


def test_a_misspelt_preset_gets_the_closest_name():
    with pytest.raises(KnetError, match=r"unknown model 'knet-r50-fcnn'; did you mean knet-r50-fcn\?"):
        knet.load(golden_path("knet-r50-fcn.tiny.pth"), "knet-r50-fcnn")
    with pytest.raises(KnetError, match="load_checkpoint"):
        knet.load(golden_path("knet-r50-fcn.tiny.pth"), knet.build_model("knet-r50-fcn-tiny"))


def test_a_directory_of_another_model_names_its_own(native_dirs, capsys):
    directory = native_dirs["panoptic"]
    with pytest.raises(CheckpointError, match="the directory holds knet-r50-fpn-panoptic-tiny; leave the model name"):
        knet.load(directory, "knet-r50-fcn-tiny")
    code = main(["benchmark", "--model", "knet-r50-fcn-tiny", "--checkpoint", str(directory), "--size", "32",
                 "--iters", "1", "--warmup", "0", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.endswith("the directory holds knet-r50-fpn-panoptic-tiny; leave --model out")


def test_the_cli_leaves_out_the_python_advice(native_dirs, tmp_path, capsys):
    # 150 classes in the file, 5 in the model: a shape mismatch
    checkpoint = golden_path("knet-r50-fcn.tiny.pth")
    with pytest.raises(CheckpointError, match=r"strict=False loads what fits\)$"):
        knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny", {"num_classes": 5}), checkpoint)
    code = main(["convert", "--model", "knet-r50-fcn-tiny", "--checkpoint", str(checkpoint), "--set",
                 "num_classes=5", "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("knet convert: error:") and "shape mismatch" in err
    assert "strict=False" not in err and len(err.splitlines()) == 1

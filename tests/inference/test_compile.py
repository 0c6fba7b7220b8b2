"""The opt-in compiled path (``torch.compile`` of the inference copy): ``knet.Segmenter(...,
compile=True)`` gives the eager label maps (except at near-ties) and compiles once per input size;
``knet predict --compile`` builds such a segmenter. One compile of the tiny model takes ~20-60 s
on two cores: slow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import knet
from knet.checkpoint import load_model
from knet.cli import main
from tests.conftest import golden_path, logits_tolerance


@pytest.mark.slow
def test_compiled_segmenter_and_predict_match_eager(tmp_path, capsys):
    model = load_model(golden_path("knet-r50-fcn.tiny.pth"), "knet-r50-fcn-tiny").eval()
    image = np.random.default_rng(0).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    eager = knet.Segmenter(model, device="cpu", test_scale=(96, 64))
    compiled = knet.Segmenter(model, device="cpu", test_scale=(96, 64), compile=True)
    assert compiled.pipeline.runner.compiled and not eager.pipeline.runner.compiled
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    expected, got = eager.pipeline.runner(x), compiled.pipeline.runner(x)
    assert float((got - expected).abs().max()) <= logits_tolerance(expected)
    first = compiled(image)  # the same input size as x: compiled already, reused
    reference = eager(image)
    top2 = np.sort(reference.probabilities(), axis=0)[-2:]
    differ = first.labels != reference.labels
    assert np.all(top2[1][differ] - top2[0][differ] < 1e-4), int(differ.sum())


def test_predict_compile_builds_a_compiled_segmenter(tmp_path):
    """--compile reaches the Segmenter (compiling happens on the first image: not run here)."""
    from knet.apps.predict import _build_segmenter
    from knet.cli import build_parser

    args = build_parser("predict").parse_args(["predict", "--model", "knet-r50-fcn-tiny", "--checkpoint",
                                      str(golden_path("knet-r50-fcn.tiny.pth")), str(tmp_path), "--out-dir",
                                      str(tmp_path / "out"), "--device", "cpu", "--compile"])
    assert _build_segmenter(args).pipeline.runner.compiled


def test_compile_is_for_torch_models(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "m.onnx"), str(tmp_path / "x.png"), "--out-dir",
                 str(tmp_path / "o"), "--compile"]) == 2
    assert "--compile applies to torch models, not to an .onnx --checkpoint" in capsys.readouterr().err

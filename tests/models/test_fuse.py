"""Folding BatchNorms into convolutions for inference (:mod:`knet.models.fuse`) and the inference
copy the test pipelines run: the same outputs, the caller's model untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import knet
from knet.checkpoint import load_model
from knet.inference.pipeline import TorchRunner
from knet.models.fuse import fold_batch_norms, inference_copy
from knet.models.winograd import use_winograd
from tests.conftest import golden_path, logits_tolerance


# The reference's tiny checkpoints: trained-like statistics (random weights amplify float32
# rounding through the kernel-update stages far beyond any real model's).
GOLDEN_WEIGHTS = {
    "knet-r50-fcn-tiny": "knet-r50-fcn.tiny.pth",
    "knet-r50-upernet-tiny": "knet-r50-upernet.tiny.pth",
    "knet-r50-deeplabv3-tiny": "knet-r50-deeplabv3.tiny.pth",
    "knet-swin-t-upernet-tiny": "knet-swin-t-upernet.tiny.pth",
    "knet-r50-fpn-panoptic-tiny": "det/knet-det-panoptic.tiny.pth",
}


@pytest.mark.parametrize("name", sorted(GOLDEN_WEIGHTS))
def test_the_inference_copy_keeps_the_outputs_within_the_golden_tolerance(name):
    model = load_model(golden_path(GOLDEN_WEIGHTS[name]), name).eval()
    folded = inference_copy(model)
    assert not any(type(m) is nn.BatchNorm2d for m in folded.backbone.modules())
    # The tiny widths are under the default threshold (128): make every supported 3x3 Winograd.
    assert use_winograd(folded, min_channels=1) > 0
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model.inference(x), folded.inference(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got):
        assert float((g - e).abs().max()) <= logits_tolerance(e)


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="model.eval"):
        fold_batch_norms(knet.build_model("knet-r50-fcn-tiny").train())


def test_the_runner_leaves_the_callers_model_alone():
    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = TorchRunner(model)
    runner(torch.randn(1, 3, 32, 32))
    assert model.training and all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not runner.model.training and not any(p.requires_grad for p in runner.model.parameters())
    assert inference_copy(model) is not model


def test_the_inference_copy_uses_winograd_for_wide_convolutions_unless_asked_not_to():
    model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.Conv2d(128, 8, 3, padding=1))
    fast, plain = inference_copy(model), inference_copy(model, winograd=False)
    assert [type(m).__name__ for m in fast] == ["WinogradConv2d", "Identity", "Conv2d"]
    assert [type(m).__name__ for m in plain] == ["Conv2d", "Identity", "Conv2d"]
    x = torch.randn(1, 128, 10, 14)
    with torch.no_grad():
        assert float((fast(x) - plain(x)).abs().max()) <= 1e-4 * float(plain(x).abs().max())


"""The -tiny presets loaded from the reference's own checkpoints reproduce its logits and losses."""
import numpy as np
import pytest
import torch

import knet
from knet.tasks import get_task
from tests.conftest import PRESET_ROWS, golden_path, logits_tolerance


@pytest.fixture(scope="module", params=PRESET_ROWS)
def golden(request):
    name = request.param
    pth, npz = golden_path(f"{name}.tiny.pth"), golden_path(f"{name}.tiny.npz")
    return name, pth, dict(np.load(npz))


def test_eval_logits_match_reference(golden):
    name, pth, ref = golden
    model = knet.build_model(f"{name}-tiny")
    knet.load_checkpoint(model, pth)
    model.eval()
    for key in ("sq", "odd"):
        with torch.no_grad():
            logits = model(torch.from_numpy(ref[f"x_{key}"])).numpy()
        expected = ref[f"logits_{key}"]
        assert logits.shape == expected.shape
        diff = np.abs(logits - expected).max()
        assert diff <= logits_tolerance(expected), f"{name} logits_{key}: max abs diff {diff}"


def test_training_losses_match_reference(golden):
    name, pth, ref = golden
    # The reference's losses were computed with dropout and drop-path off, BatchNorm in train mode.
    overrides = {"decode_head.dropout_ratio": 0.0, "auxiliary_head.dropout_ratio": 0.0}
    if "swin" in name:
        overrides["backbone.drop_path_rate"] = 0.0
    model = knet.build_model(f"{name}-tiny", overrides)
    knet.load_checkpoint(model, pth)
    model.train()
    losses = get_task("semantic").losses(model.outputs(torch.from_numpy(ref["x_sq"])),
                                         torch.from_numpy(ref["label_sq"]), model.config)
    assert sorted(losses) == sorted(["decode.loss_ce.s0", "decode.loss_ce.s1", "decode.loss_ce.s2",
                                     "decode.loss_ce.s3", "aux.loss_ce"])
    for key, value in losses.items():
        value = value.detach()
        expected = float(ref[f"loss_{key}"])
        assert abs(float(value) - expected) <= 1e-4 * abs(expected), f"{name} {key}: {float(value)} vs {expected}"
    # The losses train: gradients reach the backbone.
    sum(losses.values()).backward()
    assert model.backbone.state_dict(keep_vars=True)[next(iter(model.backbone.state_dict()))].grad is not None

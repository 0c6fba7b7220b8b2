"""The official panoptic/instance checkpoints (mmdetection 2.x ``.pth``): strict loading into the
presets with the official outputs, finding the preset, refusing the other family, native format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import knet
from knet.checkpoint import load_model, read_checkpoint
from knet.checkpoint.reference import presets_fitting
from knet.config import KNetMaskConfig
from knet.errors import CheckpointError
from tests.conftest import golden_path

GOLDENS = {
    "knet-det-panoptic": "knet-r50-fpn-panoptic-tiny",
    "knet-det-instance": "knet-r50-fpn-instance-tiny",
    "knet-det-panoptic-swin": "knet-swin-l-fpn-panoptic-ms3x-tiny",
}
pytestmark = pytest.mark.usefixtures("one_thread")


def assert_logits_match(model, ref):
    """The last stage's class logits and stride-4 masks, end to end from the golden input x."""
    model.eval()
    with torch.no_grad():
        output = model(torch.from_numpy(ref["x"]))
        actual = {"s2_cls_score": output.final_classes, "s2_scaled_mask_preds": model.final_mask_logits(output)}
    for key, value in actual.items():
        expected = ref[key]
        assert tuple(value.shape) == expected.shape, key
        diff = float(np.abs(value.numpy() - expected).max())
        assert diff <= 1e-4 * float(np.abs(expected).max()), f"{key}: max abs diff {diff}"


@pytest.mark.parametrize("golden, preset", GOLDENS.items())
def test_official_checkpoint_loads_strictly_with_the_official_outputs(golden, preset):
    model = knet.build_model(preset)
    result = knet.load_checkpoint(model, golden_path(f"det/{golden}.tiny.pth"))
    assert not result  # strict: nothing missing, unexpected or mis-shaped
    assert_logits_match(model, np.load(golden_path(f"det/{golden}.tiny.npz")))


@pytest.mark.parametrize("golden, preset", GOLDENS.items())
def test_load_model_finds_the_preset_and_the_class_names(golden, preset):
    path = golden_path(f"det/{golden}.tiny.pth")
    model = load_model(path)
    # The R-50 1x and ms-3x twins have the same shapes: the file's meta names its official config.
    assert model.config.name == preset
    assert len(presets_fitting(read_checkpoint(path)["state_dict"])) == (2 if "r50" in preset else 1)
    names = read_checkpoint(path)["class_names"]
    assert names[7] == "truck"  # mmdet's panoptic CLASSES spell it ' truck'
    assert names == model.config.class_names


def test_a_config_less_file_without_a_name_in_its_meta_asks_for_the_preset(tmp_path):
    raw = torch.load(golden_path("det/knet-det-panoptic.tiny.pth"), map_location="cpu", weights_only=False)
    path = tmp_path / "anonymous.pth"
    torch.save({"state_dict": raw["state_dict"]}, path)
    with pytest.raises(CheckpointError, match="--model.*knet-r50-fpn-panoptic-tiny, knet-r50-fpn-panoptic-ms3x-tiny"):
        load_model(path)
    assert load_model(path, "knet-r50-fpn-panoptic-ms3x-tiny").config.name == "knet-r50-fpn-panoptic-ms3x-tiny"


def test_the_other_family_is_refused_in_one_line_naming_the_fitting_presets():
    semantic_file = golden_path("knet-r50-fcn.tiny.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(semantic_file, "knet-r50-fpn-panoptic-tiny")
    message = str(err.value)
    assert "is a semantic K-Net checkpoint and does not fit the panoptic model knet-r50-fpn-panoptic-tiny" in message
    assert "presets whose shapes fit it: knet-r50-fcn-tiny" in message and "\n" not in message

    panoptic_file = golden_path("det/knet-det-panoptic.tiny.pth")
    with pytest.raises(CheckpointError) as err:
        knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny"), panoptic_file)
    message = str(err.value)
    assert "is a panoptic/instance K-Net checkpoint and does not fit the semantic model knet-r50-fcn-tiny" in message
    assert "knet-r50-fpn-panoptic-tiny, knet-r50-fpn-panoptic-ms3x-tiny" in message and "\n" not in message
    # Within the family, panoptic into instance: a shape problem naming the presets that fit.
    with pytest.raises(CheckpointError, match=r"fit it: knet-r50-fpn-panoptic-tiny.*shape mismatch"):
        knet.load_checkpoint(knet.build_model("knet-r50-fpn-instance-tiny"), panoptic_file)


@pytest.mark.parametrize("golden", ["knet-det-panoptic", "knet-det-instance"])
def test_native_round_trip_keeps_the_task_and_the_outputs(tmp_path, golden):
    model = load_model(golden_path(f"det/{golden}.tiny.pth"))
    out = knet.save_pretrained(model, tmp_path / "native")
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == model.config.task and config["num_stuff_classes"] == model.config.num_stuff_classes
    reloaded = knet.load(out)
    assert isinstance(reloaded.config, KNetMaskConfig) and reloaded.config == model.config
    assert_logits_match(reloaded, np.load(golden_path(f"det/{golden}.tiny.npz")))
    # A training checkpoint carrying the config dict reads back the same way.
    path = tmp_path / "train.pth"
    torch.save({"state_dict": model.state_dict(), "config": model.config.to_dict()}, path)
    assert read_checkpoint(path)["config"] == model.config
    assert not knet.load_checkpoint(knet.build_model(model.config), path)

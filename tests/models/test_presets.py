"""Presets: the seven semantic rows build with the reference's parameter counts and run a forward
pass (the panoptic/instance rows: test_mask_presets.py)."""
import pytest
import torch

import knet
from knet.config import ConfigError
from knet.presets import RESULTS_TABLE, UnknownPresetError
from tests.conftest import PRESET_ROWS

EXPECTED_PARAMS_M = {
    "knet-r50-fcn": 62.81,
    "knet-r50-pspnet": 62.29,
    "knet-r50-deeplabv3": 81.43,
    "knet-r50-upernet": 79.73,
    "knet-swin-t-upernet": 73.15,
    "knet-swin-l-upernet": 246.97,
    "knet-swin-l-upernet-640": 246.97,
}


def test_every_row_has_a_tiny_twin():
    names = knet.list_presets()
    for row in PRESET_ROWS:
        assert row in names and f"{row}-tiny" in names
    assert {name for name, row in RESULTS_TABLE.items() if row["task"] == "semantic"} == set(PRESET_ROWS)


@pytest.mark.parametrize("name", PRESET_ROWS)
def test_full_size_parameter_count_and_forward(name):
    torch.manual_seed(0)
    model = knet.build_model(name)
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == EXPECTED_PARAMS_M[name]
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 80))
    assert logits.shape == (1, 150, 64, 80)
    assert torch.isfinite(logits).all()


def test_overrides_dotted_and_nested():
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=5, backbone={"norm_eval": True})
    assert model.num_classes == 5 and model.config.backbone.norm_eval
    assert model.decode_head.kernel_generate_head.conv_seg.out_channels == 5
    cfg = knet.get_config("knet-swin-t-upernet", {"backbone.drop_path_rate": "0.1", "train.lr": "1e-3"})
    assert cfg.backbone.drop_path_rate == 0.1 and cfg.train.lr == 1e-3


def test_640_preset_uses_640_everywhere():
    cfg = knet.get_config("knet-swin-l-upernet-640")
    assert cfg.data.crop_size == (640, 640) and cfg.data.train_scale == (2048, 640)
    assert cfg.data.test_scale == (2048, 640)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownPresetError, match="knet-r50-fcn"):
        knet.build_model("knet-r101")
    with pytest.raises(ConfigError, match="valid"):
        knet.get_config("knet-r50-fcn", {"backbone.nope": 1})
    with pytest.raises(ConfigError, match="not a valid int"):
        knet.get_config("knet-r50-fcn", {"num_classes": "many"})


def test_config_round_trips_through_json():
    cfg = knet.get_config("knet-swin-l-upernet-640-tiny", num_classes=7)
    assert knet.KNetConfig.from_dict(cfg.to_dict()) == cfg

"""The ``loss`` group and ``data.ignore_index`` of :class:`knet.config.KNetMaskConfig`: serialised
with the rest, settable with ``--set``, validated, and absent from older files without harm."""
from __future__ import annotations

import json

import pytest
import torch

import knet
from knet.checkpoint import read_checkpoint
from knet.config import ConfigError, KNetMaskConfig, MaskLossConfig, config_from_dict, parse_set_options

CHANGED = {"cls_weight": 1.5, "mask_weight": 2.0, "dice_weight": 3.0, "rank_weight": 0.2, "seg_weight": 0.5,
           "focal_alpha": 0.3, "focal_gamma": 1.5, "stage_weights": (1.0, 0.5, 0.25), "cls_cost": 1.0,
           "mask_cost": 0.5, "dice_cost": 2.0}


def test_defaults_are_the_official_values():
    loss = KNetMaskConfig().loss
    assert loss == MaskLossConfig()
    assert (loss.cls_weight, loss.mask_weight, loss.dice_weight, loss.rank_weight, loss.seg_weight) == (
        2.0, 1.0, 4.0, 0.1, 1.0)
    assert (loss.cls_cost, loss.mask_cost, loss.dice_cost) == (2.0, 1.0, 4.0)
    assert (loss.focal_alpha, loss.focal_gamma, loss.stage_weights) == (0.25, 2.0, None)
    assert knet.get_config("knet-r50-fpn-panoptic").loss == loss


def test_round_trip_with_non_default_values():
    config = knet.get_config("knet-r50-fpn-panoptic-tiny").replace(loss=CHANGED, data={"ignore_index": 200})
    assert config.loss == MaskLossConfig(**CHANGED) and config.data.ignore_index == 200
    data = config.to_dict()
    assert data["loss"]["stage_weights"] == (1.0, 0.5, 0.25) and data["data"]["ignore_index"] == 200
    assert KNetMaskConfig.from_dict(data) == config
    assert config_from_dict(json.loads(config.to_json())) == config


def test_set_options_reach_the_loss_group():
    config = knet.get_config("knet-r50-fpn-instance-tiny")
    overrides = parse_set_options(["loss.dice_weight=2.5", "loss.stage_weights=1,1,0.5", "loss.cls_cost=0",
                                   "data.ignore_index=254"])
    changed = config.replace(overrides)
    assert changed.loss.dice_weight == 2.5 and changed.loss.stage_weights == (1.0, 1.0, 0.5)
    assert changed.loss.cls_cost == 0.0 and changed.data.ignore_index == 254
    assert changed.replace({"loss.stage_weights": "none"}).loss.stage_weights is None
    with pytest.raises(ConfigError, match="valid: .*dice_weight"):
        config.replace({"loss.dice": 1.0})
    with pytest.raises(ConfigError, match="loss.dice_weight"):
        config.replace({"loss.dice_weight": "heavy"})
    with pytest.raises(ConfigError, match="loss.stage_weights has 2 values but the model has 3"):
        config.replace({"loss.stage_weights": "1,1"})


def test_unusable_ignore_index_is_refused_in_one_line():
    config = knet.get_config("knet-r50-fpn-panoptic-tiny")  # 133 classes
    for value, fragment in ((100, "is the label of a class"), (132, "is the label of a class"), (256, "0..255"),
                            (-1, "0..255")):
        with pytest.raises(ConfigError) as excinfo:
            config.replace({"data.ignore_index": value})
        message = str(excinfo.value)
        assert f"data.ignore_index={value}" in message and fragment in message and "\n" not in message
    assert config.replace({"data.ignore_index": 133}).data.ignore_index == 133
    # Adopting a dataset with more classes than the void label allows is refused the same way.
    small = config.replace(num_thing_classes=3, num_stuff_classes=2, class_names=None, palette=None, isthing=None,
                           category_ids=None, data={"ignore_index": 5})
    with pytest.raises(ConfigError, match="data.ignore_index=5"):
        small.replace(num_stuff_classes=3)


def test_files_written_without_a_loss_group_still_load(tmp_path):
    model = knet.build_model("knet-r50-fpn-instance-tiny")
    old = model.config.to_dict()
    del old["loss"]
    assert config_from_dict(old).loss == MaskLossConfig()
    assert KNetMaskConfig.from_dict(old) == model.config
    # A native directory written before the group existed.
    out = knet.save_pretrained(model, tmp_path / "native")
    config_file = out / "config.json"
    data = json.loads(config_file.read_text())
    del data["loss"]
    config_file.write_text(json.dumps(data))
    reloaded = knet.load(out)
    assert reloaded.config == model.config and reloaded.config.loss == MaskLossConfig()
    # A training checkpoint embedding such a config dict.
    path = tmp_path / "train.pth"
    torch.save({"state_dict": model.state_dict(), "config": old}, path)
    assert read_checkpoint(path)["config"] == model.config

"""Typed configs: kind-keyed head groups, options that do not belong to a kind, and files written
by release 0.1 (a flat head config holding every kind's fields) still loading."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import knet
from knet.config import ASPPHeadConfig, ConfigError, FCNHeadConfig, KNetConfig, UPerHeadConfig

RELEASE_0_1 = Path(__file__).parent / "fixtures" / "release_0_1"


def test_each_head_kind_has_its_own_fields():
    assert isinstance(knet.get_config("knet-r50-fcn").decode_head, FCNHeadConfig)
    assert isinstance(knet.get_config("knet-r50-deeplabv3").decode_head, ASPPHeadConfig)
    assert isinstance(knet.get_config("knet-swin-t-upernet").decode_head, UPerHeadConfig)
    cfg = knet.get_config("knet-r50-deeplabv3", {"decode_head.dilations": "1,6,12,18"})
    assert cfg.decode_head.dilations == (1, 6, 12, 18)


def test_an_option_of_another_head_kind_is_an_error_naming_the_valid_fields():
    with pytest.raises(ConfigError) as err:
        knet.get_config("knet-r50-fcn", {"decode_head.dilations": "1,2"})
    message = str(err.value)
    assert "'dilations' is not a field of decode_head" in message
    assert "valid: channels, concat_input, dropout_ratio, kind, num_convs" in message
    with pytest.raises(ConfigError, match="unknown decode_head kind 'segformer'; valid: aspp, fcn, psp, uper"):
        knet.get_config("knet-r50-fcn", {"decode_head.kind": "segformer"})


def test_switching_the_head_kind_keeps_only_its_fields():
    cfg = knet.get_config("knet-r50-fcn", {"decode_head.kind": "aspp", "decode_head.dilations": "1,2"})
    assert cfg.decode_head == ASPPHeadConfig(channels=512, dilations=(1, 2))


def test_a_native_directory_of_release_0_1_loads_with_the_same_outputs():
    raw = json.loads((RELEASE_0_1 / "native_fcn_tiny" / "config.json").read_text())
    assert "dilations" in raw["decode_head"] and "task" not in raw  # the old flat layout
    model = knet.load(RELEASE_0_1 / "native_fcn_tiny").eval()
    assert model.config.task == "semantic" and isinstance(model.config.decode_head, FCNHeadConfig)
    assert model.config.class_names == ["background", "stripes", "checkers", "dots"]
    expected = np.load(RELEASE_0_1 / "native_fcn_tiny_logits.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(expected["x"])).numpy()
    # Float rounding differs between CPUs (the file was written on an AMD EPYC; an Intel Xeon's
    # AVX-512 convolutions gave 9.2e-5 with logits up to 20): within 1e-5 x max |logit|.
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=1e-5 * np.abs(expected["logits"]).max())


def test_a_config_of_release_0_1_loads_for_every_head_kind():
    raw = json.loads((RELEASE_0_1 / "swin_t_upernet_tiny_config.json").read_text())
    cfg = KNetConfig.from_dict(raw)
    assert cfg == knet.get_config("knet-swin-t-upernet-tiny", {"decode_head.dropout_ratio": 0.0})
    # A training checkpoint of release 0.1 carries the same dict: it reloads through the same path.
    assert KNetConfig.from_dict(json.loads(cfg.to_json())) == cfg

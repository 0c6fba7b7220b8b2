"""Reading the reference's .pth files: safely, strictly, and with useful errors."""
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

import knet
from knet.checkpoint import LoadResult, load_model, read_checkpoint
from knet.checkpoint.safe_load import Placeholder, safe_load
from knet.cli import main as cli_main
from knet.errors import CheckpointError
from tests.conftest import golden_path, logits_tolerance


@pytest.fixture(scope="module")
def fcn_ref():
    return golden_path("knet-r50-fcn.tiny.pth")


@pytest.fixture(scope="module")
def fcn_state(fcn_ref):
    return torch.load(fcn_ref, map_location="cpu", weights_only=True)


class _RunsCode:
    """Unpickling this calls os.system: a loader that executes pickled code would create the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_never_executed(tmp_path, fcn_state):
    marker = tmp_path / "pwned"
    ckpt = dict(fcn_state)
    ckpt["meta"] = {**fcn_state["meta"], "payload": _RunsCode(marker), "score": np.float64(43.6),
                    "hist": np.arange(5, dtype=np.int32)}
    path = tmp_path / "evil.pth"
    torch.save(ckpt, path)
    model = knet.build_model("knet-r50-fcn-tiny")
    assert not knet.load_checkpoint(model, path)  # weights load, nothing skipped
    assert not marker.exists()
    raw = safe_load(path)
    assert isinstance(raw["meta"]["payload"], Placeholder)
    # numpy's own values come back as numpy values
    assert raw["meta"]["score"] == np.float64(43.6)
    np.testing.assert_array_equal(raw["meta"]["hist"], np.arange(5, dtype=np.int32))


def test_reference_classes_in_message_hub_and_optimizer_state(tmp_path, fcn_state):
    # Objects of the reference's own classes (mmengine) pickled in message_hub: the class is not
    # importable here, so it must load as an inert placeholder.
    module = types.ModuleType("mmengine_fake_logging")

    class MessageHub:
        def __init__(self):
            self.log_scalars = {"train/loss": [1.0, 0.5]}

    MessageHub.__module__ = "mmengine_fake_logging"
    MessageHub.__qualname__ = "MessageHub"
    module.MessageHub = MessageHub
    sys.modules["mmengine_fake_logging"] = module
    try:
        model = knet.build_model("knet-r50-fcn-tiny")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ckpt = {"meta": fcn_state["meta"], "state_dict": fcn_state["state_dict"],
                "optimizer": opt.state_dict(), "message_hub": MessageHub()}
        path = tmp_path / "with_hub.pth"
        torch.save(ckpt, path)
    finally:
        del sys.modules["mmengine_fake_logging"]
    raw = safe_load(path)
    assert isinstance(raw["message_hub"], Placeholder)
    assert raw["message_hub"].state == {"log_scalars": {"train/loss": [1.0, 0.5]}}
    assert not knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny"), path)


def test_loaded_checkpoint_gives_reference_class_names(fcn_ref):
    model = knet.build_model("knet-r50-fcn-tiny")
    knet.load_checkpoint(model, fcn_ref)
    assert model.config.class_names[:3] == ["wall", "building", "sky"]
    assert model.config.palette[0] == [120, 120, 120]


def test_strict_load_names_keys_and_fitting_presets(fcn_ref):
    model = knet.build_model("knet-r50-pspnet-tiny")
    with pytest.raises(CheckpointError) as err:
        knet.load_checkpoint(model, fcn_ref)
    message = str(err.value)
    assert "knet-r50-fcn-tiny" in message  # the preset it does fit
    assert "decode_head.kernel_generate_head.psp_modules.0.1.conv.weight" in message  # a missing key
    assert "decode_head.kernel_generate_head.conv_cat.conv.weight" in message or "unexpected" in message


def test_non_strict_load_loads_what_fits_and_lists_the_rest(fcn_ref, fcn_state):
    model = knet.build_model("knet-r50-pspnet-tiny")
    result = knet.load_checkpoint(model, fcn_ref, strict=False)
    assert isinstance(result, LoadResult) and result
    assert "decode_head.kernel_generate_head.convs.0.conv.weight" in result.unexpected
    assert "decode_head.kernel_generate_head.bottleneck.conv.weight" in result.missing
    torch.testing.assert_close(model.backbone.stem[0].weight, fcn_state["state_dict"]["backbone.stem.0.weight"])


def test_other_class_count_is_a_shape_mismatch(fcn_ref):
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=5)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        knet.load_checkpoint(model, fcn_ref)
    result = knet.load_checkpoint(model, fcn_ref, strict=False)
    assert any(m.startswith("decode_head.kernel_generate_head.conv_seg.weight") for m in result.mismatched)


def test_ddp_prefix_and_unknown_keys(tmp_path, fcn_state):
    state = {f"module.{k}": v for k, v in fcn_state["state_dict"].items()}
    state["module.extra_head.weight"] = torch.zeros(1)
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="extra_head.weight"):
        knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny"), path)
    result = knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny"), path, strict=False)
    assert result.unexpected == ["extra_head.weight"] and not result.missing


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny"), bad)
    with pytest.raises(CheckpointError, match="not found"):
        knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny"), tmp_path / "missing.pth")


def test_load_model_finds_the_only_fitting_preset(fcn_ref):
    model = load_model(fcn_ref)
    assert model.config.name == "knet-r50-fcn-tiny"
    # the Swin rows share their shapes: the name must be given
    with pytest.raises(CheckpointError, match="--model"):
        load_model(golden_path("knet-swin-t-upernet.tiny.pth"))


def test_native_round_trip_and_convert_cli(tmp_path, fcn_ref, capsys):
    ref = np.load(golden_path("knet-r50-fcn.tiny.npz"))
    out = tmp_path / "native"
    assert cli_main(["convert", "--checkpoint", str(fcn_ref), "--out-dir", str(out), "--model",
                     "knet-r50-fcn-tiny"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "knet-r50-fcn-tiny" and len(config["class_names"]) == 150
    assert len(config["palette"]) == 150
    model = knet.load(out).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["x_sq"])).numpy()
    assert np.abs(logits - ref["logits_sq"]).max() <= logits_tolerance(ref["logits_sq"])
    # a native directory also loads into a model built by name
    assert not knet.load_checkpoint(knet.build_model("knet-r50-fcn-tiny"), out)
    assert read_checkpoint(out)["config"].name == "knet-r50-fcn-tiny"


def test_convert_cli_refuses_the_wrong_preset_in_one_line(tmp_path, fcn_ref, capsys):
    out = tmp_path / "native"
    assert cli_main(["convert", "--checkpoint", str(fcn_ref), "--out-dir", str(out), "--model",
                     "knet-r50-pspnet-tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("knet convert: error:") and "knet-r50-fcn-tiny" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-written


def test_convert_cli_refuses_to_write_over_its_input(tmp_path, fcn_ref, capsys):
    out = tmp_path / "native"
    assert cli_main(["convert", "--checkpoint", str(fcn_ref), "--out-dir", str(out), "--model",
                     "knet-r50-fcn-tiny"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for checkpoint in (out, out / "model.safetensors"):
        assert cli_main(["convert", "--checkpoint", str(checkpoint), "--out-dir", str(out / "sub" / "..")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("knet convert: error: --out-dir: writing") and "would overwrite the input" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

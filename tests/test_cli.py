"""The `knet` command itself: version, help, the preset listing and config printing."""
import json
import subprocess
import sys

import pytest

import knet
from knet.cli import VERBS, main


def test_version_and_help_run_as_a_program():
    out = subprocess.run([sys.executable, "-m", "knet", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"knet {knet.__version__}"
    help_text = subprocess.run([sys.executable, "-m", "knet", "--help"], capture_output=True, text=True,
                               check=True).stdout
    for verb in VERBS:
        assert verb in help_text


def test_models_lists_every_preset_with_published_numbers(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(knet.list_presets())
    assert rows["knet-swin-l-upernet-640"]["mIoU"] == 52.21
    assert rows["knet-r50-fcn"]["checkpoint"].endswith("20220228_043751-abcab920.pth")
    assert rows["knet-r50-fcn-tiny"]["mIoU"] is None


def test_config_prints_overridden_json(capsys):
    assert main(["config", "knet-r50-upernet", "--set", "num_classes=5", "--set", "train.lr=2e-4"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["num_classes"] == 5 and cfg["train"]["lr"] == 2e-4
    assert cfg["backbone"]["strides"] == [1, 2, 2, 2] and cfg["decode_head"]["kind"] == "uper"


@pytest.mark.parametrize("argv, message", [
    (["config", "knet-r50-fcnn"], "unknown model 'knet-r50-fcnn'; did you mean knet-r50-fcn? (`knet models` lists"),
    (["config", "fcn"], "unknown model 'fcn'; e.g. knet-r50-fcn, knet-r50-fpn-panoptic, knet-r50-fpn-instance"),
    (["config", "knet-r50-fcn", "--set", "backbone.depthh=3"], "'depthh' is not a field"),
    (["config", "knet-r50-fcn", "--set", "num_classes"], "expected dotted.key=value"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_models_lists_the_panoptic_and_instance_rows(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["knet-r50-fpn-panoptic"]["task"] == "panoptic" and rows["knet-r50-fpn-panoptic"]["PQ"] == 44.3
    assert rows["knet-swin-l-fpn-panoptic-ms3x"]["PQ_test_dev"] == 55.2
    assert rows["knet-r50-fpn-instance"]["AP"] == 34.0 and rows["knet-r50-fpn-instance"]["head"] == "kernel"
    assert rows["knet-r50-fpn-panoptic"]["checkpoint"].endswith("_20211017_151750-395fbcba.pth")
    assert main(["models"]) == 0
    assert "PQ 44.3" in capsys.readouterr().out


def test_a_verb_run_in_process_leaves_torchs_thread_count_as_it_was(tmp_path, capsys):
    """``--threads`` applies to the verb only: a program (or test) that calls ``main`` goes on with
    its own thread count, after a success and after an error."""
    import torch

    before = torch.get_num_threads()
    mine = 3 if before != 3 else 2
    torch.set_num_threads(mine)
    try:
        assert main(["benchmark", "--model", "knet-r50-fcn-tiny", "--size", "32", "--iters", "1", "--warmup", "0",
                     "--threads", "1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["threads"] == 1
        assert torch.get_num_threads() == mine
        assert main(["test", "--model", "knet-r50-fcn-tiny", "--checkpoint", str(tmp_path / "missing.pth"),
                     "--data-root", str(tmp_path), "--threads", "1"]) == 2
        assert "missing" in capsys.readouterr().err
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)


def test_help_names_the_three_tasks(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "semantic, panoptic and instance segmentation" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["test", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for metric in ("mIoU", "PQ", "mask AP"):
        assert metric in text


def test_an_unknown_flag_shows_the_verbs_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", "m.pth", "x.png", "--out-dir", "out", "--treshold", "0.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: knet predict ") and "--out-dir DIR" in err
    assert err.strip().splitlines()[-1] == "knet predict: error: unrecognized arguments: --treshold 0.5"

"""Training on the CPU gives the caller plain convolutions: Winograd F(4x4, 3x3) runs only inside
the loop (``TrainOptions.cpu_winograd``, ``knet train --no-winograd``), the checkpoints have the
plain model's keys, and the trained model runs anywhere (float64, ``meta``, CUDA) with the direct
convolution. Likewise the channels-last layout (``TrainOptions.cpu_channels_last``, ``knet train
--channels-last``; the default under bf16 autocast) holds only inside the loop."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import knet
import knet.models.fuse  # noqa: F401  (imported first: validation's inference copy keeps the unpatched use_winograd)
from knet.engine import training as T
from knet.models import winograd
from knet.models.winograd import WinogradConv2d
from tests.conftest import count_winograd_calls, needs_cuda

FAST = {
    "data.crop_size": "64,64", "data.train_scale": "64,64", "data.test_scale": "64,64",
    "train.batch_size": 2, "train.log_interval": 1, "train.warmup_iters": 2, "train.lr": 1e-3,
    "train.iters": 2, "train.checkpoint_interval": 2,
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def winograd_calls(monkeypatch):
    """Every convolution of the tiny presets can use Winograd (their widths are under the default
    128); returns a list that grows by one per forward that ran the Winograd path."""
    monkeypatch.setattr(winograd, "use_winograd", functools.partial(winograd.use_winograd, min_channels=1))
    return count_winograd_calls(monkeypatch)


def _train(toy, work_dir, **options):
    cfg = knet.get_config("knet-r50-fcn-tiny", FAST)
    options = {"quiet": True, **options}
    return cfg, T.train(cfg, T.TrainOptions(work_dir=work_dir, workers=0, data_root=toy.root, device="cpu", **options))


def test_cpu_training_gives_back_plain_convolutions(toy, tmp_path, winograd_calls, capsys):
    cfg, result = _train(toy, tmp_path, quiet=False)
    assert winograd_calls and set(winograd_calls) == {torch.float32}  # the loop did use Winograd
    assert "wide 3x3 convolutions run as Winograd" in capsys.readouterr().out
    model = result.model
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())
    assert sum(type(m) is nn.Conv2d for m in model.modules()) > 21
    plain_keys = list(knet.build_model(result.model.config).state_dict())
    assert list(model.state_dict()) == plain_keys
    checkpoint = torch.load(tmp_path / "iter_2.pth", weights_only=True)  # written while Winograd was in place
    assert list(checkpoint["state_dict"]) == plain_keys
    for key, value in model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][key], value), key

    # Anywhere else the model runs the direct convolution: float64 within float32's rounding, meta.
    winograd_calls.clear()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out32 = model(x)
        out64 = copy.deepcopy(model).double()(x.double())
        on_meta = copy.deepcopy(model).to("meta")(x.to("meta"))
    assert out64.dtype == torch.float64
    assert float((out64 - out32.double()).abs().max()) <= 1e-4 * float(out64.abs().max())
    assert on_meta.device.type == "meta" and on_meta.shape == out32.shape
    assert winograd_calls == []


def test_the_model_is_given_back_plain_when_training_fails(toy, tmp_path, winograd_calls, monkeypatch):
    seen = []

    def failing_step(self, it, batch, autocast):
        seen.append(self.state.model)
        assert any(isinstance(m, WinogradConv2d) for m in self.state.model.modules())
        raise RuntimeError("stop")

    monkeypatch.setattr(T._Trainer, "step", failing_step)
    with pytest.raises(RuntimeError, match="stop"):
        _train(toy, tmp_path)
    assert len(seen) == 1 and not any(isinstance(m, WinogradConv2d) for m in seen[0].modules())


def test_without_cpu_winograd_no_winograd_is_used(toy, tmp_path, winograd_calls, monkeypatch, capsys):
    built = []
    original = WinogradConv2d.from_conv
    monkeypatch.setattr(WinogradConv2d, "from_conv", classmethod(lambda cls, conv: built.append(conv)
                                                                  or original(conv)))
    _, result = _train(toy, tmp_path, cpu_winograd=False, quiet=False)
    assert built == [] and winograd_calls == []
    assert "Winograd" not in capsys.readouterr().out
    assert not any(isinstance(m, WinogradConv2d) for m in result.model.modules())


def test_knet_train_no_winograd_reaches_the_trainer(toy, tmp_path, monkeypatch):
    from knet.cli import main

    seen = []

    def fake_train(cfg, options):
        seen.append(options)
        return T.TrainResult(model=nn.Identity(), iteration=0, work_dir=tmp_path)

    monkeypatch.setattr(T, "train", fake_train)
    args = ["train", "--model", "knet-r50-fcn-tiny", "--data-root", str(toy.root), "--device", "cpu", "--quiet"]
    assert main(args + ["--work-dir", str(tmp_path / "a"), "--no-winograd", "--channels-last"]) == 0
    assert main(args + ["--work-dir", str(tmp_path / "b")]) == 0
    assert main(args + ["--work-dir", str(tmp_path / "c"), "--no-channels-last"]) == 0
    assert [o.cpu_winograd for o in seen] == [False, True, True]
    assert [o.cpu_channels_last for o in seen] == [True, None, False]


def _conv_layouts(model):
    """The memory layouts of the model's 3x3 convolution weights (1x1 ones are both at once)."""
    return {"channels_last" if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            else "contiguous" for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1}


@pytest.mark.parametrize("channels_last", [None, True])
def test_a_model_trains_channels_last_inside_the_loop_only_when_asked(toy, tmp_path, monkeypatch, capsys,
                                                                      channels_last):
    seen = []
    step = T._Trainer.step

    def recording_step(self, it, batch, autocast):
        seen.append(_conv_layouts(self.state.model))
        return step(self, it, batch, autocast)

    monkeypatch.setattr(T._Trainer, "step", recording_step)
    _, result = _train(toy, tmp_path, quiet=False, cpu_channels_last=channels_last)
    expected = {"channels_last"} if channels_last else {"contiguous"}  # float32: contiguous unless asked
    assert seen and all(layouts == expected for layouts in seen)
    assert ("trains channels-last" in capsys.readouterr().out) == bool(channels_last)
    assert _conv_layouts(result.model) == {"contiguous"}
    checkpoint = torch.load(tmp_path / "iter_2.pth", weights_only=True)  # written while channels-last
    assert all(v.is_contiguous() for v in checkpoint["state_dict"].values())


def test_prepare_and_finish_cpu_training_keep_the_parameters_and_the_callers_layout():
    cpu = torch.device("cpu")
    model = knet.build_model("knet-r50-fcn-tiny").train()
    parameters = list(model.parameters())
    assert not T.prepare_cpu_training(model, cpu).made_channels_last  # float32: contiguous by default
    done = T.prepare_cpu_training(model, cpu, amp_dtype=torch.bfloat16)  # under autocast: channels-last
    assert done.made_channels_last and _conv_layouts(model) == {"channels_last"}
    assert any("trains channels-last" in note for note in done.notes)
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())  # Winograd is float32 only
    T.finish_cpu_training(model, done)
    assert _conv_layouts(model) == {"contiguous"} and list(model.parameters()) == parameters

    # A model the caller made channels-last stays so.
    model.to(memory_format=torch.channels_last)
    done = T.prepare_cpu_training(model, cpu, channels_last=True)
    assert not done.made_channels_last
    T.finish_cpu_training(model, done)
    assert _conv_layouts(model) == {"channels_last"}
    # Asked for contiguous under autocast: nothing changes.
    swin = knet.build_model("knet-swin-t-upernet-tiny").train()
    assert not T.prepare_cpu_training(swin, cpu, channels_last=False, amp_dtype=torch.bfloat16).made_channels_last


def test_the_config_chooses_channels_last_float32_training():
    """The plain ResNet panoptic/instance presets train channels-last in float32 too
    (``train.cpu_channels_last``); the option, when given, overrides the config."""
    cpu = torch.device("cpu")
    for name, expected in (("knet-r50-fpn-panoptic-tiny", True), ("knet-r50-fpn-instance-tiny", True),
                           ("knet-r101-dcn-fpn-panoptic-ms3x-tiny", False), ("knet-r50-fcn-tiny", False)):
        model = knet.build_model(name).train()
        assert model.config.train.cpu_channels_last is expected, name
        done = T.prepare_cpu_training(model, cpu)
        assert done.made_channels_last is expected and _conv_layouts(model) == {
            "channels_last" if expected else "contiguous"}, name
        T.finish_cpu_training(model, done)
        assert _conv_layouts(model) == {"contiguous"}
    model = knet.build_model("knet-r50-fpn-instance-tiny").train()
    assert not T.prepare_cpu_training(model, cpu, channels_last=False).made_channels_last
    model = knet.build_model("knet-r50-fcn-tiny", train={"cpu_channels_last": True}).train()
    assert T.prepare_cpu_training(model, cpu).made_channels_last


@needs_cuda
def test_a_cpu_trained_model_runs_on_cuda(toy, tmp_path, winograd_calls, no_tf32):
    _, result = _train(toy, tmp_path)
    model = result.model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        winograd_calls.clear()
        got = copy.deepcopy(model).cuda()(x.cuda())
    assert winograd_calls == []
    assert float((got.cpu() - expected).abs().max()) <= 1e-3 * float(expected.abs().max())

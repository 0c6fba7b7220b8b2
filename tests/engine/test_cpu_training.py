"""Training on the CPU gives the caller plain convolutions: Winograd F(4x4, 3x3) runs only inside
the loop (``TrainOptions.cpu_winograd``, ``knet train --no-winograd``), the checkpoints have the
plain model's keys, and the trained model runs anywhere (float64, ``meta``, CUDA) with the direct
convolution."""
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
    assert main(args + ["--work-dir", str(tmp_path / "a"), "--no-winograd"]) == 0
    assert main(args + ["--work-dir", str(tmp_path / "b")]) == 0
    assert [o.cpu_winograd for o in seen] == [False, True]


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

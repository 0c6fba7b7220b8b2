"""``knet benchmark``: the --json object and its keys, the human summary, argument errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import knet
from knet.apps.benchmark import benchmark, count_macs
from knet.cli import main
from tests.conftest import subprocess_env

JSON_KEYS = {"model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s",
             "latency_ms", "peak_memory_mb", "gmacs"}


def test_benchmark_json_keys_and_values(capsys):
    code = main(["benchmark", "--model", "knet-r50-fcn-tiny", "--size", "64", "--batch-size", "2",
                 "--device", "cpu", "--threads", "1", "--iters", "3", "--warmup", "1", "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip()
    data = json.loads(out)  # exactly one JSON object on stdout
    assert JSON_KEYS <= set(data)
    assert data["model"] == "knet-r50-fcn-tiny"
    assert data["device"] == "cpu"
    assert data["threads"] == 1
    assert data["batch_size"] == 2 and data["size"] == 64 and data["iters"] == 3
    assert set(data["latency_ms"]) == {"p50", "p90", "p99"}
    assert 0 < data["latency_ms"]["p50"] <= data["latency_ms"]["p90"] <= data["latency_ms"]["p99"]
    assert data["images_per_s"] > 0
    assert data["peak_memory_mb"] > 0
    assert data["gmacs"] > 0


def test_macs_scale_with_the_batch():
    import torch

    model = knet.build_model("knet-r50-fcn-tiny").eval()
    with torch.inference_mode():
        one = count_macs(lambda: model(torch.zeros(1, 3, 64, 64)))
        two = count_macs(lambda: model(torch.zeros(2, 3, 64, 64)))
    assert one > 0
    assert two == pytest.approx(2 * one, rel=1e-6)


def test_benchmark_summary_text(capsys):
    assert main(["benchmark", "--model", "knet-r50-fcn-tiny", "--size", "32", "--device", "cpu",
                 "--iters", "2", "--warmup", "0", "--mode", "slide"]) == 0
    out = capsys.readouterr().out
    for word in ("images/s", "p50", "p90", "p99", "peak memory", "GMACs"):
        assert word in out


def test_benchmark_python_api_result():
    result = benchmark(knet.build_model("knet-r50-fcn-tiny"), size=32, device="cpu", iters=2, warmup=0)
    assert result.to_dict()["size"] == 32
    assert result.model == "knet-r50-fcn-tiny"


@pytest.mark.parametrize("argv, message", [
    (["benchmark", "--device", "cpu"], "--model"),
    (["benchmark", "--model", "no-such-model"], "unknown model"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--device", "cpu", "--iters", "0"], "iters"),
])
def test_benchmark_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_panoptic_preset_defaults_to_the_padded_coco_test_scale(capsys):
    from knet.apps.benchmark import default_size

    assert default_size(knet.get_config("knet-r50-fpn-panoptic")) == (1344, 800)
    assert default_size(knet.get_config("knet-r50-fcn")) == (512, 512)
    assert main(["benchmark", "--model", "knet-r50-fpn-instance-tiny", "--size", "96,64", "--device", "cpu",
                 "--iters", "1", "--warmup", "0", "--threads", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size"] == [96, 64] and data["model"] == "knet-r50-fpn-instance-tiny" and data["gmacs"] > 0


# ---- knet benchmark --train ---------------------------------------------------------------------
TRAIN_KEYS = {"model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s", "step_ms",
              "peak_memory_mb"}


def test_train_benchmark_json_keys_and_values(capsys):
    code = main(["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--size", "64", "--device", "cpu",
                 "--threads", "1", "--iters", "2", "--warmup", "1", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out.strip())  # exactly one JSON object on stdout
    assert set(data) == TRAIN_KEYS  # no latency_ms, no gmacs
    assert data["mode"] == "train" and data["model"] == "knet-r50-fcn-tiny" and data["device"] == "cpu"
    assert data["threads"] == 1 and data["size"] == 64 and data["iters"] == 2
    assert data["batch_size"] == 2  # the --train default
    assert set(data["step_ms"]) == {"p50", "p90", "p99"}
    assert all(isinstance(v, float) for v in data["step_ms"].values())
    assert 0 < data["step_ms"]["p50"] <= data["step_ms"]["p90"] <= data["step_ms"]["p99"]
    assert isinstance(data["images_per_s"], float) and data["images_per_s"] > 0
    assert isinstance(data["peak_memory_mb"], float) and data["peak_memory_mb"] > 0


def test_train_benchmark_trains_the_model():
    import torch

    from knet.apps.benchmark import benchmark_train

    model = knet.build_model("knet-r50-fcn-tiny")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = benchmark_train(model, size=(48, 32), batch_size=1, device="cpu", threads=1, iters=1, warmup=0)
    assert result.to_dict()["size"] == [48, 32] and result.mode == "train" and result.batch_size == 1
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert "decode_head.kernel_generate_head.conv_seg.weight" in changed
    assert any(name.startswith("backbone.") for name in changed)
    assert any(name.startswith("auxiliary_head.") for name in changed)


def test_train_benchmark_of_a_panoptic_model(capsys):
    assert main(["benchmark", "--model", "knet-r50-fpn-panoptic-tiny", "--train", "--size", "64", "--batch-size", "1",
                 "--device", "cpu", "--threads", "1", "--iters", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for words in ("training step", "images/s", "step time", "p50", "p99", "peak memory"):
        assert words in out


def test_synthetic_mask_batch_has_things_and_stuff():
    from knet.apps.benchmark import synthetic_train_batch
    from knet.tasks import get_task

    config = knet.get_config("knet-r50-fpn-panoptic-tiny")
    batch = synthetic_train_batch(config, get_task(config.task), 2, 50, 70)
    assert tuple(batch.images.shape) == (2, 3, 64, 96)  # padded to the size divisor, 32
    assert batch.img_shapes == [(50, 70), (50, 70)]
    for masks, labels, sem_seg in zip(batch.masks, batch.labels, batch.sem_seg):
        assert 1 <= masks.shape[0] == labels.shape[0] and int(masks.sum(0).max()) == 1  # no overlap
        assert int(labels.max()) < config.num_thing_classes
        stuff = sem_seg[:50, :70][masks.sum(0)[:50, :70] == 0]
        assert int(stuff.min()) >= config.num_thing_classes and int(stuff.max()) < config.num_classes
        assert bool((sem_seg[50:] == 255).all())
    instance = knet.get_config("knet-r50-fpn-instance-tiny")
    assert synthetic_train_batch(instance, get_task(instance.task), 1, 64, 64).sem_seg is None


@pytest.mark.parametrize("argv, message", [
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--device", "cpu", "--iters", "0"], "iters"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--device", "cpu", "--batch-size", "0"], "batch size"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--device", "cpu", "--warmup", "-1"], "warmup"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--mode", "slide"], "--mode"),
    (["benchmark", "--onnx", "model.onnx", "--train"], "--onnx"),
    (["benchmark", "--train", "--device", "cpu"], "--model"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--low-memory"], "--low-memory is a training option"),
])
def test_train_benchmark_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_train_benchmark_python_api_checks_its_values():
    from knet.apps.benchmark import benchmark_train
    from knet.errors import KnetError

    model = knet.build_model("knet-r50-fcn-tiny")
    for kwargs, message in (({"size": 0}, "size must be at least 1"), ({"threads": 0}, "threads"),
                            ({"iters": 0}, "iters")):
        with pytest.raises(KnetError, match=message):
            benchmark_train(model, device="cpu", **kwargs)
    with pytest.raises(KnetError, match="ONNX Runtime"):
        benchmark_train(object())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and the inherited ru_maxrss are Linux's")
def test_peak_memory_is_the_programs_own_not_its_parents():
    # Linux carries ru_maxrss's high-water mark from parent to child across fork and exec.
    ballast = bytearray(400 * 2 ** 20)  # resident: bytearray zero-fills it
    code = ("import resource; from knet.apps.benchmark import _peak_host_memory_mb as peak; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=subprocess_env())
    inherited, own = map(float, done.stdout.split())
    assert inherited > 400 and own < 300, (inherited, own)
    del ballast


def test_macs_are_the_models_own_not_the_winograd_copys():
    from torch import nn

    from knet.apps.benchmark import _model_macs
    from knet.models.fuse import inference_copy

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)

        def inference(self, x, mode="whole"):
            return self.conv(x)

    model = Wide()
    x = torch.randn(1, 128, 16, 16)
    direct = 128 * 128 * 9 * 16 * 16
    with torch.inference_mode():
        assert _model_macs(model, x, "whole") == pytest.approx(direct)
        fast = inference_copy(model)  # what the benchmark times: Winograd does fewer
        assert count_macs(lambda: fast.inference(x)) < 0.5 * direct
    assert type(model.conv) is nn.Conv2d

"""The benchmark library (``knet benchmark``'s functions): results, MACs, training steps, the synthetic
batch, peak memory."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import knet
from knet.engine.benchmark import (_model_macs, benchmark, benchmark_train, count_macs, default_size,
                                   synthetic_train_batch)
from tests.conftest import subprocess_env


def test_panoptic_preset_defaults_to_the_padded_coco_test_scale():
    assert default_size(knet.get_config("knet-r50-fpn-panoptic")) == (1344, 800)
    assert default_size(knet.get_config("knet-r50-fcn")) == (512, 512)


def test_macs_scale_with_the_batch():
    model = knet.build_model("knet-r50-fcn-tiny").eval()
    with torch.inference_mode():
        one = count_macs(lambda: model(torch.zeros(1, 3, 64, 64)))
        two = count_macs(lambda: model(torch.zeros(2, 3, 64, 64)))
    assert one > 0
    assert two == pytest.approx(2 * one, rel=1e-6)


def test_benchmark_python_api_result():
    result = benchmark(knet.build_model("knet-r50-fcn-tiny"), size=32, device="cpu", iters=2, warmup=0)
    assert result.to_dict()["size"] == 32
    assert result.model == "knet-r50-fcn-tiny"


def test_train_benchmark_trains_the_model():
    model = knet.build_model("knet-r50-fcn-tiny")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = benchmark_train(model, size=(48, 32), batch_size=1, device="cpu", threads=1, iters=1, warmup=0)
    assert result.to_dict()["size"] == [48, 32] and result.mode == "train" and result.batch_size == 1
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert "decode_head.kernel_generate_head.conv_seg.weight" in changed
    assert any(name.startswith("backbone.") for name in changed)
    assert any(name.startswith("auxiliary_head.") for name in changed)


def test_synthetic_mask_batch_has_things_and_stuff():
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


def test_train_benchmark_python_api_checks_its_values():
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
    code = ("import resource; from knet.engine.benchmark import _peak_host_memory_mb as peak; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=subprocess_env())
    inherited, own = map(float, done.stdout.split())
    assert inherited > 400 and own < 300, (inherited, own)
    del ballast


def test_macs_are_the_models_own_not_the_winograd_copys():
    from torch import nn

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

"""``knet benchmark``: the --json object and its keys, the human summary, argument errors."""
from __future__ import annotations

import json

import pytest

import knet
from knet.apps.benchmark import benchmark, count_macs
from knet.cli import main

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

"""``knet benchmark``: the --json object and its keys, the human summary, argument errors (the library
functions: tests/engine/test_benchmark.py)."""
from __future__ import annotations

import json

import pytest

from knet.cli import main
from knet.utils.device import cpu_has_native_bf16

JSON_KEYS = {"model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s",
             "latency_ms", "peak_memory_mb", "gmacs", "precision"}


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


def test_benchmark_summary_text(capsys):
    assert main(["benchmark", "--model", "knet-r50-fcn-tiny", "--size", "32", "--device", "cpu",
                 "--iters", "2", "--warmup", "0", "--mode", "slide"]) == 0
    out = capsys.readouterr().out
    for word in ("images/s", "p50", "p90", "p99", "peak memory", "GMACs"):
        assert word in out


@pytest.mark.parametrize("argv, message", [
    (["benchmark", "--device", "cpu"], "--model"),
    (["benchmark", "--model", "no-such-model"], "unknown model"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--device", "cpu", "--iters", "0"], "iters"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--device", "cpu", "--precision", "fp16"],
     "precision fp16 runs on GPUs; on the CPU use bf16"),
])
def test_benchmark_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no AMX or AVX512-BF16")
@pytest.mark.parametrize("train", [False, True])
def test_benchmark_in_bf16(capsys, train):
    argv = ["benchmark", "--model", "knet-r50-fcn-tiny", "--size", "64", "--device", "cpu", "--threads", "1",
            "--iters", "1", "--warmup", "1", "--precision", "bf16", "--json"]
    assert main(argv + (["--train"] if train else [])) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["precision"] == "bf16" and data["mode"] == ("train" if train else "whole")


def test_an_instance_model_at_a_size_that_is_not_square(capsys):
    assert main(["benchmark", "--model", "knet-r50-fpn-instance-tiny", "--size", "96,64", "--device", "cpu",
                 "--iters", "1", "--warmup", "0", "--threads", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size"] == [96, 64] and data["model"] == "knet-r50-fpn-instance-tiny" and data["gmacs"] > 0


# ---- knet benchmark --train ---------------------------------------------------------------------
TRAIN_KEYS = {"model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s", "step_ms",
              "peak_memory_mb", "precision"}


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


def test_train_benchmark_of_a_panoptic_model(capsys):
    assert main(["benchmark", "--model", "knet-r50-fpn-panoptic-tiny", "--train", "--size", "64", "--batch-size", "1",
                 "--device", "cpu", "--threads", "1", "--iters", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for words in ("training step", "images/s", "step time", "p50", "p99", "peak memory"):
        assert words in out


@pytest.mark.parametrize("argv, message", [
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--device", "cpu", "--iters", "0"], "iters"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--device", "cpu", "--batch-size", "0"], "batch size"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--device", "cpu", "--warmup", "-1"], "warmup"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--train", "--mode", "slide"], "--mode"),
    (["benchmark", "--checkpoint", "model.onnx", "--train"], ".onnx --checkpoint cannot take"),
    (["benchmark", "--train", "--device", "cpu"], "--model"),
    (["benchmark", "--model", "knet-r50-fcn-tiny", "--low-memory"], "--low-memory is a training option"),
])
def test_train_benchmark_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1

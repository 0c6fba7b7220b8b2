"""Export targets (``knet export --target``, :mod:`knet.export.targets`): the target, never the
exporting machine, decides the file's layout (Winograd and int8 convolutions); the file records it
as ``knet.target``; a bad target is refused; a one-line note says when a CPU target is not this CPU.

The tiny R50-FCN with Winograd from 16 channels (the full-size rule is 512) is exported once per
target by the command line without the parity check."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxscript", reason="the ONNX extra is not installed (pip install 'knet-seg[onnx]')")
pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed (pip install 'knet-seg[onnx]')")

import onnx  # noqa: E402

import knet  # noqa: E402
from knet.cli import main  # noqa: E402
from knet.errors import KnetError  # noqa: E402
from knet.export import onnx as knet_onnx  # noqa: E402
from knet.export import targets  # noqa: E402
from knet.export.quantize import QUANTIZATION_KEY, WINOGRAD_NAMESPACE, _namespace, quantize_int8  # noqa: E402
from knet.inference.onnx_runner import TARGET_KEY, WINOGRAD_KEY, OnnxRunner  # noqa: E402
from tests.conftest import golden_path  # noqa: E402

PRESET = "knet-r50-fcn-tiny"
# (target, quantized, whether the pretended exporting CPU has 8-bit dot products, the float file an
# int8 one is quantized from): each CPU target once on the CPU it is not for, so the machine cannot
# be what decides the layout. The int8 files start from the float file of their layout (cpu-vnni's
# has no Winograd, as gpu's), which saves two exports.
EXPORTS = [("cpu", False, False, None), ("gpu", False, True, None), ("cpu", True, True, "cpu"),
           ("cpu-vnni", True, False, "gpu")]


def _name(target: str, quantized: bool) -> str:
    return f"{target}{'-int8' if quantized else ''}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``{"cpu": ..., "gpu": ..., "cpu-int8": ..., "cpu-vnni-int8": ...}``: (path, what the export
    printed on stderr) of each of :data:`EXPORTS`."""
    from knet.data.synthetic import make_scene

    root = tmp_path_factory.mktemp("targets")
    (root / "calibration").mkdir()
    Image.fromarray(make_scene(np.random.default_rng(0), size=(48, 64))[0]).save(root / "calibration" / "0.png")
    checkpoint = str(golden_path("knet-r50-fcn.tiny.pth"))
    threads = torch.get_num_threads()
    patch = pytest.MonkeyPatch()
    patch.setattr(knet_onnx, "WINOGRAD_MIN_CHANNELS", 16)
    written = {}
    try:
        for target, quantized, vnni, source in EXPORTS:
            patch.setattr(targets, "cpu_has_int8_dot_product", lambda vnni=vnni: vnni)
            name = _name(target, quantized)
            out = root / f"{name}.onnx"
            weights = (["--checkpoint", str(written[source][0])] if source
                       else ["--model", PRESET, "--checkpoint", checkpoint])
            command = ["export", *weights, "--out", str(out), "--target", target, "--no-check", "--threads", "1"]
            if quantized:
                command += ["--quantize", "int8", "--calibration", str(root / "calibration")]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                assert main(command) == 0, err.getvalue()
            written[name] = (out, err.getvalue())
    finally:
        patch.undo()
        torch.set_num_threads(threads)
    return written


def _layout(path: Path):
    """(metadata, nodes of Winograd convolutions, Conv nodes, int8 Conv nodes) of an ONNX file;
    an int8 Conv takes its weight from a DequantizeLinear (QDQ)."""
    model = onnx.load(str(path))
    producer = {output: node for node in model.graph.node for output in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    int8 = [n for n in convs if n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"]
    winograd = [n for n in model.graph.node if WINOGRAD_NAMESPACE in _namespace(n)]
    return {p.key: p.value for p in model.metadata_props}, winograd, convs, int8


# The tests of the exported files are slow: the `files` fixture exports four times (~22 s on one core).
@pytest.mark.slow
def test_float32_files_cpu_has_winograd_gpu_has_none(files):
    cpu_meta, cpu_winograd, cpu_convs, _ = _layout(files["cpu"][0])
    gpu_meta, gpu_winograd, gpu_convs, _ = _layout(files["gpu"][0])
    assert int(cpu_meta[WINOGRAD_KEY]) >= 5 and cpu_winograd
    assert gpu_meta[WINOGRAD_KEY] == "0" and not gpu_winograd
    # each Winograd convolution is two transform Conv nodes instead of one direct Conv
    assert len(cpu_convs) == len(gpu_convs) + int(cpu_meta[WINOGRAD_KEY])
    assert (cpu_meta[TARGET_KEY], gpu_meta[TARGET_KEY]) == ("cpu", "gpu")


@pytest.mark.slow
def test_int8_files_cpu_keeps_winograd_float32_cpu_vnni_quantizes_every_convolution(files):
    cpu_meta, cpu_winograd, cpu_convs, cpu_int8 = _layout(files["cpu-int8"][0])
    vnni_meta, vnni_winograd, vnni_convs, vnni_int8 = _layout(files["cpu-vnni-int8"][0])
    assert cpu_winograd and not set(n.name for n in cpu_winograd) & set(n.name for n in cpu_int8)
    assert "Winograd 3x3 convolutions float32" in cpu_meta[QUANTIZATION_KEY]
    assert not vnni_winograd and "Winograd" not in vnni_meta[QUANTIZATION_KEY]
    assert len(vnni_int8) > len(cpu_int8) and len(cpu_convs) - len(cpu_int8) > len(vnni_convs) - len(vnni_int8)
    assert (cpu_meta[TARGET_KEY], vnni_meta[TARGET_KEY]) == ("cpu", "cpu-vnni")
    assert OnnxRunner(files["cpu-vnni-int8"][0], threads=1).target == "cpu-vnni"


def test_every_target_s_layout_from_the_table(one_thread, monkeypatch):
    """The Winograd modules of the exported copy for every target, float32 and int8 (no export)."""
    from knet.models.winograd import WinogradConv2d

    monkeypatch.setattr(knet_onnx, "WINOGRAD_MIN_CHANNELS", 16)
    model = knet.build_model(PRESET).eval()
    counts = {}
    for name, target in targets.TARGETS.items():
        for quantized in (False, True):
            copy = knet_onnx.exportable_copy(model, winograd=target.winograd(quantized))
            counts[_name(name, quantized)] = sum(isinstance(m, WinogradConv2d) for m in copy.modules())
    assert targets.TARGET_NAMES == ("cpu", "cpu-vnni", "gpu") and targets.DEFAULT_TARGET == "cpu"
    assert {name: count > 0 for name, count in counts.items()} == {
        "cpu": True, "cpu-int8": True, "cpu-vnni": True, "cpu-vnni-int8": False, "gpu": False, "gpu-int8": False}


@pytest.mark.slow
def test_the_mismatch_note_and_nothing_otherwise(files, monkeypatch):
    notes = {name: [line for line in err.splitlines() if line.startswith("note:")] for name, (_, err) in files.items()}
    assert notes["cpu"] == [] and notes["gpu"] == []
    (vnni_note,) = notes["cpu-vnni-int8"]
    assert "--target cpu-vnni" in vnni_note and "has none" in vnni_note and "--target cpu fits" in vnni_note
    (cpu_note,) = notes["cpu-int8"]
    assert "--target cpu " in cpu_note and "VNNI" in cpu_note and "--target cpu-vnni fits" in cpu_note
    for vnni, expected in ((True, {"cpu"}), (False, {"cpu-vnni"})):
        monkeypatch.setattr(targets, "cpu_has_int8_dot_product", lambda vnni=vnni: vnni)
        assert {name for name in targets.TARGET_NAMES if targets.target_note(name, quantized=True)} == expected
        assert not any(targets.target_note(name) for name in targets.TARGET_NAMES)  # float32: one layout
        assert targets.matching_target() == ("cpu-vnni" if vnni else "cpu")
    assert all(len(targets.target_note(name, quantized=True).splitlines()) == 1 for name in expected)


@pytest.mark.slow
def test_onnx_source_keeps_its_target_and_files_without_one_read_as_cpu(files, tmp_path, one_thread, capsys):
    """Quantizing an .onnx --checkpoint records the float file's target; a file written before targets
    has no ``knet.target``: the runner reads it (target None) and quantization takes ``cpu``."""
    gpu = files["gpu"][0]
    out = tmp_path / "gpu-int8.onnx"
    assert main(["export", "--checkpoint", str(gpu), "--out", str(out), "--quantize", "int8", "--calibration",
                 str(files["cpu-int8"][0].parent / "calibration"), "--threads", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and OnnxRunner(out, threads=1).target == "gpu"

    model = onnx.load(str(gpu))
    kept = [p for p in model.metadata_props if p.key != TARGET_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    runner = OnnxRunner(old, threads=1)
    assert runner.target is None and runner.config.name == PRESET
    image = np.asarray(Image.open(files["cpu-int8"][0].parent / "calibration" / "0.png"))
    result = quantize_int8(old, tmp_path / "old-int8.onnx", [image], threads=1)
    assert result.target == "cpu" and OnnxRunner(tmp_path / "old-int8.onnx", threads=1).target == "cpu"


def test_an_invalid_target_is_refused(tmp_path, capsys):
    checkpoint = str(golden_path("knet-r50-fcn.tiny.pth"))
    with pytest.raises(SystemExit):
        main(["export", "--model", PRESET, "--checkpoint", checkpoint, "--out", str(tmp_path / "m.onnx"),
              "--target", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    for bad, call in (
            ("'tpu'", lambda: knet_onnx.export_onnx(knet.build_model(PRESET), tmp_path / "m.onnx", target="tpu")),
            ("'CPU'", lambda: quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", [np.zeros((8, 8, 3), np.uint8)],
                                            target="CPU"))):
        with pytest.raises(KnetError) as error:
            call()
        message = str(error.value)
        assert len(message.splitlines()) == 1 and bad in message and "valid: cpu, cpu-vnni, gpu" in message
    assert list(tmp_path.iterdir()) == []

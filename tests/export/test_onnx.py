"""ONNX export (``knet export``, :mod:`knet.export.onnx`), int8 quantization
(:mod:`knet.export.quantize`) and the ONNX Runtime backend
(:class:`knet.inference.onnx_runner.OnnxRunner`): ONNX Runtime against torch at two sizes and batch
2 for every semantic row and the panoptic and instance presets (the reference's tiny weights),
sliding windows through the file, ``knet predict/test/benchmark --checkpoint FILE.onnx``, the torch-free
deployment path, int8, and the one-line errors.

An export takes 25 s (ResNet) to over a minute (Swin) on one core, so each file is exported once
per module, and ``make test`` exports the R50-FCN row only (the pooling layer the other heads
need is checked on its own: test_pyramid_pooling_exports_for_every_size). ``KNET_ALL_EXPORTS=1``
adds the eight other rows (about 6 more minutes)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxscript", reason="the ONNX extra is not installed (pip install 'knet-seg[onnx]')")
pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed (pip install 'knet-seg[onnx]')")

import onnx  # noqa: E402

import knet  # noqa: E402
from knet.checkpoint import load_model, with_class_meta  # noqa: E402
from knet.cli import main  # noqa: E402
from knet.errors import KnetError  # noqa: E402
from knet.export.onnx import SizeGenericAdaptiveAvgPool2d, export_onnx  # noqa: E402
from knet.inference.onnx_runner import CONFIG_KEY, TARGET_KEY, WINOGRAD_KEY, OnnxRunner  # noqa: E402
from tests.conftest import assert_near_ties_only, golden_path, logits_tolerance  # noqa: E402

# preset -> the reference's tiny checkpoint of it (shared/goldens): trained-like statistics, so
# float32 rounding stays far below the tolerance (random initial weights amplify it ~10x per stage).
GOLDEN_WEIGHTS = {
    "knet-r50-fcn-tiny": "knet-r50-fcn.tiny.pth",
    "knet-r50-pspnet-tiny": "knet-r50-pspnet.tiny.pth",
    "knet-r50-deeplabv3-tiny": "knet-r50-deeplabv3.tiny.pth",
    "knet-r50-upernet-tiny": "knet-r50-upernet.tiny.pth",
    "knet-swin-t-upernet-tiny": "knet-swin-t-upernet.tiny.pth",
    "knet-swin-l-upernet-tiny": "knet-swin-l-upernet.tiny.pth",
    "knet-swin-l-upernet-640-tiny": "knet-swin-l-upernet-640.tiny.pth",
    "knet-r50-fpn-panoptic-tiny": "det/knet-det-panoptic.tiny.pth",
    "knet-r50-fpn-instance-tiny": "det/knet-det-instance.tiny.pth",
}
# Batch 2 at one size, batch 1 at another (not a multiple of 32 for semantic models; the
# panoptic pipeline pads to 32), below the (2, 3, 256, 320) the export traced.
SEMANTIC_SHAPES = [(2, 3, 96, 64), (1, 3, 75, 110)]
MASK_SHAPES = [(2, 3, 96, 64), (1, 3, 64, 160)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(preset) -> (torch model, path of its .onnx)``, each exported once per module; the
    ResNet row through the command line (what it printed: ``exported.printed``)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            checkpoint = golden_path(GOLDEN_WEIGHTS[name])
            model = load_model(checkpoint, name).eval()
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                if name == "knet-r50-fcn-tiny":
                    printed = io.StringIO()
                    with contextlib.redirect_stdout(printed):
                        assert main(["export", "--model", name, "--checkpoint", str(checkpoint), "--format",
                                     "onnx", "--out", str(path)]) == 0
                    get.printed = printed.getvalue()
                else:
                    export_onnx(model, path)
            finally:
                torch.set_num_threads(threads)
            cache[name] = (model, path)
        return cache[name]

    return get


def _parity(model, runner: OnnxRunner, shape, seed: int):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.inference(x)
    got = runner(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got):
        assert g.dtype == torch.float32 and g.device.type == "cpu" and g.shape == e.shape
        diff = float((g - e).abs().max())
        print(f"{runner.config.name} {tuple(shape)}: max |onnxruntime - torch| {diff:.2e}, max |torch| "
              f"{float(e.abs().max()):.3g}")  # shown with -s
        assert diff <= logits_tolerance(e), (shape, diff, float(e.abs().max()))


ALL_EXPORTS = pytest.mark.skipif(
    os.environ.get("KNET_ALL_EXPORTS") != "1",
    reason="exporting every row takes ~6 min: set KNET_ALL_EXPORTS=1 (make test exports knet-r50-fcn-tiny)")


@pytest.mark.parametrize("name", ["knet-r50-fcn-tiny"] + [
    pytest.param(name, marks=[pytest.mark.slow, ALL_EXPORTS]) for name in GOLDEN_WEIGHTS
    if name != "knet-r50-fcn-tiny"])
def test_onnx_runtime_matches_torch_at_two_sizes_and_batch_two(exported, one_thread, name):
    model, path = exported(name)
    runner = OnnxRunner(path, device="cpu", threads=1)
    assert runner.config.name == name
    shapes = MASK_SHAPES if runner.config.task in ("panoptic", "instance") else SEMANTIC_SHAPES
    for seed, shape in enumerate(shapes):
        _parity(model, runner, shape, seed)


def test_onnx_runtime_sessions_treat_denormals_as_zero_and_leave_the_caller_as_it_was(exported):
    from knet.utils.float_modes import denormals_flushed

    _, path = exported("knet-r50-fcn-tiny")
    before = denormals_flushed()
    runner = OnnxRunner(path, threads=1)
    assert runner.session.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
    runner(np.zeros((1, 3, 64, 64), np.float32))
    assert denormals_flushed() == before  # ONNX Runtime sets it on the creating thread: given back


def test_the_file_carries_the_config_and_dynamic_sizes(exported):
    model, path = exported("knet-r50-fcn-tiny")
    printed = exported.printed
    assert "parity check, input 2x3x256x320: max |onnxruntime - torch| logits" in printed
    assert "parity check, input 1x3x75x110" in printed and f"wrote {path}" in printed
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata[CONFIG_KEY]) == json.loads(with_class_meta(model.config).to_json())
    assert metadata["knet.version"] == knet.__version__
    assert metadata[WINOGRAD_KEY] == "0"  # the tiny widths are below WINOGRAD_MIN_CHANNELS
    assert metadata[TARGET_KEY] == "cpu" and "target cpu" in printed  # the default --target
    (image,) = proto.graph.input
    assert image.name == "images"
    assert [d.dim_param for d in image.type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert OnnxRunner(path).config == with_class_meta(model.config) and OnnxRunner(path).target == "cpu"


def test_sliding_windows_run_through_the_file(exported, one_thread):
    model, path = exported("knet-r50-fcn-tiny")
    runner = OnnxRunner(path, threads=1)
    x = torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.inference(x, mode="slide", crop_size=(48, 48), stride=(32, 40))
    got = runner(x, "slide", (48, 48), (32, 40))
    assert got.shape == expected.shape == (2, 150, 70, 100)
    assert float((got - expected).abs().max()) <= logits_tolerance(expected)


def test_predict_onnx_gives_the_torch_label_maps(exported, tmp_path, capsys):
    model, path = exported("knet-r50-fcn-tiny")
    image = np.random.default_rng(0).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    common = [str(tmp_path / "x.png"), "--test-scale", "96,64", "--device", "cpu", "--threads", "1"]
    assert main(["predict", "--checkpoint", str(path), "--out-dir", str(tmp_path / "ort")] + common) == 0
    assert "with Segmenter(knet-r50-fcn-tiny, semantic, 150 classes" in capsys.readouterr().err
    labels = np.asarray(Image.open(tmp_path / "ort" / "x.png"))
    torch_result = knet.Segmenter(model, device="cpu", test_scale=(96, 64))(image)
    assert_near_ties_only(labels, torch_result.labels, torch_result.probabilities())
    onnx_result = knet.Segmenter.from_onnx(path, threads=1, test_scale=(96, 64))(image)
    np.testing.assert_array_equal(onnx_result.labels, labels)
    assert onnx_result.class_names == torch_result.class_names


def test_benchmark_onnx(exported, capsys):
    _, path = exported("knet-r50-fcn-tiny")
    assert main(["benchmark", "--checkpoint", str(path), "--size", "64,48", "--batch-size", "2", "--iters", "2",
                 "--warmup", "0", "--threads", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "knet-r50-fcn-tiny" and data["threads"] == 1 and data["gmacs"] is None
    assert data["size"] == [64, 48] and "CPUExecutionProvider" in data["device"] and data["images_per_s"] > 0



def test_knet_test_onnx_gives_the_torch_metrics(exported, tmp_path, capsys):
    from tests.apps.test_test_cli import make_ade20k

    _, path = exported("knet-r50-fcn-tiny")
    root = make_ade20k(tmp_path / "ade", n=3)
    common = ["--data-root", str(root), "--test-scale", "64,48", "--device", "cpu", "--threads", "1",
              "--workers", "0", "--quiet"]
    checkpoint = str(golden_path(GOLDEN_WEIGHTS["knet-r50-fcn-tiny"]))
    assert main(["test", "--model", "knet-r50-fcn-tiny", "--checkpoint", checkpoint,
                 "--out", str(tmp_path / "torch.json")] + common) == 0
    assert main(["test", "--checkpoint", str(path), "--out", str(tmp_path / "ort.json")] + common) == 0
    capsys.readouterr()
    torch_metrics = json.loads((tmp_path / "torch.json").read_text())
    ort_metrics = json.loads((tmp_path / "ort.json").read_text())
    for key in ("aAcc", "mIoU", "mAcc"):  # percent with 2 decimals: near-ties cannot move them here
        assert abs(ort_metrics[key] - torch_metrics[key]) <= 0.05, (key, ort_metrics[key], torch_metrics[key])
    assert main(["test", "--checkpoint", str(path), "--set", "data.test_scale=64,48"] + common) == 2
    assert "--set does not apply to an .onnx --checkpoint" in capsys.readouterr().err
    assert main(["test", "--checkpoint", str(path), "--model", "knet-r50-upernet-tiny"] + common) == 2
    assert "holds knet-r50-fcn-tiny, not knet-r50-upernet-tiny; leave --model out" in capsys.readouterr().err


# Run as `python -c NO_TORCH ARGS...`: makes importing torch fail, then runs the knet command line.
NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("this test forbids importing " + name)
sys.meta_path.insert(0, NoTorch())
from knet.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
sys.exit(code)
"""


def test_a_semantic_onnx_model_deploys_without_torch(exported, tmp_path):
    """knet predict with an .onnx --checkpoint (knet.load's ONNX Runtime runner, the test pipeline)
    in a process where importing torch fails, plain and with multi-scale + flip and sliding windows:
    the label maps of the same pipeline run with torch installed."""
    import subprocess

    _, path = exported("knet-r50-fcn-tiny")
    image = np.random.default_rng(3).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    for extra in ([], ["--tta", "--mode", "slide", "--crop-size", "48"]):
        out = tmp_path / f"out{len(extra)}"
        command = [sys.executable, "-c", NO_TORCH, "predict", "--checkpoint", str(path), str(tmp_path / "x.png"),
                   "--out-dir", str(out), "--test-scale", "96,64", "--threads", "1"] + extra
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        labels = np.asarray(Image.open(out / "x.png"))
        segmenter = knet.Segmenter.from_onnx(path, threads=1, test_scale=(96, 64), tta=bool(extra),
                                             mode="slide" if extra else "whole", crop_size=(48, 48))
        np.testing.assert_array_equal(labels, segmenter(image).labels)

@pytest.mark.slow
@ALL_EXPORTS
def test_panoptic_pipeline_on_the_onnx_runner(exported, one_thread):
    from knet.tasks import get_task

    model, path = exported("knet-r50-fpn-panoptic-tiny")
    task = get_task("panoptic")
    image = np.random.default_rng(1).integers(0, 256, size=(70, 100, 3), dtype=np.uint8)
    expected = task.pipeline(model, test_scale=(128, 96)).logits([image])[0]
    got = task.pipeline(OnnxRunner(path, threads=1), test_scale=(128, 96)).logits([image])[0]
    for e, g in zip(expected[:2], got[:2]):
        assert float((g - e).abs().max()) <= logits_tolerance(e)


# ---- the pooling layer (the one the export swaps in) ----------------------------------------
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_size_generic_pooling_equals_adaptive_pooling(bins):
    x = torch.randn(2, 3, 13, 22)
    expected = torch.nn.AdaptiveAvgPool2d(bins)(x)
    assert torch.allclose(SizeGenericAdaptiveAvgPool2d(bins)(x), expected, atol=1e-6)


def test_pyramid_pooling_exports_for_every_size(tmp_path, one_thread):
    """PSP's pooling bins at sizes they do not divide, from one exported graph."""
    from knet.export.onnx import exportable_copy
    from knet.models.heads.psp import PyramidPooling
    from knet.inference.onnx_runner import import_onnxruntime

    ort = import_onnxruntime()
    module = PyramidPooling((1, 2, 3, 6), 4, 2).eval()
    exported_module = exportable_copy(torch.nn.Sequential(module))

    class Cat(torch.nn.Module):
        def forward(self, x):
            return torch.cat(exported_module[0](x), dim=1)

    program = torch.onnx.export(Cat().eval(), (torch.randn(1, 4, 8, 12),), dynamo=True, opset_version=18,
                                input_names=["x"], dynamic_shapes={"x": {2: "h", 3: "w"}}, verbose=False)
    program.save(str(tmp_path / "ppm.onnx"))
    session = ort.InferenceSession(str(tmp_path / "ppm.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(8, 12), (7, 11), (13, 5), (6, 6)]:
        x = torch.randn(1, 4, h, w)
        with torch.no_grad():
            expected = torch.cat(module(x), dim=1)
        (got,) = session.run(None, {"x": x.numpy()})
        assert np.abs(got - expected.numpy()).max() <= 1e-5 * max(1.0, float(expected.abs().max()))


# ---- Winograd convolutions in the graph --------------------------------------------------------
def test_winograd_convolutions_export_for_every_size(tmp_path, one_thread, monkeypatch):
    """Conv + BatchNorm + ReLU + conv, then a dilated Winograd convolution (as an inference copy
    has), with Winograd from 16 channels: the BatchNorm is folded, the two undilated convolutions
    become knet's Winograd operator (two small transform convolutions and matrix products each in
    the graph), the dilated one a plain convolution, and one graph serves every size and batch,
    including sizes below one 4x4 tile."""
    from knet.export import onnx as knet_onnx
    from knet.inference.onnx_runner import import_onnxruntime
    from knet.models.winograd import WinogradConv2d

    monkeypatch.setattr(knet_onnx, "WINOGRAD_MIN_CHANNELS", 16)
    torch.manual_seed(0)
    dilated = WinogradConv2d.from_conv(torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2))
    module = torch.nn.Sequential(torch.nn.Conv2d(16, 24, 3, padding=1, bias=False), torch.nn.BatchNorm2d(24),
                                 torch.nn.ReLU(), torch.nn.Conv2d(24, 16, 3, padding=1), dilated).eval()
    module[1].running_mean.uniform_(-1, 1)
    module[1].running_var.uniform_(0.5, 2)
    copy = knet_onnx.exportable_copy(module)
    def winograd_count(model):
        return sum(isinstance(m, WinogradConv2d) for m in model.modules())

    assert winograd_count(copy) == 2 and isinstance(copy[1], torch.nn.Identity)
    assert type(copy[4]) is torch.nn.Conv2d and copy[4].dilation == (2, 2)
    assert type(module[0]) is torch.nn.Conv2d and isinstance(module[1], torch.nn.BatchNorm2d)  # not changed
    plain = knet_onnx.exportable_copy(module, winograd=False)
    assert winograd_count(plain) == 0 and isinstance(plain[1], torch.nn.BatchNorm2d)
    program = torch.onnx.export(copy, (torch.randn(2, 16, 20, 24),), dynamo=True, opset_version=18,
                                input_names=["x"], dynamic_shapes=({0: "n", 2: "h", 3: "w"},), verbose=False,
                                custom_translation_table=knet_onnx.TRANSLATIONS)
    program.save(str(tmp_path / "winograd.onnx"))
    ops = [node.op_type for node in onnx.load(str(tmp_path / "winograd.onnx")).graph.node]
    assert ops.count("Conv") == 2 * 2 + 1 and ops.count("MatMul") == 2 * 2
    session = import_onnxruntime().InferenceSession(str(tmp_path / "winograd.onnx"),
                                                    providers=["CPUExecutionProvider"])
    for shape in [(1, 16, 20, 24), (2, 16, 7, 11), (1, 16, 33, 5), (1, 16, 1, 3)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = module(x)
        (got,) = session.run(None, {"x": x.numpy()})
        assert got.shape == tuple(expected.shape)
        assert np.abs(got - expected.numpy()).max() <= 1e-5 * float(expected.abs().max()), shape


@pytest.mark.slow  # ~23 s on one core
def test_a_model_exported_with_winograd_matches_torch_and_quantizes_around_it(tmp_path, one_thread, monkeypatch,
                                                                             capsys):
    """The tiny R50-FCN with Winograd from 16 channels (the full-size models' rule is 512): its
    3x3 convolutions of 16 channels and more become Winograd, the file counts them and matches
    torch at two sizes and batch 2; int8 quantization leaves the Winograd nodes float32, quantizes
    the other convolutions and stays near the float file."""
    from knet.data.synthetic import make_scene
    from knet.export import onnx as knet_onnx
    from knet.export.quantize import QUANTIZATION_KEY, WINOGRAD_NAMESPACE, _namespace, quantize_int8, weight_nodes
    from knet.models.winograd import WinogradConv2d

    assert WINOGRAD_NAMESPACE == f"{WinogradConv2d.__module__}.{WinogradConv2d.__qualname__}"
    monkeypatch.setattr(knet_onnx, "WINOGRAD_MIN_CHANNELS", 16)
    checkpoint = golden_path(GOLDEN_WEIGHTS["knet-r50-fcn-tiny"])
    path = tmp_path / "winograd.onnx"
    assert main(["export", "--model", "knet-r50-fcn-tiny", "--checkpoint", str(checkpoint), "--out", str(path),
                 "--threads", "1"]) == 0
    source = onnx.load(str(path))
    count = int({p.key: p.value for p in source.metadata_props}[WINOGRAD_KEY])
    assert count >= 5 and f"{count} Winograd 3x3 convolutions" in capsys.readouterr().out
    model = load_model(checkpoint, "knet-r50-fcn-tiny").eval()
    runner = OnnxRunner(path, device="cpu", threads=1)
    for seed, shape in enumerate(SEMANTIC_SHAPES):
        _parity(model, runner, shape, seed)

    winograd_convs = [n.name for n in source.graph.node
                      if n.op_type == "Conv" and WINOGRAD_NAMESPACE in _namespace(n)]
    quantized = weight_nodes(source)
    # two transform convolutions per Winograd convolution in the graph (the auxiliary head's is not)
    assert len(winograd_convs) == 2 * count and len(quantized) > 10 and not set(winograd_convs) & set(quantized)
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, size=(64, 96))[0] for _ in range(2)]
    result = quantize_int8(path, tmp_path / "int8.onnx", scenes)
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "int8.onnx")).metadata_props}
    assert f"{count} Winograd 3x3 convolutions float32" in metadata[QUANTIZATION_KEY]
    assert result.pixel_agreement > 0.8 and result.mean_relative_error["logits"] < 0.05


# ---- errors ----------------------------------------------------------------------------------
def _plain_onnx(path: Path, metadata=None) -> Path:
    """A valid ONNX file without knet's metadata: images (N, 3, H, W) -> logits (Identity)."""
    from onnx import TensorProto, helper

    dims = ["batch", 3, "height", "width"]
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "plain",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def _one_line_error(capsys, code: int, *words: str) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture()
def picture(tmp_path) -> Path:
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    return tmp_path / "p.png"


def test_an_onnx_file_without_knet_metadata_is_a_one_line_error(tmp_path, picture, capsys):
    plain = _plain_onnx(tmp_path / "plain.onnx")
    code = main(["predict", "--checkpoint", str(plain), str(picture), "--out-dir", str(tmp_path / "o")])
    _one_line_error(capsys, code, "plain.onnx", "no knet config in its metadata", "knet export")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    code = main(["benchmark", "--checkpoint", str(tmp_path / "junk.onnx")])
    _one_line_error(capsys, code, "junk.onnx", "ONNX Runtime cannot load it")
    code = main(["predict", "--checkpoint", str(tmp_path / "missing.onnx"), str(picture), "--out-dir",
                 str(tmp_path / "o")])
    _one_line_error(capsys, code, "missing.onnx: no such file")


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    torch.manual_seed(0)
    knet.save_pretrained(knet.build_model("knet-r50-fcn-tiny"), tmp_path / "fcn")
    out = tmp_path / "m.onnx"
    base = ["export", "--checkpoint", str(tmp_path / "fcn"), "--out", str(out)]
    for argv, message in ((["--format", "tflite"], "argument --format: invalid choice: 'tflite' (choose from 'onnx')"),
                          (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4' (choose from 'int8')")):
        with pytest.raises(SystemExit):
            main(base + argv)
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"knet export: error: {message}"
    _one_line_error(capsys, main(base + ["--model", "knet-r50-pspnet-tiny"]),
                    "does not fit model knet-r50-pspnet-tiny: the directory holds knet-r50-fcn-tiny; leave --model out")
    _one_line_error(capsys, main(base + ["--opset", "17"]), "--opset 17", "18 or newer")
    _one_line_error(capsys, main(base + ["--quantize", "int8"]), "needs --calibration DIR")
    _one_line_error(capsys, main(base + ["--calibration", str(tmp_path)]), "--calibration applies to --quantize")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, main(base + ["--quantize", "int8", "--calibration", str(tmp_path / "empty")]),
                    "no images")
    assert not out.exists() and list(tmp_path.glob(".m.onnx*")) == []


def test_export_refuses_an_out_that_would_replace_an_input(tmp_path, capsys):
    torch.manual_seed(0)
    knet.save_pretrained(knet.build_model("knet-r50-fcn-tiny"), tmp_path / "fcn")
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "link").symlink_to(tmp_path / "fcn")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    weights = ["export", "--checkpoint", str(tmp_path / "fcn"), "--out"]
    for argv in (weights + [str(tmp_path / "link" / "model.safetensors")],
                 weights + [str(tmp_path / "fcn" / "x" / ".." / "config.json")],
                 weights + [str(tmp_path / "photos" / "a.png"), "--quantize", "int8", "--calibration",
                            str(tmp_path / "photos")]):
        _one_line_error(capsys, main(argv), "--out: writing", "would overwrite the input")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---- int8 ------------------------------------------------------------------------------------
def test_int8_quantization_keeps_the_config_and_stays_close(exported, tmp_path, one_thread):
    """Static int8 of the tiny R50-FCN, calibrated on generated scenes: the file carries knet's
    config, runs through the backend, quantizes the backbone and head convolutions (not the
    kernel-update stages) and stays near the float model."""
    from knet.data.synthetic import make_scene
    from knet.export.quantize import QUANTIZATION_KEY, quantize_int8

    _, path = exported("knet-r50-fcn-tiny")
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, size=(64, 96))[0] for _ in range(4)]
    out = tmp_path / "int8.onnx"
    result = quantize_int8(path, out, scenes)
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata[CONFIG_KEY] == {p.key: p.value for p in onnx.load(str(path)).metadata_props}[CONFIG_KEY]
    assert "int8 static QDQ" in metadata[QUANTIZATION_KEY] and "4 images" in metadata[QUANTIZATION_KEY]
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert ops.count("DequantizeLinear") > 50 and result.calibration_images == 4
    print(result.summary())  # shown with -s
    assert result.pixel_agreement is not None and result.pixel_agreement > 0.8
    assert result.mean_relative_error["logits"] < 0.05
    image = scenes[0]
    int8_labels = knet.Segmenter.from_onnx(out, threads=1)(image).labels
    fp32_labels = knet.Segmenter.from_onnx(path, threads=1)(image).labels
    assert int8_labels.shape == image.shape[:2] and (int8_labels == fp32_labels).mean() > 0.8


def test_knet_export_quantize_int8_from_the_command_line(exported, tmp_path, capsys):
    """--quantize from an exported float file (an .onnx --checkpoint), calibrated on a folder's images."""
    from knet.data.synthetic import make_scene

    _, path = exported("knet-r50-fcn-tiny")
    calibration = tmp_path / "calibration"
    (calibration / "nested").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(make_scene(rng, size=(48, 64))[0]).save(calibration / ("nested" if i else ".") / f"{i}.png")
    (calibration / "notes.txt").write_text("not an image: skipped")
    out = tmp_path / "fcn-int8.onnx"
    assert main(["export", "--checkpoint", str(path), "--out", str(out), "--quantize", "int8", "--calibration",
                 str(calibration), "--calibration-images", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "int8 against fp32 on the 2 calibration images" in printed and f"wrote {out}" in printed
    assert OnnxRunner(out, threads=1).config.name == "knet-r50-fcn-tiny"
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "again.onnx")]) == 2
    assert "is already an ONNX file: it is the source of --quantize only" in capsys.readouterr().err


@pytest.mark.slow  # an export and a quantization: ~10 s on one core
def test_int8_export_is_quiet(tmp_path, one_thread, capsys, caplog):
    """From a model: the temporary float file's path is not printed, and ONNX Runtime's notes
    ("Please consider to run pre-processing") go to knet's logger at debug level only."""
    import logging

    from knet.data.synthetic import make_scene

    (tmp_path / "calibration").mkdir()
    Image.fromarray(make_scene(np.random.default_rng(1), size=(48, 64))[0]).save(tmp_path / "calibration" / "0.png")
    knet.save_pretrained(knet.build_model("knet-r50-fcn-tiny"), tmp_path / "model")
    root = logging.getLogger()
    before = (list(root.handlers), list(root.filters), root.level)
    caplog.set_level(logging.DEBUG, logger="knet")
    out = tmp_path / "int8.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "model"), "--no-check", "--out", str(out), "--quantize",
                 "int8", "--calibration", str(tmp_path / "calibration"), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert f"wrote {out}" in printed and "knet-export-" not in printed and "pre-processing" not in printed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    assert any(r.name == "knet.export.quantize" and "pre-processing" in r.getMessage() for r in caplog.records)
    assert (list(root.handlers), list(root.filters), root.level) == before


def test_missing_onnx_packages_name_the_extra(tmp_path, picture, monkeypatch, capsys):
    plain = _plain_onnx(tmp_path / "plain.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(KnetError, match=r'ONNX Runtime is not installed: pip install "knet-seg\[onnx\]"'):
        OnnxRunner(plain)
    code = main(["predict", "--checkpoint", str(plain), str(picture), "--out-dir", str(tmp_path / "o")])
    _one_line_error(capsys, code, 'pip install "knet-seg[onnx]"')
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(KnetError, match=r'ONNX export needs onnxscript: pip install "knet-seg\[onnx\]"'):
        export_onnx(knet.build_model("knet-r50-fcn-tiny"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_parity_check_leaves_no_file(tmp_path, monkeypatch):
    """The exporter replaced by one that writes a wrong graph (images -> images): the check fails
    and neither the file nor its temporary remains."""
    import onnx_ir as ir

    wrong = ir.serde.deserialize_model(onnx.load(str(_plain_onnx(tmp_path / "plain.onnx"))))

    class Program:
        model = wrong

        def save(self, destination, external_data=False):
            ir.save(self.model, str(destination))

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(KnetError, match=r"parity check: logits has shape \(2, 3, 256, 320\) in ONNX Runtime"):
        export_onnx(knet.build_model("knet-r50-fcn-tiny"), out)
    assert list(out.parent.iterdir()) == []


def test_fp16_export_for_gpus_runs_in_onnx_runtime(tmp_path, capsys, one_thread):
    name = "knet-r50-fcn-tiny"
    checkpoint = golden_path(GOLDEN_WEIGHTS[name])
    out = tmp_path / "fp16.onnx"
    # Random weights amplify float16 rounding through the kernel-update stages, hence the tolerance.
    assert main(["export", "--model", name, "--checkpoint", str(checkpoint), "--out", str(out),
                 "--precision", "fp16", "--tolerance", "0.2"]) == 0
    assert "fp16, opset 18, target gpu" in capsys.readouterr().out
    graph = onnx.load(str(out))
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata["knet.precision"] == "fp16" and metadata["knet.target"] == "gpu"
    sizes = {}
    for tensor in graph.graph.initializer:
        sizes[tensor.data_type] = sizes.get(tensor.data_type, 0) + int(np.prod(tensor.dims))
    assert sizes.get(onnx.TensorProto.FLOAT16, 0) > 0.99 * sum(sizes.values()), sizes
    runner = OnnxRunner(out, device="cpu")
    assert runner.precision == "fp16"
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    logits = runner(x)
    with torch.no_grad():
        expected = load_model(checkpoint, name).eval().inference(x)
    assert logits.dtype == torch.float32
    assert float((logits - expected).abs().max() / expected.abs().max()) < 0.2


def test_export_precision_errors_are_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    knet.save_pretrained(knet.build_model("knet-r50-fcn-tiny"), tmp_path / "fcn")
    base = ["export", "--checkpoint", str(tmp_path / "fcn"), "--out", str(tmp_path / "m.onnx")]
    _one_line_error(capsys, main(base + ["--precision", "bf16"]), "ONNX Runtime has no bfloat16 convolutions")
    _one_line_error(capsys, main(base + ["--precision", "fp16", "--target", "cpu"]), "fp16 is for GPUs",
                    "--target gpu")
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "photos" / "p.png")
    _one_line_error(capsys, main(base + ["--precision", "fp16", "--quantize", "int8", "--calibration",
                                         str(tmp_path / "photos")]), "two different files")
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "model.onnx").write_bytes(b"")
    for verb in (["predict", "--checkpoint", str(tmp_path / "model.onnx"), str(tmp_path), "--out-dir",
                  str(tmp_path / "o")],
                 ["benchmark", "--checkpoint", str(tmp_path / "model.onnx")]):
        _one_line_error(capsys, main(verb + ["--precision", "bf16"]), "--precision bf16 applies to torch models")


def test_export_precision_names_are_read_as_everywhere():
    from knet.export.onnx import check_export_precision

    assert check_export_precision(" FP16", "gpu") == "fp16" and check_export_precision(None, "cpu") == "fp32"
    with pytest.raises(KnetError, match="precision 'int8' is not one of: fp32, bf16, fp16"):
        check_export_precision("int8", "cpu")


def test_the_stored_precision_is_read_from_the_metadata_alone(tmp_path):
    from knet.inference.onnx_runner import PRECISION_KEY, _stored_precision

    other = {"knet.target": "gpu", "producer": "x" * 300}  # entries before and after, one long
    assert _stored_precision(_plain_onnx(tmp_path / "a.onnx", {**other, PRECISION_KEY: "fp16"})) == "fp16"
    assert _stored_precision(_plain_onnx(tmp_path / "b.onnx", other)) == "fp32"
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf \xff\xff\xff")
    assert _stored_precision(tmp_path / "junk.onnx") == "fp32"
    assert _stored_precision(tmp_path / "missing.onnx") == "fp32"

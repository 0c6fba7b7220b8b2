"""``--precision``: which formats each device allows, and bf16 runs on CPUs that have it natively."""
import numpy as np
import pytest
import torch

import knet
from knet.errors import KnetError
from knet.inference.pipeline import TorchRunner
from knet.utils import precision as precision_module
from knet.utils.device import cpu_has_native_bf16
from knet.utils.precision import check_precision, precision_name

native_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no AMX or AVX512-BF16")


def test_cpu_has_native_bf16_reads_the_flags():
    assert cpu_has_native_bf16("flags\t: fpu avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags\t: fpu amx_tile amx_bf16\n")
    assert not cpu_has_native_bf16("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert not cpu_has_native_bf16("model name\t: amx_bf16 in a name is not a flag\n")


def test_check_precision_refuses_what_the_device_lacks(monkeypatch):
    assert check_precision("fp32", "cpu") is None and check_precision(None) is None
    with pytest.raises(KnetError, match="precision 'fp8' is not one of: fp32, bf16, fp16"):
        check_precision("fp8")
    with pytest.raises(KnetError, match="fp16 runs on GPUs; on the CPU use bf16"):
        check_precision("fp16", "cpu")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(KnetError, match="no native bfloat16 arithmetic \\(amx_bf16 or avx512_bf16\\)"):
        check_precision("bf16", "cpu")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert check_precision("BF16", "cpu") is torch.bfloat16


def test_segmenter_refuses_bf16_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    model = knet.build_model("knet-r50-fcn-tiny").eval()
    with pytest.raises(KnetError, match="precision bf16: this CPU has no native bfloat16"):
        knet.Segmenter(model, device="cpu", precision="bf16")


def test_a_model_runner_keeps_its_own_precision():
    class Runner:  # the model-runner interface (an ONNX Runtime session, say)
        config = knet.build_model("knet-r50-fcn-tiny").config
        device = torch.device("cpu")

        def __call__(self, x, **kwargs):
            raise AssertionError("not called")

    with pytest.raises(KnetError, match="precision bf16 applies to torch models, not to a model runner"):
        knet.Segmenter(Runner(), precision="bf16")
    runner = Runner()
    assert knet.Segmenter(runner, precision=" FP32 ").pipeline.runner is runner  # the name read as everywhere


def test_precision_names_are_read_in_one_place():
    assert [precision_name(name) for name in (None, "", "fp32", " BF16 ", "Fp16")] == ["fp32", "fp32", "fp32",
                                                                                        "bf16", "fp16"]
    with pytest.raises(KnetError, match="--amp 'int8' is not one of: fp32, bf16, fp16"):
        precision_name("int8", option="--amp")
    runner = TorchRunner(knet.build_model("knet-r50-fcn-tiny").eval(), precision=" FP32")
    assert runner.precision == "fp32" and runner.compute_dtype is None


# Largest difference from fp32 (x max) per output. Random weights amplify rounding through the
# kernel-update stages (a trained model's accuracy is benchmarks/precision_accuracy.py's), so one
# stage; a panoptic model's mask logits come from two more products than its class logits.
TOLERANCES = {"knet-r50-fcn-tiny": (0.05,), "knet-swin-t-upernet-tiny": (0.05,),
              "knet-r50-fpn-panoptic-tiny": (0.05, 0.25)}


@native_bf16
@pytest.mark.parametrize("preset", sorted(TOLERANCES))
def test_bf16_runner_stays_close_to_fp32_and_leaves_the_model_alone(preset):
    from knet.inference.pipeline import TorchRunner

    torch.manual_seed(0)
    model = knet.build_model(preset, **{"kernel_update.num_stages": 1}).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    fp32, bf16 = TorchRunner(model)(x), TorchRunner(model, precision="bf16")(x)
    fp32, bf16 = (fp32, bf16) if isinstance(fp32, tuple) else ((fp32,), (bf16,))
    for full, low, tolerance in zip(fp32, bf16, TOLERANCES[preset]):
        assert low.dtype == torch.float32 and low.shape == full.shape
        difference = float((low - full).abs().max() / full.abs().max())
        assert 0 < difference < tolerance, difference  # bf16 rounding: it changed something, and not much
    runner = TorchRunner(model, precision="bf16")
    assert {p.dtype for m in runner.model.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters()} \
        == {torch.bfloat16}
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not torch.is_autocast_enabled("cpu")


@native_bf16
def test_segmenter_bf16_labels_match_fp32_on_most_pixels():
    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=3).eval()
    picture = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    fp32 = knet.Segmenter(model, device="cpu")(picture).labels
    bf16 = knet.Segmenter(model, device="cpu", precision="bf16")(picture).labels
    assert bf16.shape == fp32.shape and (bf16 == fp32).mean() > 0.9

"""Winograd F(4x4, 3x3) convolutions (:mod:`knet.models.winograd`): the direct convolution's
result, for every dilation, odd sizes, batches and bands of tiles, and only where supported."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import knet
from knet.models import winograd
from knet.models.winograd import WinogradConv2d, remove_winograd, use_winograd
from knet.tasks import get_task
from tests.conftest import count_winograd_calls, needs_cuda


def _conv(channels_in, channels_out, dilation=1, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(channels_in, channels_out, 3, padding=dilation, dilation=dilation, bias=bias).eval()


@torch.no_grad()
def _relative_error(got, conv, x):
    expected = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                        padding=conv.padding, dilation=conv.dilation)
    return float((got.double() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("dilation", [1, 2, 4])
@pytest.mark.parametrize("size", [(16, 16), (13, 21), (3, 5)])
def test_matches_the_direct_convolution(dilation, size):
    conv = _conv(24, 40, dilation)
    x = torch.randn(2, 24, *size)
    got = WinogradConv2d.from_conv(conv)(x)
    assert got.shape == (2, 40, *size)
    assert got.is_contiguous()  # the input's layout
    assert _relative_error(got, conv, x) < 3e-5


def test_channels_last_input_and_no_bias():
    conv = _conv(16, 8, bias=False)
    x = torch.randn(1, 16, 20, 12).contiguous(memory_format=torch.channels_last)
    got = WinogradConv2d.from_conv(conv)(x)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert _relative_error(got, conv, x) < 3e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_blocked_layout_copies_move_every_element(channels_last):
    """More channels and rows than a block holds, with partial last blocks; into a padded view."""
    x = torch.randn(300, 9, 7)
    if channels_last:
        x = x.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    padded = torch.zeros(11, 9, 300)
    winograd._copy_to_channels_last(padded[1:10, 1:8], x)
    assert torch.equal(padded[1:10, 1:8], x.permute(1, 2, 0)) and padded[0].abs().sum() == 0
    back = torch.empty_like(x)
    winograd._copy_to_channels_first(back, padded[1:10, 1:8])
    assert torch.equal(back, x) and back.stride() == x.stride()


@pytest.mark.parametrize("rows_per_band", [1, 2])
def test_bands_of_tile_rows_give_the_same_result(rows_per_band, monkeypatch):
    conv = _conv(8, 8, dilation=2)
    x = torch.randn(2, 8, 37, 29)  # 5 x 4 tiles of 8 x 8 outputs: with 2 rows a band, the last has 1
    whole = WinogradConv2d.from_conv(conv)(x)
    bytes_per_tile_row = 36 * 2 * 2 * 4 * 8 * x.element_size()  # 36 elements, d^2 residues, 4 tiles, 8 channels
    monkeypatch.setattr(winograd, "TRANSFORM_BUDGET_BYTES", rows_per_band * bytes_per_tile_row)
    monkeypatch.setattr(winograd, "MIN_BAND_TILES", 1)
    tiling = winograd._Tiling(x.shape, 2, x.element_size())
    assert tiling.rows_per_band == rows_per_band and list(tiling.bands())[-1][1] == 1
    assert torch.equal(WinogradConv2d.from_conv(conv)(x), whole)
    # a band holds at least MIN_BAND_TILES tiles (16 a tile row here: 4 tiles x 2 x 2 residues)
    monkeypatch.setattr(winograd, "MIN_BAND_TILES", 40)
    assert winograd._Tiling(x.shape, 2, x.element_size()).rows_per_band == max(rows_per_band, 3)


def _gradients(conv, x, grad_out):
    x = x.detach().clone().requires_grad_()
    conv.zero_grad()
    conv(x).backward(grad_out)
    return x.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize("dilation, size", [(1, (9, 9)), (2, (13, 21)), (4, (7, 18))])
def test_the_backward_pass_gives_the_direct_convolutions_gradients(dilation, size, monkeypatch):
    conv = _conv(12, 20, dilation).train()
    x, grad_out = torch.randn(2, 12, *size), torch.randn(2, 20, *size)
    expected = _gradients(conv.double(), x.double(), grad_out.double())
    fast = WinogradConv2d.from_conv(conv.float())
    assert fast.weight is conv.weight and fast.bias is conv.bias  # shared: an optimizer sees no change
    monkeypatch.setattr(winograd, "MIN_BAND_TILES", 1)
    for budget in (winograd.TRANSFORM_BUDGET_BYTES, 1):  # the whole image, then a tile row per band
        monkeypatch.setattr(winograd, "TRANSFORM_BUDGET_BYTES", budget)
        got = _gradients(fast, x, grad_out)
        for name, g, e in zip(("input", "weight", "bias"), got, expected):
            assert float((g.double() - e).abs().max()) <= 1e-5 * float(e.abs().max()), (name, budget)


def test_frozen_filters_are_used_without_gradients_and_the_weight_otherwise():
    conv = WinogradConv2d.from_conv(_conv(8, 8))
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        before = conv(x)
        conv.freeze()
        conv.weight.mul_(2)
        frozen = conv(x)  # the stored filters: the weight before the change
        assert torch.equal(frozen, before) or float((frozen - before).abs().max()) < 1e-5
        conv.transformed_weight = None
        doubled = conv(x)
    bias = conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(doubled - bias, 2 * (before - bias), atol=1e-5)
    assert list(conv.state_dict()) == ["weight", "bias"]  # the stored filters are not saved


def test_the_operator_is_consistent_with_its_fake_implementation():
    """torch.library's own checks: the shapes, strides and layouts that torch.compile is told
    (the fake implementation) are those the operator gives, for both layouts."""
    u = winograd.transform_weight(_conv(8, 12).weight.detach())
    for x in (torch.randn(2, 8, 9, 7), torch.randn(1, 8, 6, 10).contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(winograd.winograd_convolution, (x, u, 2), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_calls_the_operator_whole():
    """The compiled graph holds one winograd_convolution node per convolution and no graph
    break: its loops over images and bands stay out of the graph (Inductor's copies of them were
    slower than the eager path)."""
    conv = WinogradConv2d.from_conv(_conv(8, 8))
    conv.freeze()
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = nn.Sequential(conv, nn.ReLU(), WinogradConv2d.from_conv(_conv(8, 8, dilation=2, seed=1))).eval()
    x = torch.randn(1, 8, 11, 13)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)(x)
    assert torch.equal(got, expected)
    calls = [node for node in graphs[0].graph.nodes if node.target is torch.ops.knet.winograd_convolution.default]
    assert len(graphs) == 1 and len(calls) == 2


@pytest.mark.parametrize("conv", [nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 1),
                                  nn.Conv2d(8, 8, 3, padding=0), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                                  nn.Conv2d(8, 8, 3, padding=2, dilation=1)])
def test_unsupported_convolutions_are_refused(conv):
    assert not WinogradConv2d.supports(conv)
    with pytest.raises(ValueError, match="3x3, stride-1"):
        WinogradConv2d.from_conv(conv)


def test_use_winograd_replaces_only_wide_supported_convolutions():
    model = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1),
                          nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.Conv2d(128, 128, 1),
                          nn.Conv2d(128, 128, 3, padding=2, dilation=2))
    assert use_winograd(model) == 2
    assert [type(m).__name__ for m in model] == ["Conv2d", "WinogradConv2d", "Conv2d", "Conv2d", "WinogradConv2d"]
    assert list(model.state_dict()) == [f"{i}.{k}" for i in range(5) for k in ("weight", "bias")]


def test_a_whole_model_keeps_its_logits():
    torch.manual_seed(0)
    model = knet.build_model("knet-r50-upernet-tiny").eval()
    fast = knet.build_model("knet-r50-upernet-tiny").eval()
    fast.load_state_dict(model.state_dict())
    assert use_winograd(fast, min_channels=1) > 10
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_training_losses_and_gradients_are_the_direct_ones():
    """The golden tiny UPerNet with every supported 3x3 as Winograd: the reference's training
    losses, and the direct model's gradients. (Gradients are compared with BatchNorm on its
    running statistics: with batch statistics at these tiny sizes, float32 rounding alone moves
    the direct model's own gradients by as much as they are long, against float64.)"""
    from knet.checkpoint import load_model
    from tests.conftest import golden_path

    ref = dict(np.load(golden_path("knet-r50-upernet.tiny.npz")))
    x, labels = torch.from_numpy(ref["x_sq"]), torch.from_numpy(ref["label_sq"])
    overrides = {"decode_head.dropout_ratio": 0.0, "auxiliary_head.dropout_ratio": 0.0}
    models = [load_model(golden_path("knet-r50-upernet.tiny.pth"), "knet-r50-upernet-tiny", overrides)
              for _ in range(2)]
    assert use_winograd(models[1], min_channels=1) > 10
    task = get_task("semantic")
    grads = []
    for model in models:
        model.eval().zero_grad()
        sum(task.losses(model.outputs(x, with_aux=True), labels, model.config).values()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape
    assert float((grads[1] - grads[0]).norm()) <= 1e-4 * float(grads[0].norm())
    for key, value in task.losses(models[1].train().outputs(x), labels, models[1].config).items():
        expected = float(ref[f"loss_{key}"])
        assert abs(float(value.detach()) - expected) <= 1e-4 * abs(expected), key


# ---- where Winograd does not apply: the direct convolution ------------------------------------
def _direct(module, x):
    return F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes_run_the_direct_convolution(dtype, monkeypatch):
    """A Winograd module converted to another dtype (model.double(), .half()) computes exactly what
    the direct convolution computes in that dtype, forward and backward."""
    calls = count_winograd_calls(monkeypatch)
    conv = WinogradConv2d.from_conv(_conv(8, 8, dilation=2)).to(dtype)
    x = torch.randn(2, 8, 9, 11, dtype=dtype, requires_grad=True)
    got = conv(x)
    assert torch.equal(got, _direct(conv, x))
    with torch.no_grad():
        assert torch.equal(conv(x), _direct(conv, x))
    got.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == dtype
    assert calls == []


def test_meta_tensors_and_autocast_run_the_direct_convolution(monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    conv = WinogradConv2d.from_conv(_conv(8, 12))
    conv.freeze()
    on_meta = conv.to("meta")
    out = on_meta(torch.empty(2, 8, 9, 11, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 12, 9, 11)
    conv = WinogradConv2d.from_conv(_conv(8, 12))
    x = torch.randn(1, 8, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        expected = nn.Conv2d.forward(conv, x)  # what autocast makes of the direct convolution
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    assert calls == []


def test_unbatched_and_empty_inputs_run_the_direct_convolution(monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    conv = WinogradConv2d.from_conv(_conv(8, 8))
    x = torch.randn(8, 9, 11)
    assert torch.equal(conv(x), _direct(conv, x))
    empty = torch.randn(0, 8, 9, 11, requires_grad=True)
    out = conv(empty)
    assert out.shape == (0, 8, 9, 11)
    out.sum().backward()
    assert calls == []
    conv(torch.randn(1, 8, 9, 11))  # float32 on the CPU: Winograd
    assert calls == [torch.float32]


@needs_cuda
def test_on_cuda_the_direct_convolution_runs(monkeypatch, no_tf32):
    calls = count_winograd_calls(monkeypatch)
    conv = WinogradConv2d.from_conv(_conv(8, 8)).cuda()
    x = torch.randn(2, 8, 9, 11, device="cuda", requires_grad=True)
    got = conv(x)
    assert got.device.type == "cuda" and torch.equal(got, _direct(conv, x))
    got.sum().backward()
    assert calls == []


# ---- remove_winograd ----------------------------------------------------------------------------
def test_remove_winograd_gives_back_the_convolutions_with_the_same_parameters():
    shared = nn.Conv2d(128, 128, 3, padding=1)
    model = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1, bias=False),
                          shared, nn.Sequential(shared), nn.Conv2d(128, 128, 3, padding=2, dilation=2)).eval()
    originals = list(model.modules())
    hook_calls = []
    model[1].register_forward_hook(lambda *args: hook_calls.append(1))
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    assert use_winograd(model) == 3  # the shared one once, and shared still
    assert isinstance(model[2], WinogradConv2d) and model[2] is model[3][0]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        fast = model(x)
    model.train()
    assert remove_winograd(model) == 3
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())
    assert list(model.modules()) == originals  # the very modules the model had: hooks and all
    assert model[2] is model[3][0] is shared and model[1].training
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), fast, atol=1e-4)
    assert hook_calls == [1]  # the original module's hook: not while Winograd ran, again after
    assert remove_winograd(model) == 0


def test_remove_winograd_follows_the_parameters_the_winograd_modules_hold():
    """Parameters replaced while Winograd was in place (a load with ``assign=True``) are those
    the restored convolution holds; without the original module a new one is made."""
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))
    assert use_winograd(model, min_channels=1) == 1
    state = {k: torch.randn_like(v, dtype=torch.float64) for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    del model[0].__dict__["_replaced_conv"]
    assert remove_winograd(model) == 1
    assert type(model[0]) is nn.Conv2d and model[0].weight.dtype == torch.float64
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64)
    assert torch.equal(model(x), _direct(model[0], x))

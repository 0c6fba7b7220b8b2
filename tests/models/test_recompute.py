"""Blocks that recompute their activations in the backward pass (``models.layers.run_block``,
the backbones' ``recompute_stages``, UPerHead's ``recompute_fusion``, both set from the config):
the same values, gradients and BatchNorm statistics as a plain forward, and fewer tensors kept for
the backward pass."""
from __future__ import annotations

import copy
import weakref

import pytest
import torch

from knet import KNetConfig, build_model, get_config
from knet.config import ConfigError, low_memory_config
from knet.models.heads.uper import UPerHead
from knet.models.layers import rebuilt_for_backward, run_block
from knet.models.winograd import use_winograd


def _saved_bytes(fn):
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def _step(model, x):
    """Forward and backward of a tiny training step; the gradients by name."""
    model.zero_grad()
    out, saved = _saved_bytes(lambda: model.backbone(x))
    sum((o.float() ** 2).mean() for o in out).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved


def _compare(preset, stages):
    torch.manual_seed(0)
    plain = build_model(preset).train()
    recomputed = copy.deepcopy(plain)
    recomputed.backbone.recompute_stages = stages
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)  # drop-path draws the same numbers in both (and in the recompute)
    out_plain, grads_plain, saved_plain = _step(plain, x)
    torch.manual_seed(1)
    out_re, grads_re, saved_re = _step(recomputed, x)
    for a, b in zip(out_plain, out_re):
        assert torch.equal(a, b)
    assert grads_plain.keys() == grads_re.keys()
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_re[name], grad, rtol=1e-5, atol=1e-7 * float(grad.abs().max())), name
    buffers_plain, buffers_re = dict(plain.named_buffers()), dict(recomputed.named_buffers())
    for name, value in buffers_plain.items():  # BatchNorm statistics updated once, not twice
        assert torch.equal(buffers_re[name], value), name
    return saved_plain, saved_re


def test_resnet_stages_recompute_with_the_same_gradients_and_statistics():
    saved_plain, saved_re = _compare("knet-r50-fcn-tiny", (2, 3))
    assert saved_re < 0.8 * saved_plain


def test_swin_stages_recompute_with_the_same_gradients():
    saved_plain, saved_re = _compare("knet-swin-t-upernet-tiny", (0, 1))
    assert saved_re < 0.8 * saved_plain


def test_run_block_is_a_plain_call_in_eval_mode_and_without_gradients():
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    x = torch.randn(3, 4, requires_grad=True)
    _, saved_eval = _saved_bytes(lambda: run_block(block.eval(), True, x))
    _, saved_train = _saved_bytes(lambda: run_block(block.train(), True, x))
    assert saved_train < saved_eval  # in training only the input is kept
    with torch.no_grad():
        assert torch.equal(run_block(block, True, x), block(x))


def test_low_memory_training_recomputes_the_listed_stages():
    model = build_model("knet-swin-t-upernet-tiny").train()
    assert model.backbone.recompute_stages == ()  # not by default
    assert not model.decode_head.kernel_generate_head.recompute_fusion
    cfg = low_memory_config(get_config("knet-swin-t-upernet-tiny"))
    assert cfg.backbone.recompute_stages == cfg.backbone.low_memory_recompute_stages == (0, 1, 2)
    assert cfg.decode_head.recompute_fusion
    model = build_model(cfg).train()
    assert model.backbone.recompute_stages == (0, 1, 2)
    assert model.decode_head.kernel_generate_head.recompute_fusion
    assert low_memory_config(cfg) == cfg


@pytest.mark.parametrize("preset, stages", [("knet-r50-fcn-tiny", (0, 1, 2, 3)),
                                            ("knet-swin-t-upernet-tiny", (0, 1, 2)),
                                            ("knet-r50-fpn-panoptic-tiny", (0, 1, 2, 3))])
def test_low_memory_config_by_backbone(preset, stages):
    cfg = low_memory_config(get_config(preset))
    assert cfg.backbone.recompute_stages == stages
    if preset.startswith("knet-r50-fpn"):  # and the kernel head's semantic FPN
        assert cfg.kernel_head.recompute_fusion and build_model(cfg).kernel_head.recompute_fusion
    assert build_model(cfg).backbone.recompute_stages == stages
    # stages the config already names are kept
    chosen = low_memory_config(get_config(preset, {"backbone.recompute_stages": "1"}))
    assert chosen.backbone.recompute_stages == (1,) and build_model(chosen).backbone.recompute_stages == (1,)


def test_configs_without_the_recompute_fields_still_load():
    data = get_config("knet-swin-t-upernet-tiny").to_dict()
    for group, name in (("backbone", "recompute_stages"), ("backbone", "low_memory_recompute_stages"),
                        ("decode_head", "recompute_fusion")):
        del data[group][name]
    cfg = KNetConfig.from_dict(data)
    assert cfg.backbone.recompute_stages == () and not cfg.decode_head.recompute_fusion
    assert cfg.backbone.low_memory_recompute_stages == (0, 1, 2)
    with pytest.raises(ConfigError, match="recompute_stages"):
        get_config("knet-r50-fcn-tiny", {"backbone.recompute_stages": "0,4"})


def test_a_model_built_with_recompute_stages_matches_the_plain_one():
    """The config's fields give what setting the attributes on a built model gives."""
    torch.manual_seed(0)
    plain = build_model("knet-r50-fcn-tiny").train()
    torch.manual_seed(0)
    built = build_model(get_config("knet-r50-fcn-tiny", {"backbone.recompute_stages": "2,3"})).train()
    built.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    out_plain, grads_plain, saved_plain = _step(plain, x)
    out_built, grads_built, saved_built = _step(built, x)
    for a, b in zip(out_plain, out_built):
        assert torch.equal(a, b)
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_built[name], grad, rtol=1e-5, atol=1e-7 * float(grad.abs().max())), name
    assert saved_built < 0.8 * saved_plain


def _head_step(head, inputs):
    """Forward and backward of ``head``; the output, the gradients by name, and whether the
    concatenation the last convolution reads and the lateral convolution's output were still
    alive between the forward and the backward pass."""
    kept = {}
    hooks = [head.fpn_bottleneck.conv.register_forward_pre_hook(
                 lambda m, args: kept.update(fused=weakref.ref(args[0]))),
             head.lateral_convs[0].conv.register_forward_hook(
                 lambda m, args, out: kept.update(lateral=weakref.ref(out)))]
    head.zero_grad()
    out = head.forward_features(inputs)
    alive = {name: ref() is not None for name, ref in kept.items()}
    (out ** 2).mean().backward()
    for hook in hooks:
        hook.remove()
    return out, {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}, alive


@pytest.mark.parametrize("winograd", [False, True])
def test_uper_head_rebuilds_its_fusion_with_the_same_gradients_and_statistics(winograd):
    torch.manual_seed(0)
    plain = UPerHead([16, 32, 64, 128], channels=128, num_classes=5).train()
    if winograd:
        assert use_winograd(plain) == 5  # the 3x3 convolutions with 128 channels and more in and out
    recomputed = copy.deepcopy(plain)
    recomputed.recompute_fusion = True
    inputs = [torch.randn(2, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate([16, 32, 64, 128])]
    out_plain, grads_plain, alive_plain = _head_step(plain, inputs)
    out_re, grads_re, alive_re = _head_step(recomputed, inputs)
    assert torch.equal(out_plain, out_re)
    assert grads_plain.keys() == grads_re.keys() and len(grads_plain) == 3 * 12  # 12 ConvBNReLUs
    for name, grad in grads_plain.items():  # the last convolution's weight gradient: a sum of two calls'
        assert float((grads_re[name] - grad).abs().max()) <= 1e-5 * float(grad.abs().max()), name
    for (name, value), other in zip(plain.named_buffers(), recomputed.buffers()):
        assert torch.equal(other, value), name  # BatchNorm statistics updated once
    assert alive_plain == {"fused": True, "lateral": True}
    assert alive_re == {"fused": False, "lateral": False}


def test_kernel_head_recomputes_its_semantic_fpn_with_the_same_gradients():
    torch.manual_seed(0)
    plain = build_model("knet-r50-fpn-panoptic-tiny").kernel_head.train()
    recomputed = copy.deepcopy(plain)
    recomputed.recompute_fusion = True
    feats = [torch.randn(2, 32, 32 // 2 ** i, 32 // 2 ** i) for i in range(4)]
    results = []
    for head in (plain, recomputed):
        head.zero_grad()
        out, saved = _saved_bytes(lambda: head(feats))
        (out.mask_logits.square().mean() + out.semantic_logits.square().mean()).backward()
        results.append((out, {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}, saved))
    (out_plain, grads_plain, saved_plain), (out_re, grads_re, saved_re) = results
    assert torch.equal(out_plain.mask_logits, out_re.mask_logits)
    assert grads_plain.keys() == grads_re.keys() and any("localization_fpn" in n for n in grads_plain)
    for name, grad in grads_plain.items():
        assert float((grads_re[name] - grad).abs().max()) <= 1e-5 * float(grad.abs().max()), name
    assert saved_re < 0.6 * saved_plain


def test_rebuilt_for_backward_keeps_nothing_of_the_tensor_and_rebuilds_it():
    weight = torch.randn(8, 8, requires_grad=True)
    base = torch.randn(4, 8)
    calls = []

    def make():
        calls.append(1)
        return base * 2

    x = make()
    with rebuilt_for_backward(x, make):
        out = (x @ weight).sum()
    x_alive = weakref.ref(x)
    del x
    assert x_alive() is None  # the product kept nothing of x
    out.backward()
    assert len(calls) == 2 and torch.allclose(weight.grad, (base * 2).t() @ torch.ones(4, 8))

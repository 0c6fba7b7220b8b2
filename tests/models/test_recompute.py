"""Blocks that recompute their activations in the backward pass (``models.layers.run_block``,
the backbones' ``recompute_stages``): the same values, gradients and BatchNorm statistics as a
plain forward, and fewer tensors kept for the backward pass."""
from __future__ import annotations

import copy

import torch

from knet import build_model
from knet.engine.training import LOW_MEMORY_RECOMPUTED_STAGES, save_training_memory
from knet.models.layers import run_block


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
    notes = save_training_memory(model)
    assert model.backbone.recompute_stages == LOW_MEMORY_RECOMPUTED_STAGES["swin"] == (0, 1, 2)
    assert any("recompute" in note for note in notes)

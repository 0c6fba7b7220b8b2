"""The reference's optimisation recipe: lr values of the schedule, the default recipe per
preset, the Swin no-decay set against the reference's rule, and gradient clipping."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import knet
from knet.config import TrainConfig
from knet.engine.optim import WarmupStepSchedule, backward_step, build_optimizer, build_param_groups, lr_factor
from knet.tasks import get_task

# One torch thread (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [1e-4, 6e-5])
def test_lr_values_of_the_reference_recipe(base):
    cfg = TrainConfig(lr=base)
    expected = {0: 0.001, 999: 0.999001, 1000: 1.0, 59999: 1.0, 60000: 0.1, 71999: 0.1, 72000: 0.01, 79999: 0.01}
    for iteration, factor in expected.items():
        assert lr_factor(iteration, cfg) * base == pytest.approx(factor * base, rel=1e-9), iteration

    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=base)
    schedule = WarmupStepSchedule(optimizer, cfg)
    for iteration, factor in expected.items():
        assert schedule.apply(iteration) == pytest.approx(factor * base, rel=1e-9)
        assert all(g["lr"] == pytest.approx(factor * base, rel=1e-9) for g in optimizer.param_groups)
    state = schedule.state_dict()
    other = WarmupStepSchedule(torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0), cfg)
    other.load_state_dict(state)
    assert other.lr_at(60000) == pytest.approx([0.1 * base, 0.1 * base])


def test_default_recipe_is_the_reference():
    r50, swin = knet.get_config("knet-r50-fcn").train, knet.get_config("knet-swin-t-upernet").train
    assert (r50.lr, r50.weight_decay, r50.clip_grad_norm, r50.iters, r50.batch_size) == (1e-4, 5e-4, 1.0, 80000, 2)
    assert (r50.val_interval, r50.checkpoint_interval, r50.no_decay_keys) == (8000, 8000, ())
    assert (swin.lr, tuple(swin.betas), swin.weight_decay) == (6e-5, (0.9, 0.999), 5e-4)


# --------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------
def _expected_swin_no_decay(model: nn.Module):
    """The reference's exemptions spelled out by module type: every LayerNorm except the one in the
    kernel-update heads' mask_fcs, plus the relative position tables (and absolute position
    embeddings when the backbone has them); never a BatchNorm."""
    expected = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and ".mask_fcs." not in name:
            expected.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    for name, _ in model.named_parameters():
        if name.endswith("relative_position_bias_table") or name.endswith("absolute_pos_embed"):
            expected.add(name)
    return expected


def test_swin_no_decay_set_matches_the_reference_rule():
    model = knet.build_model("knet-swin-t-upernet-tiny")
    cfg = model.config.train
    groups = build_param_groups(model, cfg)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    no_decay = set(groups[1]["names"])
    assert no_decay == _expected_swin_no_decay(model)
    # The kinds the issue lists are all there, and the excluded ones are not.
    for part in ("backbone.patch_embed.norm.", "backbone.stages.0.downsample.norm.", "backbone.norm3.",
                 "backbone.stages.0.blocks.0.norm1.", "relative_position_bias_table",
                 "decode_head.kernel_update_head.0.attention_norm.", "decode_head.kernel_update_head.0.ffn_norm.",
                 "decode_head.kernel_update_head.0.kernel_update_conv.norm_in."):
        assert any(part in n for n in no_decay), part
    bn_params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                 for p, _ in m.named_parameters(recurse=False)}
    assert bn_params and not (bn_params & no_decay)
    assert not any(".mask_fcs." in n for n in no_decay)
    # Every trainable parameter is in exactly one group.
    names = groups[0]["names"] + groups[1]["names"]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["lr"] == 6e-5


def test_the_fused_adamw_makes_the_plain_update():
    """On the CPU the optimiser is PyTorch's fused AdamW: three steps with the recipe's groups
    land where the plain (for-loop) AdamW lands, to float rounding."""
    torch.manual_seed(0)
    model = knet.build_model("knet-swin-t-upernet-tiny", num_classes=4)
    twin, initial = copy.deepcopy(model), copy.deepcopy(model)
    fused = build_optimizer(model, model.config.train)
    assert all(group["fused"] for group in fused.param_groups)
    groups = build_param_groups(twin, twin.config.train)
    for group in groups:
        group.pop("names")
    plain = torch.optim.AdamW(groups, lr=1e-3, betas=tuple(twin.config.train.betas), foreach=False)
    for group in fused.param_groups:
        group["lr"] = 1e-3  # large enough steps to tell the updates apart
    for step in range(3):
        for a, b in zip(model.parameters(), twin.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
    moved = [(a - b).abs().max().item() for a, b in zip(model.parameters(), initial.parameters())]
    assert min(moved) > 1e-4  # every weight took steps well above the tolerance


def test_resnet_presets_decay_everything():
    model = knet.build_model("knet-r50-fcn-tiny")
    groups = build_param_groups(model, model.config.train)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4
    assert len(groups[0]["params"]) == len(list(model.parameters()))


# --------------------------------------------------------------------------------------------
# Clipping
# --------------------------------------------------------------------------------------------
def test_gradient_clipping_to_total_norm():
    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=4)
    model.train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    task = get_task("semantic")
    params = list(model.parameters())
    optimizer = build_optimizer(model, model.config.train)

    loss = sum(task.losses(model.outputs(x), y, model.config).values())
    raw = backward_step(loss, optimizer, params, clip_grad_norm=None)
    assert raw > 1.0  # a fresh model's gradients are far above the clip of 1.0

    loss = sum(task.losses(model.outputs(x), y, model.config).values())
    before = backward_step(loss, optimizer, params, clip_grad_norm=1.0)
    after = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm().item()
    assert before > 1.0 and after == pytest.approx(1.0, rel=1e-4)

    loss = sum(task.losses(model.outputs(x), y, model.config).values())
    big = backward_step(loss, optimizer, params, clip_grad_norm=1e9)
    unclipped = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm().item()
    assert unclipped == pytest.approx(big, rel=1e-5)

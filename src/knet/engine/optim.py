"""The reference's optimisation recipe: AdamW parameter groups (the Swin presets exempt
normalisation weights and position tables from weight decay; the panoptic/instance recipes train
the backbone at a fraction of the lr), the warm-up + step lr schedule in closed form (a schedule
given in epochs is converted to iterations first), and one clipped (optionally loss-scaled)
optimizer step.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError, TrainingError

__all__ = [
    "WarmupStepSchedule",
    "backward_step",
    "build_optimizer",
    "build_param_groups",
    "epochs_to_iterations",
    "lr_factor",
    "no_decay_parameter_names",
]

# Parameters whose name starts with this train at ``backbone_lr_mult`` times the lr (the
# reference's ``paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.25)})``).
BACKBONE_PREFIX = "backbone."


def no_decay_parameter_names(model: nn.Module, keys: Sequence[str]) -> List[str]:
    """Names of the trainable parameters that get no weight decay: those whose name contains one
    of ``keys`` (the reference's rule; knet's parameter names equal the reference's keys)."""
    return [name for name, p in model.named_parameters()
            if p.requires_grad and any(key in name for key in keys)]


def build_param_groups(model: nn.Module, train_cfg: TrainConfig) -> List[Dict[str, Any]]:
    """AdamW parameter groups: one with the recipe's weight decay and, when ``no_decay_keys`` is
    set, one with weight decay 0 for the exempt parameters. With ``backbone_lr_mult`` != 1 each
    of them is split once more: the ``backbone.*`` parameters get ``lr = lr * backbone_lr_mult``
    in a group after the base-lr one (the first group always has the base lr). Each group records
    its parameter names under ``"names"`` (informative; the optimizer ignores it)."""
    exempt = set(no_decay_parameter_names(model, train_cfg.no_decay_keys))
    split_backbone = train_cfg.backbone_lr_mult != 1.0
    groups: Dict[Tuple[bool, bool], List[Tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_backbone = split_backbone and name.startswith(BACKBONE_PREFIX)
            groups.setdefault((name in exempt, in_backbone), []).append((name, p))
    result = []
    for exempt_group in (False, True):
        for in_backbone in (False, True):
            members = groups.get((exempt_group, in_backbone))
            if not members:
                continue
            group: Dict[str, Any] = {"params": [p for _, p in members], "names": [n for n, _ in members],
                                     "weight_decay": 0.0 if exempt_group else train_cfg.weight_decay}
            if split_backbone:
                group["lr"] = train_cfg.lr * (train_cfg.backbone_lr_mult if in_backbone else 1.0)
            result.append(group)
    return result


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the recipe's lr, betas and (grouped) weight decay; PyTorch's fused kernel when
    every parameter is on the CPU or a CUDA device (the same update to float rounding, several
    times faster than the per-tensor loop)."""
    groups = build_param_groups(model, train_cfg)
    for group in groups:
        group.pop("names")
    fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas),
                             weight_decay=train_cfg.weight_decay, fused=fused or None)


def epochs_to_iterations(train_cfg: TrainConfig, num_images: int, world_size: int = 1
                         ) -> Tuple[TrainConfig, Optional[str]]:
    """An epoch-based schedule (``epochs``, ``milestone_epochs``) as iterations, for a training
    set of ``num_images`` and a total batch of ``batch_size x world_size`` images: one epoch is
    ``ceil(num_images / total batch)`` iterations, the run ``epochs`` of them and the lr drops
    after each milestone epoch. Returns the iteration-based config (``epochs`` cleared) and a
    line saying what was converted; an iteration-based config comes back as it is, with None."""
    if train_cfg.epochs is None:
        return train_cfg, None
    if train_cfg.epochs < 1:
        raise TrainingError(f"train.epochs must be at least 1, got {train_cfg.epochs}")
    if num_images < 1:
        raise TrainingError("an epoch-based schedule needs a non-empty training set")
    total_batch = train_cfg.batch_size * world_size
    per_epoch = math.ceil(num_images / total_batch)
    converted = dataclasses.replace(
        train_cfg, iters=train_cfg.epochs * per_epoch,
        milestones=tuple(e * per_epoch for e in train_cfg.milestone_epochs), epochs=None, milestone_epochs=())
    drops = ", ".join(str(m) for m in converted.milestones) or "none"
    note = (f"schedule: {train_cfg.epochs} epochs of {num_images} images at {total_batch} images per iteration "
            f"= {converted.iters} iterations ({per_epoch} per epoch); lr x{train_cfg.gamma:g} at iterations {drops}")
    return converted, note


def lr_factor(iteration: int, train_cfg: TrainConfig) -> float:
    """The multiplier of the base lr at 0-based ``iteration``: linear warm-up from
    ``warmup_ratio`` over ``warmup_iters`` iterations, then ``gamma`` at each milestone passed.

    With the reference's recipe: 0.001 at 0, 0.999001 at 999, 1 from 1000 to 59999, 0.1 from
    60000 to 71999, 0.01 from 72000.
    """
    factor = 1.0
    if iteration < train_cfg.warmup_iters:
        ratio = train_cfg.warmup_ratio
        factor = ratio + (1.0 - ratio) * iteration / train_cfg.warmup_iters
    passed = sum(1 for m in train_cfg.milestones if iteration >= m)
    return factor * train_cfg.gamma ** passed


class WarmupStepSchedule:
    """Sets each parameter group's lr to ``base_lr * lr_factor(iteration)`` (closed form, so it
    holds exactly after a resume). ``state_dict`` / ``load_state_dict`` carry the base lrs."""

    def __init__(self, optimizer: torch.optim.Optimizer, train_cfg: TrainConfig) -> None:
        self.optimizer = optimizer
        self.train_cfg = train_cfg
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.iteration = 0

    def lr_at(self, iteration: int) -> List[float]:
        factor = lr_factor(iteration, self.train_cfg)
        return [base * factor for base in self.base_lrs]

    def apply(self, iteration: int) -> float:
        """Set the lrs for ``iteration``; returns the first group's lr."""
        self.iteration = iteration
        lrs = self.lr_at(iteration)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        return lrs[0]

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        base_lrs = [float(v) for v in state["base_lrs"]]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise CheckpointError(
                f"the checkpoint's schedule has {len(base_lrs)} parameter groups, the optimizer "
                f"{len(self.optimizer.param_groups)} (was the model or no_decay_keys changed?)")
        self.base_lrs = base_lrs
        self.iteration = int(state.get("iteration", 0))


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                  clip_grad_norm: Optional[float], scaler: Optional[Any] = None) -> float:
    """Back-propagate ``loss``, clip the gradients of ``params`` to a total L2 norm of
    ``clip_grad_norm`` (None or <= 0: no clipping) and step. With a GradScaler (fp16) the loss
    is scaled and the gradients unscaled before clipping. Returns the total gradient norm
    before clipping (inf/nan when fp16 overflowed and the scaler skipped the step)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad_norm is not None and clip_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
    else:
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        norm = float(torch.stack(grads).norm()) if grads else 0.0
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm

"""The reference's optimisation recipe: AdamW parameter groups (the Swin presets exempt
normalisation weights and position tables from weight decay), the warm-up + step lr schedule
in closed form, and one clipped (optionally loss-scaled) optimizer step.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError

__all__ = [
    "WarmupStepSchedule",
    "backward_step",
    "build_optimizer",
    "build_param_groups",
    "lr_factor",
    "no_decay_parameter_names",
]


def no_decay_parameter_names(model: nn.Module, keys: Sequence[str]) -> List[str]:
    """Names of the trainable parameters that get no weight decay: those whose name contains one
    of ``keys`` (the reference's rule; knet's parameter names equal the reference's keys)."""
    return [name for name, p in model.named_parameters()
            if p.requires_grad and any(key in name for key in keys)]


def build_param_groups(model: nn.Module, train_cfg: TrainConfig) -> List[Dict[str, Any]]:
    """AdamW parameter groups: one with the recipe's weight decay and, when ``no_decay_keys`` is
    set, one with weight decay 0 for the exempt parameters. Each group records its parameter
    names under ``"names"`` (informative; the optimizer ignores it)."""
    exempt = set(no_decay_parameter_names(model, train_cfg.no_decay_keys))
    decay: List[Tuple[str, nn.Parameter]] = []
    no_decay: List[Tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append((name, p))
    groups = [{"params": [p for _, p in decay], "names": [n for n, _ in decay],
               "weight_decay": train_cfg.weight_decay}]
    if no_decay:
        groups.append({"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay],
                       "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the recipe's lr, betas and (grouped) weight decay."""
    groups = build_param_groups(model, train_cfg)
    for group in groups:
        group.pop("names")
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas),
                             weight_decay=train_cfg.weight_decay)


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

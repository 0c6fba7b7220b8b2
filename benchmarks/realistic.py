"""Weights that behave like a trained model's for timing: freshly initialised networks never
produce the denormal floats that trained ones do (see docs/numerics.md)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def make_realistic(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: BatchNorm/LayerNorm/GroupNorm statistics and affines drawn as a trained network's
    look (running mean N(0, 0.1), variance U(0.5, 1.5), weight U(0.5, 1.5), bias N(0, 0.1)), zero
    biases made N(0, 0.02), and Swin's relative position bias tables N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor: torch.Tensor, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    def uniform(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm)):
            if getattr(module, "running_mean", None) is not None:
                normal(module.running_mean, 0.1)
                uniform(module.running_var, 0.5, 1.5)
            if getattr(module, "weight", None) is not None:
                uniform(module.weight, 0.5, 1.5)
                normal(module.bias, 0.1)
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
            if not module.bias.any():
                normal(module.bias, 0.02)
    for name, parameter in model.named_parameters():
        if "relative_position_bias_table" in name:
            normal(parameter.data, 0.1)
    return model

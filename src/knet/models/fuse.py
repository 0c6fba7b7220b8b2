"""Inference-only rewrites of a model that keep its outputs (up to float rounding) and save time.

:func:`fold_batch_norms` folds every BatchNorm2d that directly follows a plain ``nn.Conv2d`` into
that convolution (eval-mode statistics: ``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g /
sqrt(var + eps) + beta``) and replaces it with ``nn.Identity``: one pass over the feature map
instead of two. It changes the model it is given, so callers fold a copy
(:func:`inference_copy`): a user's model is never changed behind their back.

The pairs are found by the layout knet's modules use: ``(conv, bn)`` and ``(convN, bnN)`` children
of one module (``ConvBNReLU``, ResNet's blocks and stem), and a ``Conv2d`` followed by a
``BatchNorm2d`` in an ``nn.Sequential`` (ResNet's deep stem and downsampling). A deformable
convolution is never folded (its offsets come from its own input).

On the CPU, :func:`inference_copy` also computes the copy's wide 3x3 convolutions with Winograd's
algorithm (:mod:`knet.models.winograd`).
"""
from __future__ import annotations

import copy
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from .winograd import WinogradConv2d, use_winograd


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval-mode statistics) into ``conv``'s weight and bias, in place."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        new_bias = ((bias - bn.running_mean) * scale + shift).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.data.copy_(new_bias)


def _pairs(module: nn.Module) -> Iterator[Tuple[str, str]]:
    """(conv child name, bn child name) pairs directly inside ``module``."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        for first, second in zip(names, names[1:]):
            yield first, second
        return
    for name in children:
        if name.startswith("bn"):
            yield "conv" + name[2:], name


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every BatchNorm2d that follows a plain Conv2d into it, in place; returns how many.

    Only for inference: the model must be in eval mode (its BatchNorms' running statistics are
    what gets folded)."""
    if model.training:
        raise ValueError("fold_batch_norms folds eval-mode statistics: call model.eval() first")
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in list(_pairs(module)):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if (type(conv) in (nn.Conv2d, WinogradConv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                _fold(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def inference_copy(model: nn.Module, winograd: bool = True, compute_dtype: Optional[torch.dtype] = None,
                   channels_last: Optional[bool] = None) -> nn.Module:
    """A copy of ``model`` in eval mode with its BatchNorms folded (``model`` is left as it is).

    With ``winograd``, a float32 model on the CPU also gets its wide 3x3 convolutions as
    :class:`~knet.models.winograd.WinogradConv2d` (half the time of the direct ones there).
    ``channels_last``: the copy's layout; None: :func:`prefers_channels_last`. Inputs of a
    channels-last copy are best given channels-last too (:class:`~knet.inference.pipeline.TorchRunner`
    does that).

    With ``compute_dtype`` (bfloat16 or float16, for a run under autocast in that dtype) the
    convolutions' and linear layers' weights are stored in it, so autocast does not convert them
    on every call, and the copy is channels-last, the layout of oneDNN's fast low-precision
    kernels (three times faster than contiguous in bfloat16); no Winograd (it is float32 only)."""
    clone = copy.deepcopy(model).eval()
    fold_batch_norms(clone)
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    parameters = list(clone.parameters())
    if channels_last is None:
        channels_last = prefers_channels_last(model, compute_dtype)
    if compute_dtype is not None:
        for module in clone.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.to(compute_dtype)
    elif winograd and parameters and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in parameters):
        use_winograd(clone, freeze=True)
    return clone.to(memory_format=torch.channels_last) if channels_last else clone


def prefers_channels_last(model: nn.Module, compute_dtype: Optional[torch.dtype] = None) -> bool:
    """Whether an inference copy of ``model`` runs channels-last by default: in low precision
    (``compute_dtype``), or when its backbone ``prefers_channels_last`` (ResNets, faster so on the
    CPU in float32; Swin, slower so)."""
    backbone = getattr(model, "backbone", None)
    return compute_dtype is not None or bool(getattr(backbone, "prefers_channels_last", False))


__all__ = ["fold_batch_norms", "inference_copy", "prefers_channels_last"]

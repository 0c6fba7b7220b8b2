"""Small building blocks shared by the backbones and heads."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class ConvBNReLU(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU. Attribute names ``conv``/``bn`` match the
    reference's ConvModule so checkpoints map one to one."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 dilation: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def resize(x: torch.Tensor, size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (N,C,H,W) to ``size`` (H,W); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if (torch.compiler.is_dynamo_compiling() and not torch.compiler.is_exporting()
            and not (torch.is_grad_enabled() and x.requires_grad)):
        return resize_bilinear(x, size[0], size[1], align_corners)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def memory_layout(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for an (N, C, H, W) tensor laid out so (and not also contiguous),
    else ``torch.contiguous_format``: the layout an operator's output keeps."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.library.custom_op("knet::resize_bilinear", mutates_args=())
def resize_bilinear(x: torch.Tensor, height: int, width: int, align_corners: bool) -> torch.Tensor:
    """:func:`resize` as one operator, which ``torch.compile`` calls as it is (inference only: no
    gradient): ATen's bilinear kernel is faster than the ones Inductor generates for it."""
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=align_corners)
    return out.contiguous(memory_format=memory_layout(x))


@resize_bilinear.register_fake
def _(x: torch.Tensor, height: int, width: int, align_corners: bool) -> torch.Tensor:
    return torch.empty((x.shape[0], x.shape[1], height, width), dtype=x.dtype, device=x.device,
                       memory_format=memory_layout(x))


class DropPath(nn.Module):
    """Stochastic depth: drop whole residual branches per sample during training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


class _RunningStatisticsKept:
    """While a block's forward is recomputed for its backward pass: its BatchNorms normalise with
    the batch's statistics as before but leave their running statistics (and batch counts) as
    the first forward left them, so a recomputed block updates them once, like any other."""

    def __init__(self, block: nn.Module) -> None:
        self.norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      and m.training and m.track_running_stats]
        self.saved: list = []

    def __enter__(self) -> None:
        self.saved = [(m.momentum, m.num_batches_tracked.clone()) for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged

    def __exit__(self, *exc) -> None:
        for m, (momentum, count) in zip(self.norms, self.saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def run_block(block: nn.Module, recompute: bool, *inputs):
    """``block(*inputs)``; with ``recompute``, when training with gradients, the block keeps
    only its inputs for the backward pass and recomputes its activations there
    (``torch.utils.checkpoint``, as mmsegmentation's ``with_cp``): less memory for one more
    forward of the block. Values, gradients and BatchNorm statistics are those of a plain call."""
    if not (recompute and block.training and torch.is_grad_enabled()):
        return block(*inputs)
    return checkpoint(block, *inputs, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _RunningStatisticsKept(block)))


def _identity(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t.shape, t.stride(), t.dtype, t.device


@contextmanager
def rebuilt_for_backward(tensor: torch.Tensor, rebuild: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Within the block, an operation that saves ``tensor`` for its backward pass keeps nothing of
    it: the backward pass calls ``rebuild()`` (without gradients) for an equal tensor instead.
    For a large tensor that is cheap to make again from smaller ones that are kept anyway (an
    upsampled concatenation): less memory between the forward and backward passes, the same
    values and gradients. Other saved tensors are kept as usual."""
    forgotten = object()
    identity = _identity(tensor)  # not the tensor itself: autograd keeps these hooks with the graph

    def pack(saved: torch.Tensor):
        return forgotten if _identity(saved) == identity else saved

    def unpack(packed):
        if packed is not forgotten:
            return packed
        with torch.no_grad():
            return rebuild()

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield

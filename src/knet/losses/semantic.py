"""Semantic K-Net's losses: a pixel-wise cross-entropy on every prediction, as the reference.

The reference upsamples each prediction's (N, C, h, w) logits bilinearly to the label size and
takes a cross-entropy there: five times per training step (four decode stages and the auxiliary
head), each materialising (N, C, H, W) upsampled logits, their log-probabilities and, backwards,
as many gradients -- at 150 classes, batch 2 and 512 x 512 labels 315 MB per tensor, and about a
third of a CPU training step. :func:`pixel_cross_entropy` computes the same value and gradient
in bands of label rows (:class:`_ChunkedUpsampleCrossEntropy`): each band upsamples only the
low-resolution rows it needs, takes its log-sum-exp and label logit, and backwards recomputes
the band and applies the adjoint of the upsampling, so that no full-resolution tensor larger
than a band ever exists. :func:`pixel_cross_entropy_reference` is the plain computation the tests compare it with.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..models.layers import resize
from ..models.outputs import KNetOutput

# Elements of one band's (N, C, rows, W) upsampled logits: 4 Mi float32 = 16 MiB, about the size
# of a shared CPU cache, so that a band is still cached when its log-sum-exp and label logit read
# it again (and large enough that a band is a few big kernels on an accelerator, not many small).
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, C, h, w), got shape {tuple(logits.shape)}")
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be (N, H, W) with the logits' N={logits.shape[0]}, got shape "
                         f"{tuple(labels.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")


def pixel_cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                                  align_corners: bool = False) -> torch.Tensor:
    """The plain computation of :func:`pixel_cross_entropy`: upsample logits (N, C, h, w) to the
    labels' (N, H, W) as a whole, then ``F.cross_entropy``. Kept as the tests' reference."""
    _check_inputs(logits, labels)
    logits = resize(logits, labels.shape[1:], align_corners)
    loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none")
    return loss.mean()


Weights = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def linear_weights(in_size: int, out_size: int, align_corners: bool, device: Optional[torch.device] = None) -> Weights:
    """The source indices and weights of ``F.interpolate``'s bilinear sampling along one axis,
    from ``in_size`` to ``out_size`` samples: ``out[y] = w0[y] * x[i0[y]] + w1[y] * x[i1[y]]``.

    They are read off ``F.interpolate`` itself on ``device`` (the identity's ``in_size`` rows,
    resized along the height with a width of 1, which is copied), so that they are that device's
    kernel's weights to the last bit: ATen's CPU kernel rounds the source coordinate differently
    from the textbook ``(y + 0.5) * in / out - 0.5`` in float32 (by an ulp, e.g. 17 -> 65), and
    another device's kernel may round it differently again.

    Returns:
        ``i0``, ``i1``: int64 (out_size,) on the CPU, ``i0 <= i1 <= i0 + 1``, both non-decreasing;
        ``w0``, ``w1``: float32 (out_size,) on the CPU (``w1`` is 0 where ``i1 == i0``).
    """
    eye = torch.eye(in_size, dtype=torch.float32, device=device).view(1, in_size, in_size, 1)
    table = F.interpolate(eye, size=(out_size, 1), mode="bilinear", align_corners=align_corners)
    table = table[0, :, :, 0].t().cpu()  # (out_size, in_size): row y holds output y's weights
    nonzero = table != 0
    positions = torch.arange(in_size).expand_as(table)
    i0 = torch.where(nonzero, positions, in_size).min(dim=1).values
    i1 = torch.where(nonzero, positions, -1).max(dim=1).values
    if bool((i1 - i0 > 1).any()) or bool((i0 > i1).any()):
        raise RuntimeError(f"bilinear resize {in_size} -> {out_size}: expected at most two adjacent source "
                           "samples per output sample")
    w0 = table.gather(1, i0.unsqueeze(1)).squeeze(1)
    w1 = torch.where(i1 > i0, table.gather(1, i1.unsqueeze(1)).squeeze(1), torch.zeros_like(w0))
    return i0, i1, w0, w1


def _taps(weights: Weights) -> Tuple[torch.Tensor, torch.Tensor]:
    """A 1-D resize as ``F.embedding_bag`` bags: (out_size, 2) source indices and their weights
    (``out = embedding_bag(indices, x, per_sample_weights=weights, mode="sum")``, x (in_size, M))."""
    i0, i1, w0, w1 = weights
    return torch.stack([i0, i1], 1), torch.stack([w0, w1], 1)


def _adjoint_taps(weights: Weights, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transpose of a 1-D resize restricted to the source samples ``[start, stop)``, as
    ``F.embedding_bag`` bags with offsets: for each of those source samples, the output samples
    that read it and with which weights (``grad_x = embedding_bag(outputs, grad_out, offsets,
    per_sample_weights=taps, mode="sum")``; a source sample nobody reads gets an empty bag, 0)."""
    i0, i1, w0, w1 = weights
    outputs = torch.arange(i0.numel()).repeat(2)
    sources, taps = torch.cat([i0, i1]), torch.cat([w0, w1])
    order = torch.argsort(sources, stable=True)
    sources, outputs, taps = sources[order], outputs[order], taps[order]
    offsets = torch.searchsorted(sources, torch.arange(start, stop))
    return outputs, offsets, taps


def _per_column(indices: torch.Tensor, columns: int, stride: int) -> torch.Tensor:
    """``indices`` repeated for each of ``columns`` blocks of ``stride`` rows, shifted into the
    block: ``column * stride + indices``, column-major (column outermost), flattened over the
    column and the first dimension of ``indices``."""
    shift = (torch.arange(columns) * stride).view(-1, *([1] * indices.dim()))
    return (indices.unsqueeze(0) + shift).flatten(0, 1)


class _ChunkedUpsampleCrossEntropy(torch.autograd.Function):
    """``mean(cross_entropy(bilinear_upsample(logits), labels))`` in bands of label rows.

    The logits are laid out (w, h, N, C): columns outermost, classes innermost. Each band of R
    output rows ``[y0, y1)`` is computed in two separable steps that gather whole contiguous
    (N, C) or (R, N, C) slabs with ``F.embedding_bag`` (two weighted taps per output sample, summed
    in ATen's order): along the height into (w, R, N, C) at the low width (a fraction of the
    work), then along the width into the band's (W, R, N, C) logits. ATen's bilinear kernels,
    which could do the second step, are no faster than the full upsampling and their backward is
    several times slower; ``embedding_bag`` and its transpose (bags with offsets) are some 3-4x
    faster. From the band come the log-sum-exp over the (contiguous) classes and the label's
    logit, written into (W, H, N) maps; the loss is their difference summed over labelled pixels.
    The log-sum-exp is kept for the backward pass, which recomputes each band, forms
    ``softmax - one_hot`` at labelled pixels and applies the adjoints of both steps, accumulating
    into the gradient of the logits (bands share the low-resolution rows at their borders). Every
    per-pixel map is made once per call, not per band: on a CPU shared with other work each
    multi-threaded operation can wait for a descheduled thread, so the bands use few of them.
    """

    @staticmethod
    def _bands(labels: torch.Tensor, channels: int, height: int, width: int,
               chunk_elements: int) -> List[Tuple[int, int]]:
        """``[y0, y1)`` of each band: as many rows as keep (N, C, rows, W) within ``chunk_elements``."""
        n = labels.shape[0]
        rows = max(1, chunk_elements // max(1, n * channels * width))
        return [(y0, min(height, y0 + rows)) for y0 in range(0, height, rows)]

    @staticmethod
    def _band(src: torch.Tensor, row_taps: Tuple[torch.Tensor, torch.Tensor],
              column_taps: Tuple[torch.Tensor, torch.Tensor], y0: int, y1: int) -> torch.Tensor:
        """The band's upsampled logits (W, R, N, C) from ``src`` (w, h, N, C)."""
        w, h, n, c = src.shape
        # each column's R bags read that column's h rows of src (w * h, N * C)
        indices = _per_column(row_taps[0][y0:y1], w, h).to(src.device)
        weights = row_taps[1][y0:y1].repeat(w, 1).to(src.device)
        low = F.embedding_bag(indices, src.view(w * h, n * c), per_sample_weights=weights, mode="sum")  # (w * R, N * C)
        indices, weights = column_taps
        out = F.embedding_bag(indices, low.view(w, -1), per_sample_weights=weights, mode="sum")
        return out.view(-1, y1 - y0, n, c)

    @staticmethod
    def _targets(labels: torch.Tensor, ignore_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The labelled-pixel mask and the class indices (0 where ignored), (W, H, N, 1)."""
        target = labels.permute(2, 1, 0).unsqueeze(3)
        valid = target != ignore_index
        return valid, torch.where(valid, target, torch.zeros_like(target))

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, align_corners: bool,
                chunk_elements: int) -> torch.Tensor:
        n, c, h, w = logits.shape
        height, width = labels.shape[1:]
        # One check of the labels (one synchronisation on an accelerator), as F.cross_entropy's.
        wrong = (labels != ignore_index) & ((labels < 0) | (labels >= c))
        if bool(wrong.any()):
            raise ValueError(f"label {int(labels[wrong][0])} is neither a class index in [0, {c}) nor the "
                             f"ignore index {ignore_index}")
        dev = logits.device
        src = logits.detach().float().permute(3, 2, 0, 1).contiguous()  # (w, h, N, C)
        row_taps = _taps(linear_weights(h, height, align_corners, dev))  # CPU: sliced per band
        column_taps = tuple(t.to(dev) for t in _taps(linear_weights(w, width, align_corners, dev)))
        valid, index = _ChunkedUpsampleCrossEntropy._targets(labels, ignore_index)
        lse = src.new_empty((width, height, n, 1))
        picked = src.new_empty((width, height, n, 1))
        for y0, y1 in _ChunkedUpsampleCrossEntropy._bands(labels, c, height, width, chunk_elements):
            out = _ChunkedUpsampleCrossEntropy._band(src, row_taps, column_taps, y0, y1)
            torch.gather(out, 3, index[:, y0:y1], out=picked[:, y0:y1])
            # log-sum-exp over the classes, in place in the band
            peak = out.amax(dim=3, keepdim=True)
            torch.sum(out.sub_(peak).exp_(), dim=3, keepdim=True, out=lse[:, y0:y1])
            lse[:, y0:y1].log_().add_(peak)
        # Ignored pixels add 0 but still count in the mean (the reference's reduction); the sum in
        # float64 (MPS has none: float32 there).
        total = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum(
            dtype=torch.float32 if dev.type == "mps" else torch.float64)
        ctx.save_for_backward(logits, labels, lse)
        ctx.ignore_index, ctx.align_corners, ctx.chunk_elements = ignore_index, align_corners, chunk_elements
        return (total / (n * height * width)).float()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        n, c, h, w = logits.shape
        height, width = labels.shape[1:]
        dev = logits.device
        src = logits.detach().float().permute(3, 2, 0, 1).contiguous()  # (w, h, N, C)
        heights = linear_weights(h, height, ctx.align_corners, dev)
        widths = linear_weights(w, width, ctx.align_corners, dev)
        row_taps = _taps(heights)
        column_taps = tuple(t.to(dev) for t in _taps(widths))
        columns, column_offsets, column_weights = (t.to(dev) for t in _adjoint_taps(widths, 0, w))
        valid, index = _ChunkedUpsampleCrossEntropy._targets(labels, ctx.ignore_index)
        scale = valid.float().mul_(grad.float() / (n * height * width))  # (W, H, N, 1)
        grad_src = torch.zeros_like(src)
        for y0, y1 in _ChunkedUpsampleCrossEntropy._bands(labels, c, height, width, ctx.chunk_elements):
            rows = y1 - y0
            out = _ChunkedUpsampleCrossEntropy._band(src, row_taps, column_taps, y0, y1)
            # d(lse - logit[label]) / d logits = softmax - one_hot(label), 0 at ignored pixels.
            prob = out.sub_(lse[:, y0:y1]).exp_()
            prob.scatter_add_(3, index[:, y0:y1], torch.full(index[:, y0:y1].shape, -1.0, device=dev))
            prob.mul_(scale[:, y0:y1])
            # The adjoint of the width step, (W, R, N, C) -> (w, R, N, C), then of the height step
            # into the low-resolution rows [a, b) the band read, (w, b - a, N, C).
            grad_low = F.embedding_bag(columns, prob.view(width, -1), column_offsets,
                                       per_sample_weights=column_weights, mode="sum")
            band = tuple(t[y0:y1] for t in heights)
            a, b = int(band[0][0]), int(band[1][-1]) + 1  # the weights live on the CPU: no synchronisation
            sources, offsets, taps = _adjoint_taps(band, a, b)
            # each column's b - a bags read that column's R rows of grad_low (w * R, N * C)
            offsets = _per_column(offsets, w, sources.numel()).to(dev)
            sources, taps = _per_column(sources, w, rows).to(dev), taps.repeat(w).to(dev)
            grad_src[:, a:b] += F.embedding_bag(sources, grad_low.view(w * rows, n * c), offsets,
                                                per_sample_weights=taps, mode="sum").view(w, b - a, n, c)
        return grad_src.permute(2, 3, 1, 0).contiguous().to(logits.dtype), None, None, None, None


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                        align_corners: bool = False, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Cross-entropy of logits (N, C, h, w), upsampled bilinearly to the labels (N, H, W).

    As the reference: the mean over ALL pixels of the batch, ignored pixels included (as 0).
    Computed in float32 in bands of about ``chunk_elements`` upsampled logits
    (:class:`_ChunkedUpsampleCrossEntropy`): the value and gradient of
    :func:`pixel_cross_entropy_reference` to float rounding, without its (N, C, H, W) tensors.
    A label outside ``[0, C)`` that is not ``ignore_index`` is a ``ValueError``.
    """
    _check_inputs(logits, labels)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be at least 1, got {chunk_elements}")
    if labels.numel() == 0 or logits.shape[1] == 0 or logits.device.type not in ("cpu", "cuda"):
        # Nothing to band; or a device (MPS, ...) whose embedding_bag the banded loss is not tested on.
        return pixel_cross_entropy_reference(logits, labels, ignore_index, align_corners)
    # The reference's cross-entropy runs in float32 under autocast too: keep autocast from
    # lowering the precision of the band computations.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _ChunkedUpsampleCrossEntropy.apply(logits, labels.long(), ignore_index, align_corners, chunk_elements)


def semantic_losses(output: KNetOutput, labels: torch.Tensor, ignore_index: int, aux_weight: float,
                    align_corners: bool = False) -> Dict[str, torch.Tensor]:
    """The named losses of a semantic K-Net forward pass.

    Args:
        output: the model's outputs with every stage (``mask_logits`` are class logits).
        labels: (N, H, W) int64 class indices, ``ignore_index`` where not trained on.
        aux_weight: weight of the auxiliary head's loss (applied here).

    Returns:
        ``decode.loss_ce.s0`` (the kernel-generate head) .. ``decode.loss_ce.sS`` (each stage) and,
        when the output has auxiliary logits, ``aux.loss_ce``; their sum is the objective.
    """
    losses = {f"decode.loss_ce.s{i}": pixel_cross_entropy(logits, labels, ignore_index, align_corners)
              for i, logits in enumerate(output.mask_logits)}
    if output.aux_logits is not None:
        losses["aux.loss_ce"] = aux_weight * pixel_cross_entropy(output.aux_logits, labels, ignore_index,
                                                                 align_corners)
    return losses

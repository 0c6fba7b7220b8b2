"""The elementary losses of K-Net's panoptic/instance heads (mmdet 2.x semantics).

- :func:`sigmoid_focal_loss`: class loss of the kernels and the kernel head's semantic loss;
  a label equal to the number of classes means "background" (all-zero one-hot target).
- :func:`mask_bce_loss`: per-pixel binary cross-entropy of positive kernels' masks.
- :func:`dice_loss`: 1 - dice of positive kernels' masks.
- :func:`build_rank_targets` / :func:`rank_loss`: per pixel, a softmax over the kernels must pick
  the kernel whose target covers that pixel (panoptic only).
- :func:`accuracy`: top-1 accuracy in percent (the ``pos_acc`` log value).

Reductions divide by ``avg_factor + eps`` (eps = float32 machine epsilon) where mmdet does, so
values match the official ones to float rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .semantic import pixel_cross_entropy

# mmdet's weight_reduce_loss adds this to avg_factor to avoid a division by zero.
_AVG_EPS = torch.finfo(torch.float32).eps


# Rows of a (P, C) focal loss whose intermediates exist at a time (about 4 MB of each at C = 133).
_FOCAL_CHUNK_ELEMENTS = 2 ** 20


def _focal_terms(logits: Tensor, target: Tensor, alpha: float, gamma: float, grad: bool) -> Tensor:
    """The focal loss of each (sample, class), or its derivative by the logit (``grad``):
    ``a pt^g bce`` with ``pt`` the probability of the wrong answer and ``a`` the class balance;
    d/dx = ``a (g pt^(g-1) p (1-p) (1-2t) bce + pt^g (p - t))`` (``d pt / dx = p (1-p) (1-2t)``)."""
    prob = logits.sigmoid()
    # pt is the probability of the *wrong* answer: high for hard examples.
    pt = (1 - prob) * target + prob * (1 - target)
    balance = alpha * target + (1 - alpha) * (1 - target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if not grad:
        return bce * (balance * pt.pow(gamma))
    return balance * (gamma * pt.pow(gamma - 1) * prob * (1 - prob) * (1 - 2 * target) * bce
                      + pt.pow(gamma) * (prob - target))


class _SigmoidFocalTerms(torch.autograd.Function):
    """(P, C) focal terms with a backward written out, which keeps only the logits and labels:
    autograd's chain kept five (P, C) intermediates (0.4 GB for the kernel head's semantic loss
    of two 1088x800 images). Both passes go in bands of rows, so their temporaries stay small."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, weight: Optional[Tensor], alpha: float, gamma: float) -> Tensor:
        ctx.save_for_backward(logits, labels, weight)
        ctx.alpha, ctx.gamma = alpha, gamma
        return _SigmoidFocalTerms._bands(logits, labels, weight, alpha, gamma, grad=False)

    @staticmethod
    def backward(ctx, grad_terms: Tensor):
        logits, labels, weight = ctx.saved_tensors
        grad = _SigmoidFocalTerms._bands(logits, labels, weight, ctx.alpha, ctx.gamma, grad=True)
        return grad.mul_(grad_terms), None, None, None, None

    @staticmethod
    def _bands(logits: Tensor, labels: Tensor, weight: Optional[Tensor], alpha: float, gamma: float,
               grad: bool) -> Tensor:
        out = torch.empty_like(logits)
        num_classes = logits.shape[1]
        rows = max(1, _FOCAL_CHUNK_ELEMENTS // max(num_classes, 1))
        for start in range(0, logits.shape[0], rows):
            band = slice(start, start + rows)
            # One column more than classes so that the background label C lands in a dropped column.
            target = F.one_hot(labels[band], num_classes + 1)[:, :num_classes].to(logits.dtype)
            terms = _focal_terms(logits[band], target, alpha, gamma, grad)
            if weight is not None:
                terms = terms * (weight[band].view(-1, 1) if weight.dim() == 1 else weight[band])
            out[band] = terms
        return out


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, weight: Optional[Tensor] = None,
                       avg_factor: Optional[float | Tensor] = None, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss summed over classes and samples, divided by ``avg_factor``.

    Args:
        logits: (P, C) logits.
        labels: (P,) int64 in [0, C]; C means background (every class is a negative).
        weight: None, (P,) per-sample or (P, C) per-sample-and-class weights (constants: no
            gradient flows to them).
        avg_factor: the normaliser (e.g. number of positives); None averages over all P*C terms.
        alpha, gamma: focal parameters (0.25 and 2 in K-Net).
    Returns:
        scalar loss (not yet multiplied by a loss weight).
    """
    if weight is not None:
        weight = weight.detach()
    loss = _SigmoidFocalTerms.apply(logits, labels, weight, alpha, gamma)
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / (avg_factor + _AVG_EPS)


def mask_bce_loss(mask_logits: Tensor, mask_targets: Tensor) -> Tensor:
    """Mean per-pixel binary cross-entropy.

    Args:
        mask_logits: (P, H, W) logits of the positive kernels.
        mask_targets: (P, H, W) float targets in [0, 1] (soft targets are used as they are).
    Returns:
        scalar.
    """
    return F.binary_cross_entropy_with_logits(mask_logits, mask_targets.to(mask_logits.dtype))


def dice_loss(mask_logits: Tensor, mask_targets: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean over masks of 1 - 2 sum(p t) / ((sum(p^2) + eps) + (sum(t^2) + eps)), p = sigmoid(logits).

    Args:
        mask_logits: (P, H, W) logits of the positive kernels.
        mask_targets: (P, H, W) float targets.
    Returns:
        scalar.
    """
    prob = mask_logits.sigmoid().flatten(1)
    target = mask_targets.flatten(1).to(prob.dtype)
    intersection = (prob * target).sum(1)
    denominator = (prob * prob).sum(1) + eps + (target * target).sum(1) + eps
    return (1 - 2 * intersection / denominator).mean()


def build_rank_targets(positive_targets: Tensor, positive: Tensor, ignore_index: int = 255) -> Tensor:
    """Per pixel, the index of the kernel that has to win there.

    Positive kernels are visited in ascending index order and paint every pixel where their target
    is non-zero (soft borders included); a later kernel overwrites an earlier one where targets
    overlap, as in the official loop. Pixels no positive target covers get ``ignore_index``.

    Args:
        positive_targets: (P, H, W) float targets of the positive kernels, in the order of
            ``positive.nonzero()`` (image, then kernel index).
        positive: (B, K) bool, which kernels are positives (P of them).
    Returns:
        (B, H, W) int64.
    """
    height, width = positive_targets.shape[-2:]
    rank_targets = torch.full((positive.shape[0], height, width), ignore_index, dtype=torch.long,
                              device=positive_targets.device)
    for target, (image, kernel) in zip(positive_targets, positive.nonzero().tolist()):
        rank_targets[image][target != 0] = kernel
    return rank_targets


def rank_loss(mask_logits: Tensor, rank_targets: Tensor, ignore_index: int = 255) -> Tensor:
    """Cross-entropy of a per-pixel softmax over kernels against :func:`build_rank_targets`.

    As in mmdet 2.x's CrossEntropyLoss (``avg_non_ignore=False``), ignored pixels contribute zero
    but still count in the mean: the sum is divided by B * H * W. Logits coarser than the targets
    are upsampled bilinearly to them, in bands (:func:`~knet.losses.pixel_cross_entropy`), so that
    the (B, K, H, W) upsampled logits and their log-probabilities never exist.

    Args:
        mask_logits: (B, K, h, w) mask logits of all kernels, h <= H and w <= W.
        rank_targets: (B, H, W) int64 kernel index or ``ignore_index``.
    Returns:
        scalar.
    """
    return pixel_cross_entropy(mask_logits, rank_targets, ignore_index)


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy in percent; 0 when there are no samples.

    Args:
        logits: (P, C) class logits.
        labels: (P,) int64 class indices.
    Returns:
        scalar float tensor in [0, 100].
    """
    if logits.shape[0] == 0:
        return logits.new_tensor(0.0)
    correct = (logits.argmax(dim=1) == labels).sum()
    return correct.to(logits.dtype) * (100.0 / logits.shape[0])

"""Hungarian matching of K-Net's thing kernels to ground-truth instances.

Each kernel's mask (and, after the first update stage, its class scores) is compared with every
ground-truth thing; the cheapest one-to-one assignment (scipy's ``linear_sum_assignment``) decides
which kernels are positives and which instance each one has to predict. The costs follow the
official ``MaskHungarianAssigner`` (K-Net, mmdet 2.x):

    cost = 2 * focal_cost(cls)      (only when class logits are given)
         + 1 * mask_cost(sigmoid(mask))
         + 4 * dice_cost(sigmoid(mask))

(the default weights; a model config sets them in ``loss.cls_cost``, ``loss.mask_cost`` and
``loss.dice_cost``).

Every cost here is computed without gradients: matching is a discrete decision on detached
predictions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


def focal_cost(cls_logits: Tensor, gt_labels: Tensor, weight: float = 2.0, alpha: float = 0.25,
               gamma: float = 2.0, eps: float = 1e-12) -> Tensor:
    """Sigmoid focal-loss cost of giving each kernel each ground-truth label (mmdet's FocalLossCost).

    The cost is the focal loss of "positive for the gt class" minus the focal loss of "negative for
    it", so only the gt's own class column matters.

    Args:
        cls_logits: (N, C) class logits of N kernels (before the sigmoid).
        gt_labels: (M,) int64 class index of each ground truth, in [0, C).
    Returns:
        (N, M) weighted cost.
    """
    prob = cls_logits.sigmoid()
    neg_cost = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos_cost = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    return (pos_cost[:, gt_labels] - neg_cost[:, gt_labels]) * weight


def mask_cost(mask_logits: Tensor, gt_masks: Tensor, weight: float = 1.0) -> Tensor:
    """Negative mean pixel agreement between predicted probabilities and (soft) gt masks.

    cost[n, m] = -(sum(p_n * t_m) + sum((1 - p_n) * (1 - t_m))) / (H * W)

    Args:
        mask_logits: (N, H, W) mask logits; the sigmoid is applied here.
        gt_masks: (M, H, W) float gt masks in [0, 1] (soft at the borders after resizing).
    Returns:
        (N, M) weighted cost.
    """
    height, width = gt_masks.shape[-2:]
    prob = mask_logits.sigmoid().flatten(1)
    target = gt_masks.flatten(1).to(prob.dtype)
    agreement = prob @ target.T + (1 - prob) @ (1 - target).T
    return -agreement / (height * width) * weight


def dice_cost(mask_logits: Tensor, gt_masks: Tensor, weight: float = 4.0, eps: float = 1e-3) -> Tensor:
    """Negative dice coefficient of each predicted mask with each gt mask (K-Net's DiceCost).

    cost[n, m] = -2 * sum(p_n * t_m) / ((sum(p_n^2) + eps) + (sum(t_m^2) + eps))

    The constant 1 of the dice *loss* is left out: it does not change the matching.

    Args:
        mask_logits: (N, H, W) mask logits; the sigmoid is applied here.
        gt_masks: (M, H, W) float gt masks.
    Returns:
        (N, M) weighted cost.
    """
    prob = mask_logits.sigmoid().flatten(1)
    target = gt_masks.flatten(1).to(prob.dtype)
    numerator = 2 * (prob @ target.T)
    denominator = (prob.pow(2).sum(1) + eps)[:, None] + (target.pow(2).sum(1) + eps)[None, :]
    return -numerator / denominator * weight


@dataclass
class AssignResult:
    """Matching of N kernels to M ground truths in one image.

    Attributes:
        gt_inds: (N,) int64; 0 = background, j > 0 = matched to gt j - 1 (mmdet's convention).
        labels: (N,) int64; the matched gt's class, -1 for background kernels.
        cost: (N, M) the cost matrix that was minimised, or None when there was nothing to match.
    """

    gt_inds: Tensor
    labels: Tensor
    cost: Optional[Tensor] = None

    @property
    def pos_inds(self) -> Tensor:
        """(P,) indices of the matched kernels, ascending."""
        return torch.nonzero(self.gt_inds > 0).flatten()

    @property
    def pos_gt_inds(self) -> Tensor:
        """(P,) 0-based index of the gt each matched kernel (in ``pos_inds`` order) was given."""
        return self.gt_inds[self.pos_inds] - 1


class MaskHungarianAssigner:
    """One-to-one assignment of kernels to gt things minimising focal + mask + dice costs.

    Args:
        cls_weight: weight of the focal class cost (used only when class logits are passed).
        mask_weight: weight of :func:`mask_cost`.
        dice_weight: weight of :func:`dice_cost`.
        focal_alpha, focal_gamma: focal cost parameters.
    """

    def __init__(self, cls_weight: float = 2.0, mask_weight: float = 1.0, dice_weight: float = 4.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        self.cls_weight = cls_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(self, mask_logits: Tensor, cls_logits: Optional[Tensor], gt_masks: Tensor,
                    gt_labels: Tensor) -> Tensor:
        """Total matching cost.

        Args:
            mask_logits: (N, H, W) kernel mask logits at the gt masks' resolution.
            cls_logits: (N, C) class logits, or None (the kernel head and the first stage have no
                class prediction to match on).
            gt_masks: (M, H, W) float gt masks.
            gt_labels: (M,) int64 gt classes (< C).
        Returns:
            (N, M) cost.
        """
        if mask_logits.shape[-2:] != gt_masks.shape[-2:]:
            raise ValueError(f"mask logits {tuple(mask_logits.shape)} and gt masks {tuple(gt_masks.shape)} "
                             "must have the same spatial size")
        cost = mask_logits.new_zeros(mask_logits.shape[0], gt_masks.shape[0])
        if cls_logits is not None and self.cls_weight != 0:
            cost = cost + focal_cost(cls_logits, gt_labels, self.cls_weight, self.focal_alpha, self.focal_gamma)
        if self.mask_weight != 0:
            cost = cost + mask_cost(mask_logits, gt_masks, self.mask_weight)
        if self.dice_weight != 0:
            cost = cost + dice_cost(mask_logits, gt_masks, self.dice_weight)
        return cost

    @torch.no_grad()
    def assign(self, mask_logits: Tensor, cls_logits: Optional[Tensor], gt_masks: Tensor,
               gt_labels: Tensor) -> AssignResult:
        """Match N kernels to M gts (shapes as in :meth:`cost_matrix`); unmatched kernels are background."""
        num_kernels, num_gts = mask_logits.shape[0], gt_masks.shape[0]
        device = mask_logits.device
        gt_inds = torch.zeros(num_kernels, dtype=torch.long, device=device)
        labels = torch.full((num_kernels,), -1, dtype=torch.long, device=device)
        if num_gts == 0 or num_kernels == 0:
            return AssignResult(gt_inds, labels, None)

        cost = self.cost_matrix(mask_logits, cls_logits, gt_masks, gt_labels)
        from scipy.optimize import linear_sum_assignment  # imported here: scipy.optimize takes ~0.5 s to load

        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        rows = torch.as_tensor(rows, dtype=torch.long, device=device)
        cols = torch.as_tensor(cols, dtype=torch.long, device=device)
        gt_inds[rows] = cols + 1
        labels[rows] = gt_labels.to(device)[cols]
        return AssignResult(gt_inds, labels, cost)

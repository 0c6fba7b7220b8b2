"""Training losses: the semantic K-Net's pixel cross-entropies (:mod:`.semantic`) and the
panoptic/instance models' Hungarian matching and mask losses (``knet/det`` of the official code)."""
from __future__ import annotations

from .knet_det_loss import (DetTargets, KNetDetCriterion, batch_targets, prepare_targets, semantic_to_stuff_masks,
                            total_loss)
from .mask_losses import accuracy, build_rank_targets, dice_loss, mask_bce_loss, rank_loss, sigmoid_focal_loss
from .matching import AssignResult, MaskHungarianAssigner, dice_cost, focal_cost, mask_cost
from .semantic import pixel_cross_entropy, semantic_losses

__all__ = [
    "AssignResult",
    "DetTargets",
    "KNetDetCriterion",
    "MaskHungarianAssigner",
    "accuracy",
    "batch_targets",
    "build_rank_targets",
    "dice_cost",
    "dice_loss",
    "focal_cost",
    "mask_bce_loss",
    "mask_cost",
    "pixel_cross_entropy",
    "prepare_targets",
    "rank_loss",
    "semantic_losses",
    "semantic_to_stuff_masks",
    "sigmoid_focal_loss",
    "total_loss",
]

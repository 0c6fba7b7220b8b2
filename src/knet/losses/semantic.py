"""Semantic K-Net's losses: a pixel-wise cross-entropy on every prediction, as the reference."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from ..models.layers import resize
from ..models.outputs import KNetOutput


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                        align_corners: bool = False) -> torch.Tensor:
    """Cross-entropy of logits (N, C, h, w), upsampled bilinearly to the labels (N, H, W).

    As the reference: the mean over ALL pixels of the batch, ignored pixels included (as 0).
    """
    logits = resize(logits, labels.shape[1:], align_corners)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return loss.mean()


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

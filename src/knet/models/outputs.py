"""What a K-Net model returns: every prediction of its forward pass, and no losses.

As Hugging Face's ``ModelOutput``: a typed record with documented shapes. A task (see
:mod:`knet.tasks`) turns it into losses during training and into label maps, segments or instances
at inference; the model never knows which task it serves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class KNetOutput:
    """The predictions of one forward pass of a batch of N images.

    Attributes:
        mask_logits: one entry per prediction, the kernel-generate head's (or kernel head's)
            initial masks first, then one per kernel-update stage: (N, K, h, w) logits of the K
            kernels at the feature stride (semantic: K = num_classes and the masks are the class
            logits; panoptic: K = proposals + stuff classes; instance: K = proposals).
        cls_logits: as long as ``mask_logits``; (N, K, num_classes) classification logits of each
            kernel (sigmoid outputs), or None where that prediction has no class branch (every
            semantic prediction, the initial one of the panoptic/instance models).
        aux_logits: (N, num_classes, h', w') logits of the auxiliary head (semantic models
            trained with one), else None.
        semantic_logits: (N, num_classes, h, w) logits of the panoptic/instance kernel head's
            semantic branch (``conv_seg``), else None.
    """

    mask_logits: List[torch.Tensor]
    cls_logits: List[Optional[torch.Tensor]] = field(default_factory=list)
    aux_logits: Optional[torch.Tensor] = None
    semantic_logits: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if not self.cls_logits:
            self.cls_logits = [None] * len(self.mask_logits)
        if len(self.cls_logits) != len(self.mask_logits):
            raise ValueError(f"{len(self.cls_logits)} class predictions for {len(self.mask_logits)} mask predictions")

    @property
    def final_masks(self) -> torch.Tensor:
        """(N, K, h, w): the last stage's mask logits."""
        return self.mask_logits[-1]

    @property
    def final_classes(self) -> Optional[torch.Tensor]:
        """(N, K, num_classes): the last stage's class logits, or None."""
        return self.cls_logits[-1]

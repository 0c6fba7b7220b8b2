"""The full training loss of K-Net's panoptic and instance models (official ``knet/det``).

Where each piece comes from in the official code:

- ``ConvKernelHead.forward_train``/``loss`` (the kernel head, keys ``loss_rpn_*``): its N thing
  mask logits (stride 8) are upsampled x2 to stride 4, matched to the gt things with mask + dice
  costs, and trained with mask BCE, dice and (panoptic) rank losses; its semantic logits get a
  sigmoid focal loss against a per-pixel map of stuff and matched-thing classes.
- ``KernelIterHead.forward_train`` + ``KernelUpdateHead.loss`` (stage k, keys ``s{k}_*``): stage
  k's thing kernels are matched using the *previous* predictions (the kernel head's masks for
  stage 0, without a class cost; stage k-1's masks and thing-class logits after that). Stuff
  kernels (panoptic: rows N.. of every stage) are not matched: kernel N+s always stands for stuff
  class ``num_thing_classes + s``, positive when that class is in the image. Each stage gets a
  focal class loss over all kernels (normalised by the number of positives), ``pos_acc``, mask
  BCE and dice on positives, and (panoptic) the rank loss.

Targets are per image at stride 4 of the padded batch, as produced by :func:`prepare_targets`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mask_losses import (accuracy, build_rank_targets, dice_loss, mask_bce_loss, rank_loss,
                          sigmoid_focal_loss)
from .matching import AssignResult, MaskHungarianAssigner

# Rank-loss label of pixels no positive kernel covers: a kernel index, never a data label, so it
# is kept apart from ``data.ignore_index`` (with few classes that value can be a kernel's index).
RANK_IGNORE_INDEX = -1


@dataclass
class DetTargets:
    """Ground truth of one image at the loss resolution (stride 4 of the padded batch).

    Attributes:
        masks: (M, h, w) float thing masks, bilinearly resized (soft borders, not re-binarised).
        labels: (M,) int64 thing classes in [0, num_thing_classes).
        stuff_masks: (S, h, w) float stuff masks (panoptic only, else None).
        stuff_labels: (S,) int64 stuff classes in [num_thing_classes, num_classes) (panoptic only).
    """

    masks: Tensor
    labels: Tensor
    stuff_masks: Optional[Tensor] = None
    stuff_labels: Optional[Tensor] = None


def semantic_to_stuff_masks(sem_seg: Tensor, num_thing_classes: int = 80,
                            ignore_index: int = 255) -> Tuple[Tensor, Tensor]:
    """One binary mask per stuff class present in a semantic map (the official ``sem2ins_masks``).

    Args:
        sem_seg: (H, W) integer map; things are < num_thing_classes, ``ignore_index`` is void.
    Returns:
        labels (S,) int64 ascending, masks (S, H, W) float.
    """
    classes = [int(c) for c in torch.unique(sem_seg) if c != ignore_index and c >= num_thing_classes]
    labels = torch.tensor(classes, dtype=torch.long, device=sem_seg.device)
    if not classes:
        return labels, sem_seg.new_zeros((0, *sem_seg.shape[-2:]), dtype=torch.float32)
    masks = torch.stack([sem_seg == c for c in classes]).float()
    return labels, masks


def prepare_targets(gt_masks: Sequence[Tensor], gt_labels: Sequence[Tensor], batch_shape: Tuple[int, int],
                    gt_semantic_seg: Optional[Sequence[Tensor]] = None, num_thing_classes: int = 80,
                    assign_stride: int = 4, ignore_index: int = 255) -> List[DetTargets]:
    """Bring per-image annotations to the loss resolution, as the official ``KNet.forward_train``.

    Thing masks are zero-padded (right/bottom) to the batch shape and bilinearly resized
    (align_corners=False) to (H // stride, W // stride); stuff masks are taken from the semantic
    map (padded with ``ignore_index``) and resized the same way.

    Args:
        gt_masks: per image (M_i, H_i, W_i) binary thing masks (any dtype), H_i <= H, W_i <= W.
        gt_labels: per image (M_i,) int64 thing classes.
        batch_shape: (H, W) of the padded input batch.
        gt_semantic_seg: per image (H_i, W_i) or (1, H_i, W_i) semantic maps (stuff classes
            >= num_thing_classes), or None for instance segmentation.
    Returns:
        one :class:`DetTargets` per image.
    """
    pad_h, pad_w = batch_shape
    size = (pad_h // assign_stride, pad_w // assign_stride)

    def pad_and_resize(masks: Tensor) -> Tensor:
        masks = masks.float()
        if masks.shape[0] == 0:
            return masks.new_zeros((0, *size))
        masks = F.pad(masks, (0, pad_w - masks.shape[-1], 0, pad_h - masks.shape[-2]), value=0)
        return F.interpolate(masks[None], size, mode="bilinear", align_corners=False)[0]

    targets = []
    for i, (masks, labels) in enumerate(zip(gt_masks, gt_labels)):
        stuff_masks = stuff_labels = None
        if gt_semantic_seg is not None:
            sem_seg = gt_semantic_seg[i]
            sem_seg = sem_seg.reshape(sem_seg.shape[-2:])
            sem_seg = F.pad(sem_seg.long(), (0, pad_w - sem_seg.shape[-1], 0, pad_h - sem_seg.shape[-2]),
                            value=ignore_index)
            stuff_labels, stuff_masks = semantic_to_stuff_masks(sem_seg, num_thing_classes, ignore_index)
            stuff_masks = pad_and_resize(stuff_masks)
        targets.append(DetTargets(pad_and_resize(masks), labels.long(), stuff_masks, stuff_labels))
    return targets


class KNetDetCriterion(nn.Module):
    """Hungarian matching + every loss of K-Net's panoptic / instance training (official values).

    A model config's values are in its ``loss`` group (:class:`knet.config.MaskLossConfig`); the
    data's void label (``data.ignore_index``) is consumed earlier, by :func:`prepare_targets`.

    Args:
        num_thing_classes: thing classes (80 on COCO).
        num_stuff_classes: stuff classes (53 on COCO panoptic); ignored when ``panoptic`` is False.
        num_proposals: N, the number of thing kernels (rows 0..N-1 of every prediction).
        panoptic: True for the panoptic model (stuff kernels, stuff targets, rank losses).
        num_stages: number of kernel-update stages.
        stage_loss_weights: multiplier of every ``s{k}_*`` value (default 1 for every stage).
        cls_loss_weight, mask_loss_weight, dice_loss_weight, rank_loss_weight, seg_loss_weight:
            loss weights (2.0, 1.0, 4.0, 0.1, 1.0 in the official configs); the rank loss exists
            only in panoptic mode.
        cls_cost_weight, mask_cost_weight, dice_cost_weight: matching cost weights (2, 1, 4).
        focal_alpha, focal_gamma: focal loss / cost parameters.
        mask_upsample_stride: factor by which mask and semantic logits are bilinearly upsampled
            before matching and losses (2: stride 8 predictions against stride 4 targets; 1 when
            the caller already passes stride-4 logits).
        reduce_mean: averages a tensor across distributed ranks (the focal normaliser is the mean
            number of positives over ranks); identity by default.
    """

    def __init__(self, num_thing_classes: int = 80, num_stuff_classes: int = 53, num_proposals: int = 100,
                 panoptic: bool = True, num_stages: int = 3, stage_loss_weights: Optional[Sequence[float]] = None,
                 cls_loss_weight: float = 2.0, mask_loss_weight: float = 1.0, dice_loss_weight: float = 4.0,
                 rank_loss_weight: float = 0.1, seg_loss_weight: float = 1.0, cls_cost_weight: float = 2.0,
                 mask_cost_weight: float = 1.0, dice_cost_weight: float = 4.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, mask_upsample_stride: int = 2,
                 reduce_mean: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        super().__init__()
        self.num_thing_classes = num_thing_classes
        self.num_stuff_classes = num_stuff_classes if panoptic else 0
        self.num_classes = num_thing_classes + self.num_stuff_classes
        self.num_proposals = num_proposals
        self.panoptic = panoptic
        self.num_stages = num_stages
        self.stage_loss_weights = list(stage_loss_weights) if stage_loss_weights is not None else [1.0] * num_stages
        if len(self.stage_loss_weights) != num_stages:
            raise ValueError(f"{len(self.stage_loss_weights)} stage loss weights for {num_stages} stages")
        self.cls_loss_weight = cls_loss_weight
        self.mask_loss_weight = mask_loss_weight
        self.dice_loss_weight = dice_loss_weight
        self.rank_loss_weight = rank_loss_weight
        self.seg_loss_weight = seg_loss_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.mask_upsample_stride = mask_upsample_stride
        self.reduce_mean = reduce_mean if reduce_mean is not None else (lambda x: x)
        self.assigner = MaskHungarianAssigner(cls_cost_weight, mask_cost_weight, dice_cost_weight,
                                              focal_alpha, focal_gamma)

    # ------------------------------------------------------------------ helpers
    def upsample(self, logits: Tensor) -> Tensor:
        """(B, K, h, w) -> (B, K, h * s, w * s) bilinear (align_corners=False), s = mask_upsample_stride."""
        if self.mask_upsample_stride == 1:
            return logits
        return F.interpolate(logits, scale_factor=self.mask_upsample_stride, mode="bilinear", align_corners=False)

    def _check_resolution(self, preds: Tensor, targets: Sequence[DetTargets]) -> None:
        """(..., h, w) predictions at their stride, whose upsampling must give the targets' size."""
        upsampled = tuple(int(side * self.mask_upsample_stride) for side in preds.shape[-2:])
        expected = tuple(targets[0].masks.shape[-2:])
        if upsampled != expected:
            raise ValueError(f"upsampled predictions are {upsampled} but targets are {expected}: "
                             f"check mask_upsample_stride={self.mask_upsample_stride}")

    def _check_stuff_labels(self, targets: Sequence[DetTargets]) -> None:
        """A clear error for a semantic-map value that is neither a class nor the void label, which
        would otherwise fail as an index error deep in the losses."""
        for target in targets:
            if self.panoptic and target.stuff_labels is not None and len(target.stuff_labels):
                largest = int(target.stuff_labels.max())
                if largest >= self.num_classes:
                    raise ValueError(f"a semantic map holds the value {largest}, which is neither a class "
                                     f"(0..{self.num_classes - 1}) nor the void label; the maps' void value must "
                                     "be the ignore_index of prepare_targets (data.ignore_index)")

    def _assign_batch(self, mask_logits: Tensor, cls_logits: Optional[Tensor],
                      targets: Sequence[DetTargets]) -> List[AssignResult]:
        """Match the first N kernels of each image. mask_logits (B, K, h, w) at target resolution,
        cls_logits (B, K, C) or None."""
        results = []
        for i, target in enumerate(targets):
            cls = None if cls_logits is None else cls_logits[i, :self.num_proposals, :self.num_thing_classes]
            results.append(self.assigner.assign(mask_logits[i, :self.num_proposals].detach(),
                                                None if cls is None else cls.detach(), target.masks, target.labels))
        return results

    def _positives(self, assignments: Sequence[AssignResult], targets: Sequence[DetTargets], num_kernels: int,
                   with_stuff: bool) -> Tuple[Tensor, Tensor]:
        """The (B, K) int64 labels of the kernels (``num_classes`` for negatives) and the (P, h, w)
        float targets of the P positive ones, in the order of ``(labels < num_classes).nonzero()``
        (image, then kernel index): matched thing kernels get their gt mask; with ``with_stuff``,
        stuff kernel N + s gets its class's mask where the image holds that class."""
        labels = torch.full((len(targets), num_kernels), self.num_classes, dtype=torch.long,
                            device=targets[0].masks.device)
        positive_targets = []
        for i, (result, target) in enumerate(zip(assignments, targets)):
            pos = result.pos_inds
            labels[i, pos] = result.labels[pos]
            kernels, masks = [pos], [target.masks[result.pos_gt_inds]]
            if with_stuff and target.stuff_labels is not None and len(target.stuff_labels):
                rows = self.num_proposals + target.stuff_labels - self.num_thing_classes
                labels[i, rows] = target.stuff_labels
                kernels.append(rows)
                masks.append(target.stuff_masks)
            order = torch.argsort(torch.cat(kernels))
            positive_targets.append(torch.cat(masks)[order])
        return labels, torch.cat(positive_targets).float()

    def _mask_losses(self, mask_preds: Tensor, positive_targets: Tensor, positive: Tensor,
                     prefix: str) -> Dict[str, Tensor]:
        """Mask BCE, dice and (panoptic) rank losses of (B, K, h, w) mask logits at the predictions'
        stride: only the positive kernels' masks are upsampled to the (P, H, W) targets, and the
        rank loss upsamples all K in bands, so no (B, K, H, W) tensor is made."""
        losses = {}
        if positive.any():
            positive_logits = self.upsample(mask_preds[positive][None])[0]
            losses[f"{prefix}mask"] = self.mask_loss_weight * mask_bce_loss(positive_logits, positive_targets)
            losses[f"{prefix}dice"] = self.dice_loss_weight * dice_loss(positive_logits, positive_targets)
            if self.panoptic:
                rank_targets = build_rank_targets(positive_targets, positive, RANK_IGNORE_INDEX)
                losses[f"{prefix}rank"] = self.rank_loss_weight * rank_loss(mask_preds, rank_targets,
                                                                            RANK_IGNORE_INDEX)
        else:
            # Zero losses that still depend on the predictions, so every parameter gets a gradient.
            zero = mask_preds.sum() * 0
            losses[f"{prefix}mask"] = zero
            losses[f"{prefix}dice"] = zero
            if self.panoptic:
                losses[f"{prefix}rank"] = zero
        return losses

    # ------------------------------------------------------------------ public API
    def assign(self, rpn_mask_preds: Tensor, stage_mask_preds: Sequence[Tensor],
               stage_cls_scores: Sequence[Tensor], targets: Sequence[DetTargets]) -> Dict[str, List[AssignResult]]:
        """Hungarian assignments of the kernel head (``"rpn"``) and every stage (``"s0"``, ...).

        Stage k is matched on the predictions *entering* it: the kernel head's masks for stage 0
        (no class cost, so its assignment equals the kernel head's), stage k-1's masks and
        thing-class logits for k >= 1. Only the first N (thing) kernels are matched.

        Args:
            rpn_mask_preds: (B, K0, h, w) kernel-head mask logits, K0 >= N (panoptic models may
                append the stuff rows; only rows < N are used).
            stage_mask_preds: per stage (B, K, h, w) mask logits.
            stage_cls_scores: per stage (B, K, C) class logits.
            targets: per image :class:`DetTargets`.
        Returns:
            {"rpn": [AssignResult per image], "s0": [...], ...}.
        """
        self._check_resolution(rpn_mask_preds, targets)
        rpn_masks = self.upsample(rpn_mask_preds[:, :self.num_proposals].detach())
        assignments = {"rpn": self._assign_batch(rpn_masks, None, targets)}
        previous_masks, previous_cls = rpn_masks, None
        for stage in range(self.num_stages):
            assignments[f"s{stage}"] = self._assign_batch(previous_masks, previous_cls, targets)
            previous_masks = self.upsample(stage_mask_preds[stage][:, :self.num_proposals].detach())
            previous_cls = stage_cls_scores[stage].detach()
        return assignments

    def rpn_losses(self, rpn_mask_preds: Tensor, rpn_seg_preds: Tensor, assignments: Sequence[AssignResult],
                   targets: Sequence[DetTargets]) -> Dict[str, Tensor]:
        """``loss_rpn_mask``, ``loss_rpn_dice``, (panoptic) ``loss_rpn_rank`` and ``loss_rpn_seg``.

        Args:
            rpn_mask_preds: (B, K0, h, w) kernel-head mask logits (rows < N used), stride 8.
            rpn_seg_preds: (B, C, h, w) kernel-head semantic logits, stride 8.
            assignments: the kernel head's per-image assignments.
            targets: per image :class:`DetTargets`.
        """
        self._check_resolution(rpn_seg_preds, targets)
        seg_logits = self.upsample(rpn_seg_preds)
        labels, positive_targets = self._positives(assignments, targets, self.num_proposals, with_stuff=False)
        positive = labels < self.num_classes
        losses = self._mask_losses(rpn_mask_preds[:, :self.num_proposals], positive_targets, positive, "loss_rpn_")

        # Semantic target: background (num_classes), then stuff classes, then matched things on top,
        # each painting wherever its (soft) mask is non-zero; later kernels win overlaps.
        batch, num_channels = seg_logits.shape[:2]
        seg_targets = torch.full((batch, *seg_logits.shape[-2:]), self.num_classes, dtype=torch.long,
                                 device=seg_logits.device)
        for i, target in enumerate(targets):
            if target.stuff_masks is not None:
                for mask, label in zip(target.stuff_masks, target.stuff_labels):
                    seg_targets[i][mask != 0] = label
        for target, (i, k) in zip(positive_targets, positive.nonzero().tolist()):
            seg_targets[i][target != 0] = labels[i, k]
        flat_logits = seg_logits.permute(0, 2, 3, 1).reshape(-1, num_channels)
        flat_targets = seg_targets.flatten()
        num_dense_pos = (flat_targets < self.num_classes).sum().float().clamp(min=1.0)
        losses["loss_rpn_seg"] = self.seg_loss_weight * sigmoid_focal_loss(
            flat_logits, flat_targets, avg_factor=num_dense_pos, alpha=self.focal_alpha, gamma=self.focal_gamma)
        return losses

    def stage_losses(self, mask_preds: Tensor, cls_scores: Tensor, assignments: Sequence[AssignResult],
                     targets: Sequence[DetTargets]) -> Dict[str, Tensor]:
        """``loss_cls``, ``pos_acc``, ``loss_mask``, ``loss_dice`` and (panoptic) ``loss_rank`` of one stage
        (without the ``s{k}_`` prefix and stage weight).

        Args:
            mask_preds: (B, K, h, w) the stage's mask logits, stride 8; K = N (instance) or N + S
                (panoptic: row N + s is stuff class num_thing_classes + s).
            cls_scores: (B, K, C) the stage's class logits.
            assignments: per-image assignments of the thing rows.
            targets: per image :class:`DetTargets`.
        """
        batch, num_kernels = mask_preds.shape[:2]
        expected_kernels = self.num_proposals + self.num_stuff_classes
        if num_kernels != expected_kernels or cls_scores.shape[:2] != (batch, num_kernels):
            raise ValueError(f"expected {expected_kernels} kernels, got masks {tuple(mask_preds.shape)} "
                             f"and class logits {tuple(cls_scores.shape)}")
        self._check_resolution(mask_preds, targets)

        # Thing kernels are classified over the thing classes only; stuff kernel N + s is only
        # asked about its own class (positive when that stuff is in the image).
        label_weights = cls_scores.new_zeros((batch, num_kernels, self.num_classes))
        label_weights[:, :self.num_proposals, :self.num_thing_classes] = 1
        if self.panoptic:
            stuff_rows = torch.arange(self.num_stuff_classes, device=mask_preds.device)
            label_weights[:, self.num_proposals + stuff_rows, self.num_thing_classes + stuff_rows] = 1
        labels, positive_targets = self._positives(assignments, targets, num_kernels, with_stuff=self.panoptic)
        positive = labels < self.num_classes
        avg_factor = self.reduce_mean(positive.sum().float()).clamp(min=1.0)
        flat_cls = cls_scores.reshape(batch * num_kernels, -1)
        losses = {
            "loss_cls": self.cls_loss_weight * sigmoid_focal_loss(
                flat_cls, labels.flatten(), label_weights.reshape(batch * num_kernels, -1), avg_factor=avg_factor,
                alpha=self.focal_alpha, gamma=self.focal_gamma),
            "pos_acc": accuracy(cls_scores[positive], labels[positive]),
        }
        losses.update(self._mask_losses(mask_preds, positive_targets, positive, "loss_"))
        return losses

    def forward(self, rpn_mask_preds: Tensor, rpn_seg_preds: Tensor, stage_mask_preds: Sequence[Tensor],
                stage_cls_scores: Sequence[Tensor], targets: Sequence[DetTargets]) -> Dict[str, Tensor]:
        """Every loss of one training step, keyed as the official ``KNet.forward_train``.

        Args:
            rpn_mask_preds: (B, K0, h, w) kernel-head mask logits at stride 8 (rows < N are the
                thing proposals; further rows, if any, are ignored).
            rpn_seg_preds: (B, C, h, w) kernel-head semantic logits at stride 8.
            stage_mask_preds: per stage (B, K, h, w) mask logits at stride 8.
            stage_cls_scores: per stage (B, K, C) class logits.
            targets: per image :class:`DetTargets` at stride 4 (see :func:`prepare_targets`).
        Returns:
            ``s{k}_loss_cls``, ``s{k}_pos_acc`` (percent, no gradient), ``s{k}_loss_mask``,
            ``s{k}_loss_dice``, [``s{k}_loss_rank``], ..., ``loss_rpn_mask``, ``loss_rpn_dice``,
            [``loss_rpn_rank``], ``loss_rpn_seg``. The training objective is the sum of the
            values whose key contains ``"loss"`` (see :func:`total_loss`).
        """
        if len(stage_mask_preds) != self.num_stages or len(stage_cls_scores) != self.num_stages:
            raise ValueError(f"expected {self.num_stages} stages of predictions, got {len(stage_mask_preds)} "
                             f"mask and {len(stage_cls_scores)} class tensors")
        self._check_stuff_labels(targets)
        # Matching and losses in float32 under autocast too, as the official code's force_fp32 losses.
        with torch.autocast(device_type=rpn_mask_preds.device.type, enabled=False):
            rpn_mask_preds, rpn_seg_preds = rpn_mask_preds.float(), rpn_seg_preds.float()
            stage_mask_preds = [preds.float() for preds in stage_mask_preds]
            stage_cls_scores = [scores.float() for scores in stage_cls_scores]
            assignments = self.assign(rpn_mask_preds, stage_mask_preds, stage_cls_scores, targets)
            losses: Dict[str, Tensor] = {}
            for stage in range(self.num_stages):
                stage_losses = self.stage_losses(stage_mask_preds[stage], stage_cls_scores[stage],
                                                 assignments[f"s{stage}"], targets)
                for key, value in stage_losses.items():
                    losses[f"s{stage}_{key}"] = value * self.stage_loss_weights[stage]
            losses.update(self.rpn_losses(rpn_mask_preds, rpn_seg_preds, assignments["rpn"], targets))
        return losses


def total_loss(losses: Dict[str, Tensor]) -> Tensor:
    """Sum of the entries whose key contains ``"loss"`` (mmdet's ``_parse_losses``): the objective."""
    return sum(value for key, value in losses.items() if "loss" in key)


def batch_targets(batch: Any, num_thing_classes: int = 80, assign_stride: int = 4,
                  ignore_index: int = 255) -> List[DetTargets]:
    """The per-image :class:`DetTargets` of a collated batch (``knet.data.mask_transforms.MaskBatch``:
    ``masks``, ``labels``, ``sem_seg``, ``batch_shape``), masks at stride ``assign_stride``."""
    sem_seg = None if batch.sem_seg is None else list(batch.sem_seg)
    return prepare_targets(batch.masks, batch.labels, batch.batch_shape, sem_seg,
                           num_thing_classes=num_thing_classes, assign_stride=assign_stride,
                           ignore_index=ignore_index)

"""Panoptic post-processing of the K-Net mask models (the reference's KernelIterHead.get_panoptic
and merge_stuff_thing).

Two steps, each its own function: :func:`panoptic_candidates` turns the last stage's logits into
one (mask probability, label, score) per kernel at the original image size, and
:func:`merge_panoptic` paints them into a segment map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .instance import rescale_masks, rescaled_mask_chunks


@dataclass
class PanopticSegment:
    """One segment of a panoptic map. ``id`` is its value in the map (from 1; 0 is void),
    ``proposal`` the kernel row it comes from (proposals first, then one per stuff class)."""

    id: int
    label: int
    score: float
    area: int
    proposal: int
    is_thing: bool


@dataclass
class PanopticPrediction:
    """segment_map: (H, W) int32, 0 = void, else the ``id`` of one of ``segments`` (ids numbered
    1, 2, ... in descending score order)."""

    segment_map: torch.Tensor
    segments: List[PanopticSegment]


def panoptic_candidates(cls_logits: torch.Tensor, mask_logits: torch.Tensor, img_shape: Sequence[int],
                        batch_input_shape: Sequence[int], ori_shape: Sequence[int],
                        num_thing_classes: int = 80) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's last-stage predictions -> the pre-merge (masks, labels, scores).

    cls_logits: (K, num_classes) with K = num_proposals + num_stuff_classes, the stuff kernels
    last and num_stuff_classes = num_classes - num_thing_classes; mask_logits: (K, h, w) stride-4
    logits (``KNetMaskSegmentor.final_mask_logits``).
    A proposal's label and score are the best of its sigmoid thing scores (stuff columns
    ignored); stuff kernel j keeps label num_thing_classes + j, scored by its own class's sigmoid.
    Returns masks (K, ori_h, ori_w) probabilities (:func:`rescale_masks`), labels (K,) int64,
    scores (K,).
    """
    labels, scores = candidate_labels_and_scores(cls_logits, num_thing_classes)
    return rescale_masks(mask_logits, img_shape, batch_input_shape, ori_shape), labels, scores


def candidate_labels_and_scores(cls_logits: torch.Tensor,
                                num_thing_classes: int = 80) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K, num_classes) class logits -> the candidates' labels (K,) int64 and scores (K,), as
    :func:`panoptic_candidates` gives them."""
    num_stuff = cls_logits.shape[1] - num_thing_classes
    num_proposals = cls_logits.shape[0] - num_stuff
    probs = cls_logits.sigmoid()
    thing_scores, thing_labels = probs[:num_proposals, :num_thing_classes].max(dim=1)
    stuff_scores = probs[num_proposals:, num_thing_classes:].diagonal()
    stuff_labels = torch.arange(num_thing_classes, num_thing_classes + num_stuff, device=thing_labels.device)
    return torch.cat([thing_labels, stuff_labels]), torch.cat([thing_scores, stuff_scores])


def merge_panoptic(masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, num_thing_classes: int = 80,
                   instance_score_thr: float = 0.3, overlap_thr: float = 0.6,
                   mask_thr: float = 0.5) -> PanopticPrediction:
    """Pre-merge candidates -> panoptic segment map.

    masks: (K, H, W) probabilities; labels: (K,) (< num_thing_classes: thing); scores: (K,).
    Every pixel goes to the candidate with the largest score x mask. Candidates are then visited
    in descending score order (stable for ties); a thing scoring below ``instance_score_thr`` is
    skipped, and so is any candidate whose won area is empty, whose own mask (prob >= mask_thr)
    is empty, or whose won area / own mask area < ``overlap_thr``. The others become segments
    1, 2, ... Pixels left to skipped candidates are void (0). (Won areas and mask areas are counted
    once for every candidate and the map painted in one lookup: the same result as visiting the
    pixels per candidate.)
    """
    votes = PanopticVotes(scores, mask_thr)
    votes.add(0, masks)
    return votes.merge(labels, num_thing_classes, instance_score_thr, overlap_thr)


# Bits of a vote below its weighted probability's: room for 2^32 candidates.
_CANDIDATE_BITS = 32


class PanopticVotes:
    """What :func:`merge_panoptic` needs of the candidates' (K, H, W) mask probabilities, gathered
    from consecutive chunks of them (``add(start, masks)`` in kernel order), so that the masks need
    not exist all at once: per pixel the candidate with the largest ``scores[k] x masks[k]`` (ties
    to the first, as ``argmax``) and per candidate the area of its mask (prob >= ``mask_thr``).

    Each candidate votes with one int64 per pixel: the bits of its float32 ``scores[k] x masks[k]``
    (for non-negative floats their order as integers is their order as numbers) above
    ``2^32 - 1 - k``. The running maximum of the votes is then the largest weighted probability
    and, among equal ones, the first candidate: integer maxima run several times faster on the
    CPU than a comparison into a bool mask and a masked fill per candidate.

    scores: (K,) the candidates' scores, >= 0; masks: probabilities (>= 0), computed in float32.
    """

    def __init__(self, scores: torch.Tensor, mask_thr: float = 0.5) -> None:
        if scores.numel() and float(scores.min()) < 0:
            raise ValueError(f"panoptic scores must be >= 0, got {float(scores.min())}")
        self.scores, self.mask_thr = scores, mask_thr
        self._weights = scores.float()
        self.count = 0
        self._areas: List[torch.Tensor] = []
        self._votes: Optional[torch.Tensor] = None  # (H, W) int64, the largest vote so far
        self._weighted: Optional[torch.Tensor] = None  # (H, W) float32 scratch: scores[k] x masks[k]
        self._vote: Optional[torch.Tensor] = None  # (H, W) int64 scratch: candidate k's votes

    def add(self, start: int, masks: torch.Tensor) -> None:
        """Candidates ``start .. start + n - 1``: (n, H, W) probabilities."""
        if start != self.count:
            raise ValueError(f"candidates must come in order: expected {self.count}, got {start}")
        masks = masks.float()
        for mask in masks:
            k = self.count
            self.count += 1
            if self._votes is None or self._weighted is None or self._vote is None:
                self._weighted = torch.empty_like(mask)
                self._vote = torch.empty(mask.shape, dtype=torch.int64, device=mask.device)
                self._votes = torch.full(mask.shape, -1, dtype=torch.int64, device=mask.device)  # below any vote
            torch.mul(mask, self._weights[k], out=self._weighted)
            self._vote.copy_(self._weighted.view(torch.int32)).bitwise_left_shift_(_CANDIDATE_BITS)
            self._vote.bitwise_or_((1 << _CANDIDATE_BITS) - 1 - k)
            torch.maximum(self._votes, self._vote, out=self._votes)
        if masks.device.type == "cpu":  # numpy counts several times faster than torch's bool reduction
            counts = [np.count_nonzero(mask >= self.mask_thr) for mask in masks.detach().numpy()]
            self._areas.append(torch.tensor(counts, dtype=torch.int64))
        else:
            self._areas.append(torch.count_nonzero(masks >= self.mask_thr, dim=(1, 2)))

    @property
    def winner(self) -> Optional[torch.Tensor]:
        """(H, W) int32: per pixel the candidate with the largest score x probability (None before
        the first :meth:`add`)."""
        if self._votes is None:
            return None
        first = (1 << _CANDIDATE_BITS) - 1
        return (first - (self._votes & first)).to(torch.int32)

    @property
    def mask_areas(self) -> List[int]:
        """Per candidate added, its number of pixels with prob >= ``mask_thr``."""
        return torch.cat(self._areas).tolist() if self._areas else []

    def merge(self, labels: torch.Tensor, num_thing_classes: int = 80, instance_score_thr: float = 0.3,
              overlap_thr: float = 0.6) -> PanopticPrediction:
        """The segment map and segments by :func:`merge_panoptic`'s rules (``labels``: (K,))."""
        winner = self.winner
        if winner is None:
            raise ValueError("no candidates were added")
        scores, mask_areas = self.scores, self.mask_areas
        won_areas = torch.bincount(winner.flatten(), minlength=scores.shape[0]).tolist()
        segment_ids = torch.zeros(scores.shape[0], dtype=torch.int32, device=winner.device)  # 0: void
        segments: List[PanopticSegment] = []
        for k in torch.sort(scores, descending=True, stable=True).indices.tolist():
            label = int(labels[k])
            is_thing = label < num_thing_classes
            score = float(scores[k])
            if (is_thing and score < instance_score_thr) or won_areas[k] == 0:
                continue
            mask_area = mask_areas[k]
            if mask_area == 0 or won_areas[k] / mask_area < overlap_thr:
                continue
            segment_id = len(segments) + 1
            segment_ids[k] = segment_id
            segments.append(PanopticSegment(segment_id, label, score, won_areas[k], k, is_thing))
        return PanopticPrediction(segment_ids[winner], segments)


def panoptic_inference(cls_logits: torch.Tensor, mask_logits: torch.Tensor, img_shape: Sequence[int],
                       batch_input_shape: Sequence[int], ori_shape: Sequence[int], num_thing_classes: int = 80,
                       instance_score_thr: float = 0.3, overlap_thr: float = 0.6,
                       mask_thr: float = 0.5) -> PanopticPrediction:
    """One image's last-stage predictions -> its panoptic result at the original size: the result
    of :func:`panoptic_candidates` then :func:`merge_panoptic` (shapes as there), with the masks
    rescaled and counted a few at a time (:func:`rescaled_mask_chunks`, :class:`PanopticVotes`)
    rather than held at the original size all at once."""
    labels, scores = candidate_labels_and_scores(cls_logits, num_thing_classes)
    votes = PanopticVotes(scores, mask_thr)
    for start, masks in rescaled_mask_chunks(mask_logits, img_shape, batch_input_shape, ori_shape):
        votes.add(start, masks)
    return votes.merge(labels, num_thing_classes, instance_score_thr, overlap_thr)


def reference_encoding(result: PanopticPrediction, void_label: int = 133, offset: int = 1000) -> torch.Tensor:
    """The reference's (mmdet 2.x) panoptic map: label + (id - 1) * offset per pixel, void_label
    where void. (H, W) int64."""
    lookup = torch.full((len(result.segments) + 1,), void_label, dtype=torch.int64, device=result.segment_map.device)
    for segment in result.segments:
        lookup[segment.id] = segment.label + (segment.id - 1) * offset
    return lookup[result.segment_map.long()]

"""Instance post-processing of the K-Net mask models (the reference's KernelIterHead.simple_test).

Also home of :func:`rescale_masks` and :func:`rescaled_mask_chunks`, which the panoptic
post-processing shares: stride-4 mask logits of the padded batch -> mask probabilities at the
original image size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


# Kernels resized at a time on the CPU: the (chunk, H, W) padded-size intermediate stays in the
# caches instead of going through memory (each mask is resized on its own: the same results).
RESCALE_CHUNK = 4


def rescaled_mask_chunks(mask_logits: torch.Tensor, img_shape: Sequence[int], batch_input_shape: Sequence[int],
                         ori_shape: Sequence[int], chunk: Optional[int] = None) -> Iterator[Tuple[int, torch.Tensor]]:
    """(K, h, w) mask logits of one image -> ``(start, probs)`` pairs in kernel order, ``probs``
    the (n, ori_h, ori_w) probabilities of kernels ``start .. start + n - 1`` (:func:`rescale_masks`),
    ``chunk`` kernels at a time (default :data:`RESCALE_CHUNK` on the CPU, all of them elsewhere)."""
    count = mask_logits.shape[0]
    if chunk is None:
        chunk = RESCALE_CHUNK if mask_logits.device.type == "cpu" else max(count, 1)
    height, width = int(img_shape[0]), int(img_shape[1])
    padded = (int(batch_input_shape[0]), int(batch_input_shape[1]))
    original = (int(ori_shape[0]), int(ori_shape[1]))
    for start in range(0, count, chunk):
        probs = F.interpolate(mask_logits[None, start:start + chunk].sigmoid(), size=padded, mode="bilinear",
                              align_corners=False)
        probs = probs[:, :, :height, :width]
        yield start, F.interpolate(probs, size=original, mode="bilinear", align_corners=False)[0]


def rescale_masks(mask_logits: torch.Tensor, img_shape: Sequence[int], batch_input_shape: Sequence[int],
                  ori_shape: Sequence[int]) -> torch.Tensor:
    """(K, h, w) mask logits of one image -> (K, ori_h, ori_w) probabilities.

    The sigmoid is taken first, then: bilinear resize (align_corners=False) to the padded batch
    size ``batch_input_shape`` (H, W), crop to the resized image ``img_shape`` (h, w, ...) at the
    top left, bilinear resize to the original size ``ori_shape`` (h, w, ...).
    """
    probs = mask_logits.new_empty((mask_logits.shape[0], int(ori_shape[0]), int(ori_shape[1])))
    for start, chunk in rescaled_mask_chunks(mask_logits, img_shape, batch_input_shape, ori_shape):
        probs[start:start + chunk.shape[0]] = chunk
    return probs


@dataclass
class InstancePrediction:
    """The instances of one image, in descending score order.

    masks: (k, ori_h, ori_w) bool; labels: (k,) int64 class indices; scores: (k,) float
    sigmoid class scores; proposal_indices: (k,) int64 the kernel each instance comes from
    (a kernel may give several instances of different classes).
    """

    masks: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    proposal_indices: torch.Tensor


def instance_inference(cls_logits: torch.Tensor, mask_logits: torch.Tensor, img_shape: Sequence[int],
                       batch_input_shape: Sequence[int], ori_shape: Sequence[int], max_per_img: int = 100,
                       mask_thr: float = 0.5) -> InstancePrediction:
    """One image's last-stage predictions -> its top-scoring instances.

    cls_logits: (N, num_classes) class logits of the N kernels; mask_logits: (N, h, w) their
    stride-4 mask logits (``KNetMaskSegmentor.final_mask_logits``). Every (kernel, class) pair is a
    candidate scored by its sigmoid; the ``max_per_img`` best are kept (no score threshold), each
    with its kernel's mask, rescaled (:func:`rescale_masks`) and thresholded (prob > mask_thr).
    """
    num_classes = cls_logits.shape[1]
    scores, indices = cls_logits.sigmoid().flatten().topk(min(max_per_img, cls_logits.numel()), sorted=True)
    proposal_indices = indices // num_classes
    labels = indices % num_classes
    # A kernel scoring high in several classes gives several instances of one mask: rescale it once.
    kernels, instance_kernel = torch.unique(proposal_indices, return_inverse=True)
    masks = torch.empty((kernels.numel(), int(ori_shape[0]), int(ori_shape[1])), dtype=torch.bool,
                        device=mask_logits.device)
    for start, probs in rescaled_mask_chunks(mask_logits[kernels], img_shape, batch_input_shape, ori_shape):
        torch.gt(probs, mask_thr, out=masks[start:start + probs.shape[0]])
    return InstancePrediction(masks=masks[instance_kernel], labels=labels, scores=scores,
                              proposal_indices=proposal_indices)

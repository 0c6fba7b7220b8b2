"""Instance post-processing of the K-Net mask models (the reference's KernelIterHead.simple_test).

Also home of :func:`rescale_masks` and :func:`rescaled_mask_chunks`, which the panoptic
post-processing shares: stride-4 mask logits of the padded batch -> mask probabilities at the
original image size (the 4x upsampling by :func:`resize_and_crop`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


# Kernels resized at a time on the CPU: the (chunk, H, W) padded-size intermediate stays in the
# caches instead of going through memory (each mask is resized on its own: the same results).
RESCALE_CHUNK = 4


# Output row 4k + j of a 4x bilinear upsampling (align_corners=False) lies at source row
# k + (2j - 3) / 8: between rows k - 1 and k for j < 2, k and k + 1 for j >= 2, with these weights
# on the second of the two.
_QUARTER_WEIGHTS = (0.625, 0.875, 0.125, 0.375)


def _upsample_rows_4x(x: torch.Tensor) -> torch.Tensor:
    """(..., L, W) -> (..., 4L, W): torch's CPU bilinear upsampling along the rows, bit for bit.

    Its kernel computes each output as ``fma(a, w0, b * w1)`` of the two source rows ``a``, ``b``;
    here the products of all rows are three multiplications and the fused adds two ``addcmul_``,
    vectorised over whole rows instead of torch's loop over single pixels."""
    count = x.shape[-2]
    w1 = x.new_tensor(_QUARTER_WEIGHTS).view(4, 1)
    w0 = 1 - w1
    out = x.new_empty(x.shape[:-2] + (count, 4, x.shape[-1]))  # (..., k, j, W): output row 4k + j
    rows = x.unsqueeze(-2)  # (..., L, 1, W)
    # b * w1, b: row k for j < 2, row k + 1 for j >= 2 (clamped to the last row)
    torch.mul(rows, w1[:2], out=out[..., :2, :])
    torch.mul(rows[..., 1:, :, :], w1[2:], out=out[..., :-1, 2:, :])
    torch.mul(rows[..., -1:, :, :], w1[2:], out=out[..., -1:, 2:, :])
    # + a * w0 in one rounding, a: row k - 1 for j < 2, row k for j >= 2
    out[..., 1:, :2, :].addcmul_(rows[..., :-1, :, :], w0[:2])
    out[..., 2:, :].addcmul_(rows, w0[2:])
    # Rows 0 and 1 lie before source row 0: torch clamps them to it, weights 1 and 0.
    top = out[..., 0, :2, :]
    torch.mul(rows[..., min(1, count - 1), :, :].expand_as(top), 0.0, out=top)
    top.addcmul_(rows[..., 0, :, :].expand_as(top), torch.ones((), dtype=x.dtype))
    return out.flatten(-3, -2)


def resize_and_crop(x: torch.Tensor, size: Tuple[int, int], height: int, width: int) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)[..., :height, :width]`` of an
    (N, C, h, w) ``x``, bit for bit.

    A 4x upsampling of a float32 CPU tensor (K-Net's stride-4 masks to the padded input) runs as
    torch's kernel along the columns, then :func:`_upsample_rows_4x`, about 1.3x faster than torch's
    2-D kernel, and skips the columns cropped. Other sizes, devices and dtypes, and
    the shapes where torch's CPU kernel takes another path (outputs of at most 128 rows + columns;
    channels-last inputs of more than 3 channels) go through ``F.interpolate``."""
    rows, columns = x.shape[-2:]
    other_path = rows + 4 * columns <= 128 or (x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 3)
    fast = (x.device.type == "cpu" and x.dtype == torch.float32 and tuple(size) == (4 * rows, 4 * columns)
            and not other_path)
    if not fast:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[..., :height, :width]
    along_columns = F.interpolate(x, size=(rows, 4 * columns), mode="bilinear", align_corners=False)
    return _upsample_rows_4x(along_columns[..., :width])[..., :height, :]


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
        probs = resize_and_crop(mask_logits[None, start:start + chunk].sigmoid(), padded, height, width)
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

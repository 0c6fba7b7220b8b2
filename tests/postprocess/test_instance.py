"""Instance post-processing reproduces the official KernelIterHead.simple_test (instance path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from knet.postprocess import instance_inference, rescale_masks
from tests.conftest import golden_path


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(golden_path("det/knet-det-instance.tiny.npz")))


@pytest.mark.parametrize("i", [0, 1])
def test_instances_match_reference(ref, i):
    cls_logits, mask_logits = torch.from_numpy(ref["s2_cls_score"][i]), torch.from_numpy(ref["s2_scaled_mask_preds"][i])
    shapes = ref["img_shape"][i], ref["batch_input_shape"], ref["ori_shape"][i]
    result = instance_inference(cls_logits, mask_logits, *shapes, max_per_img=10)
    np.testing.assert_array_equal(result.labels.numpy(), ref[f"ins_labels_{i}"])
    np.testing.assert_array_equal(result.proposal_indices.numpy(), ref[f"ins_proposal_inds_{i}"])
    assert np.abs(result.scores.numpy() - ref[f"ins_scores_{i}"]).max() <= 1e-5
    assert result.masks.dtype == torch.bool
    assert (result.masks.numpy() != ref[f"ins_masks_{i}"]).mean(axis=(1, 2)).max() <= 0.005
    probs = rescale_masks(mask_logits[result.proposal_indices], *shapes)
    assert np.abs(probs.numpy() - ref[f"ins_mask_probs_{i}"]).max() <= 1e-5


def test_topk_runs_over_kernel_class_pairs():
    # One kernel can give several instances; k is capped by the number of pairs.
    cls_logits = torch.tensor([[4.0, 3.0, -7.0], [-9.0, -8.0, 2.0]])
    mask_logits = torch.stack([torch.full((2, 2), 5.0), torch.full((2, 2), -5.0)])
    result = instance_inference(cls_logits, mask_logits, (2, 2), (2, 2), (4, 4), max_per_img=100)
    assert result.labels.tolist() == [0, 1, 2, 2, 1, 0] and result.proposal_indices.tolist() == [0, 0, 1, 0, 1, 1]
    assert torch.allclose(result.scores, cls_logits.sigmoid().flatten().sort(descending=True).values)
    assert result.masks.shape == (6, 4, 4)
    assert result.masks[0].all() and not result.masks[2].any()
    assert len(instance_inference(cls_logits, mask_logits, (2, 2), (2, 2), (2, 2), max_per_img=2).labels) == 2


# (stride-4 mask size, resized image, padded batch, original image): torch's kernel for a small
# output, and a larger one that resize_and_crop computes in two passes
RESCALE_SHAPES = [((12, 16), (45, 61), (48, 64), (30, 41)), ((30, 40), (117, 150), (120, 160), (90, 115))]


@pytest.mark.parametrize("shapes", RESCALE_SHAPES)
def test_masks_are_rescaled_a_few_at_a_time_with_the_same_values(shapes):
    import torch.nn.functional as F

    from knet.postprocess.instance import rescaled_mask_chunks

    generator = torch.Generator().manual_seed(0)
    mask_logits = torch.randn(7, *shapes[0], generator=generator) * 4
    shapes = shapes[1:]
    whole = F.interpolate(mask_logits[None].sigmoid(), size=shapes[1], mode="bilinear", align_corners=False)
    whole = whole[:, :, :shapes[0][0], :shapes[0][1]]
    whole = F.interpolate(whole, size=shapes[2], mode="bilinear", align_corners=False)[0]
    assert torch.equal(rescale_masks(mask_logits, *shapes), whole)
    for chunk in (1, 3, 7, 10):
        pieces = list(rescaled_mask_chunks(mask_logits, *shapes, chunk=chunk))
        assert [start for start, _ in pieces] == list(range(0, 7, chunk))
        assert torch.equal(torch.cat([probs for _, probs in pieces]), whole), chunk
    # The instances' masks are those probabilities thresholded, kernel by kernel.
    cls_logits = torch.randn(7, 5, generator=generator)
    result = instance_inference(cls_logits, mask_logits, *shapes, max_per_img=12, mask_thr=0.5)
    assert torch.equal(result.masks, whole[result.proposal_indices] > 0.5)


@pytest.mark.parametrize("size, crop, fast", [
    ((200, 272), (800, 1067), True),  # a COCO photo's masks
    ((1, 40), (4, 157), True), ((2, 50), (7, 200), True), ((8, 31), (32, 124), True), ((5, 31), (20, 121), True),
    # torch's kernel for outputs of at most 128 rows + columns takes another path: so do these
    ((16, 24), (64, 96), False), ((8, 30), (32, 120), False), ((40, 1), (159, 1), False), ((33, 9), (131, 33), False)])
def test_resize_and_crop_is_torch_bilinear_bit_for_bit(monkeypatch, size, crop, fast):
    import torch.nn.functional as F

    from knet.postprocess import instance

    calls = []
    rows_4x = instance._upsample_rows_4x
    monkeypatch.setattr(instance, "_upsample_rows_4x", lambda x: calls.append(x.shape) or rows_4x(x))
    generator = torch.Generator().manual_seed(sum(size))
    x = (torch.randn(1, 3, *size, generator=generator) * 4).sigmoid()
    padded = (4 * size[0], 4 * size[1])
    expected = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)[..., :crop[0], :crop[1]]
    assert torch.equal(instance.resize_and_crop(x, padded, *crop), expected)
    assert bool(calls) == fast
    # Any other size goes through torch's kernel.
    other = (padded[0] + 1, padded[1])
    expected = F.interpolate(x, size=other, mode="bilinear", align_corners=False)[..., :crop[0], :crop[1]]
    assert torch.equal(instance.resize_and_crop(x, other, *crop), expected) and len(calls) == int(fast)

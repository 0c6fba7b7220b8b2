"""Hungarian matching of K-Net det kernels equals the official assigner's (golden assignments/costs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from knet.losses import DetTargets, KNetDetCriterion, MaskHungarianAssigner, dice_cost, focal_cost, mask_cost
from tests.conftest import golden_path

GOLDENS = ["knet-det-panoptic", "knet-det-instance", "knet-det-panoptic-swin"]
STAGES = ["rpn", "s0", "s1", "s2"]


@pytest.fixture(scope="module", params=GOLDENS)
def golden(request):
    return request.param, dict(np.load(golden_path(f"det/{request.param}.tiny.npz")))


def golden_targets(ref: dict) -> list:
    panoptic = "gt_semantic_seg" in ref
    return [DetTargets(torch.from_numpy(ref[f"train_gt_masks_assign_{i}"]), torch.from_numpy(ref[f"gt_labels_{i}"]),
                       torch.from_numpy(ref[f"train_gt_sem_seg_{i}"]) if panoptic else None,
                       torch.from_numpy(ref[f"train_gt_sem_cls_{i}"]) if panoptic else None)
            for i in range(2)]


def golden_assignments(ref: dict):
    criterion = KNetDetCriterion(num_proposals=10, panoptic="gt_semantic_seg" in ref)
    stage_masks = [torch.from_numpy(ref[f"s{k}_mask_preds"]) for k in range(3)]
    stage_cls = [torch.from_numpy(ref[f"s{k}_cls_score"]) for k in range(3)]
    return criterion.assign(torch.from_numpy(ref["rpn_mask_preds"]), stage_masks, stage_cls, golden_targets(ref))


def test_assignments_match_reference(golden, one_thread):
    name, ref = golden
    assignments = golden_assignments(ref)
    assert list(assignments) == STAGES
    for stage in STAGES:
        gt_inds = torch.stack([result.gt_inds for result in assignments[stage]]).numpy()
        labels = torch.stack([result.labels for result in assignments[stage]]).numpy()
        np.testing.assert_array_equal(gt_inds, ref[f"assign_{stage}_gt_inds"], err_msg=f"{name} {stage} gt_inds")
        np.testing.assert_array_equal(labels, ref[f"assign_{stage}_labels"], err_msg=f"{name} {stage} labels")


def test_cost_matrices_match_reference(golden, one_thread):
    name, ref = golden
    assignments = golden_assignments(ref)
    for stage in STAGES:
        for i in range(2):
            expected = ref[f"assign_{stage}_cost_{i}"]
            cost = assignments[stage][i].cost.numpy()
            assert cost.shape == expected.shape
            diff = np.abs(cost - expected).max()
            assert diff <= 1e-5 * np.abs(expected).max(), f"{name} {stage} image {i}: cost diff {diff}"


def test_class_cost_used_from_stage_one_on(golden, one_thread):
    """The kernel head and stage 0 have no class prediction to match on; stages >= 1 use stage k-1's."""
    _, ref = golden
    targets = golden_targets(ref)
    assigner = MaskHungarianAssigner()
    upsample = KNetDetCriterion(num_proposals=10).upsample
    masks = upsample(torch.from_numpy(ref["s0_mask_preds"]))[:, :10]
    cls = torch.from_numpy(ref["s0_cls_score"])[:, :10, :80]
    for i in range(2):
        assert not ref["assign_rpn_cls_used"][i] and not ref["assign_s0_cls_used"][i]
        assert ref["assign_s1_cls_used"][i] and ref["assign_s2_cls_used"][i]
        with_cls = assigner.cost_matrix(masks[i], cls[i], targets[i].masks, targets[i].labels).numpy()
        without = assigner.cost_matrix(masks[i], None, targets[i].masks, targets[i].labels).numpy()
        np.testing.assert_allclose(with_cls, ref[f"assign_s1_cost_{i}"], atol=1e-5 * np.abs(with_cls).max())
        assert np.abs(with_cls - without).max() > 1e-3


def test_cost_formulas_on_a_hand_example():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])  # (1, 2, 2)
    target = torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])  # (1, 2, 2)
    p, t = logits.sigmoid().flatten(), target.flatten()
    expected_mask = -((p * t).sum() + ((1 - p) * (1 - t)).sum()) / 4
    expected_dice = -2 * (p * t).sum() / ((p * p).sum() + 1e-3 + (t * t).sum() + 1e-3)
    assert torch.allclose(mask_cost(logits, target, weight=1.0)[0, 0], expected_mask)
    assert torch.allclose(dice_cost(logits, target, weight=4.0)[0, 0], 4 * expected_dice)

    cls_logits = torch.tensor([[0.3, -2.0, 1.5]])
    prob = cls_logits.sigmoid()[0, 2]
    pos = -torch.log(prob + 1e-12) * 0.25 * (1 - prob) ** 2
    neg = -torch.log(1 - prob + 1e-12) * 0.75 * prob ** 2
    assert torch.allclose(focal_cost(cls_logits, torch.tensor([2]), weight=2.0)[0, 0], 2 * (pos - neg))


def test_assigner_recovers_a_permutation_and_handles_no_gt():
    generator = torch.Generator().manual_seed(0)
    gt_masks = (torch.rand(3, 16, 16, generator=generator) > 0.6).float()
    gt_labels = torch.tensor([5, 7, 9])
    # Kernels 4, 0 and 2 confidently predict gts 0, 1 and 2; the rest predict noise.
    logits = torch.randn(6, 16, 16, generator=generator) * 0.1
    for kernel, gt in [(4, 0), (0, 1), (2, 2)]:
        logits[kernel] = (gt_masks[gt] * 2 - 1) * 8
    result = MaskHungarianAssigner().assign(logits, None, gt_masks, gt_labels)
    assert result.gt_inds.tolist() == [2, 0, 3, 0, 1, 0]
    assert result.labels.tolist() == [7, -1, 9, -1, 5, -1]
    assert result.pos_inds.tolist() == [0, 2, 4]
    assert result.pos_gt_inds.tolist() == [1, 2, 0]

    empty = MaskHungarianAssigner().assign(logits, None, gt_masks[:0], gt_labels[:0])
    assert empty.gt_inds.tolist() == [0] * 6 and empty.labels.tolist() == [-1] * 6 and empty.cost is None

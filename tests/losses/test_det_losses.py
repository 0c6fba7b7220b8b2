"""K-Net det training losses equal the official ``forward_train`` values (golden ``train__*``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from knet.losses import (DetTargets, KNetDetCriterion, accuracy, build_rank_targets, dice_loss, prepare_targets,
                         rank_loss, sigmoid_focal_loss, total_loss)
from tests.conftest import golden_path

GOLDENS = ["knet-det-panoptic", "knet-det-instance", "knet-det-panoptic-swin"]


@pytest.fixture(scope="module", params=GOLDENS)
def golden(request):
    return request.param, dict(np.load(golden_path(f"det/{request.param}.tiny.npz")))


def tensor(ref: dict, key: str) -> torch.Tensor:
    return torch.from_numpy(ref[key])


def golden_targets(ref: dict) -> list:
    panoptic = "gt_semantic_seg" in ref
    return [DetTargets(tensor(ref, f"train_gt_masks_assign_{i}"), tensor(ref, f"gt_labels_{i}"),
                       tensor(ref, f"train_gt_sem_seg_{i}") if panoptic else None,
                       tensor(ref, f"train_gt_sem_cls_{i}") if panoptic else None)
            for i in range(2)]


def golden_predictions(ref: dict, requires_grad: bool = False) -> dict:
    def leaf(key: str) -> torch.Tensor:
        return tensor(ref, key).clone().requires_grad_(requires_grad)

    return {"rpn_mask_preds": leaf("rpn_mask_preds"), "rpn_seg_preds": leaf("rpn_seg_preds"),
            "stage_mask_preds": [leaf(f"s{k}_mask_preds") for k in range(3)],
            "stage_cls_scores": [leaf(f"s{k}_cls_score") for k in range(3)]}


def make_criterion(ref: dict, **kwargs) -> KNetDetCriterion:
    return KNetDetCriterion(num_proposals=10, panoptic="gt_semantic_seg" in ref, **kwargs)


def test_losses_match_reference(golden, one_thread):
    name, ref = golden
    losses = make_criterion(ref)(**golden_predictions(ref), targets=golden_targets(ref))
    expected_keys = [key[len("train__"):] for key in ref if key.startswith("train__")]
    assert list(losses) == expected_keys  # same names, same order as the official dict
    for key in expected_keys:
        value, expected = float(losses[key]), float(ref[f"train__{key}"])
        if key.endswith("pos_acc"):
            assert value == expected, f"{name} {key}: {value} != {expected}"
        else:
            assert abs(value - expected) <= 1e-4 * abs(expected), f"{name} {key}: {value} vs {expected}"


def test_prepare_targets_matches_reference(golden):
    """Padding + bilinear resize to stride 4 (+ stuff masks from the semantic map) as the official."""
    name, ref = golden
    panoptic = "gt_semantic_seg" in ref
    # Image 0 is given unpadded (cropped to its img_shape), as the official forward_train received it.
    h0, w0 = ref["img_shape"][0][:2]
    masks = [tensor(ref, "gt_masks_0")[:, :h0, :w0], tensor(ref, "gt_masks_1")]
    sem_seg = [tensor(ref, "gt_semantic_seg")[0, :, :h0, :w0], tensor(ref, "gt_semantic_seg")[1]] if panoptic else None
    targets = prepare_targets(masks, [tensor(ref, "gt_labels_0"), tensor(ref, "gt_labels_1")],
                              tuple(ref["batch_input_shape"]), sem_seg)
    for i, target in enumerate(targets):
        np.testing.assert_allclose(target.masks.numpy(), ref[f"train_gt_masks_assign_{i}"], atol=1e-6,
                                   err_msg=f"{name} thing masks {i}")
        if panoptic:
            np.testing.assert_array_equal(target.stuff_labels.numpy(), ref[f"train_gt_sem_cls_{i}"])
            np.testing.assert_allclose(target.stuff_masks.numpy(), ref[f"train_gt_sem_seg_{i}"], atol=1e-6,
                                       err_msg=f"{name} stuff masks {i}")
        else:
            assert target.stuff_masks is None and target.stuff_labels is None


def test_losses_are_differentiable(golden, one_thread):
    name, ref = golden
    predictions = golden_predictions(ref, requires_grad=True)
    losses = make_criterion(ref)(**predictions, targets=golden_targets(ref))
    assert not losses["s0_pos_acc"].requires_grad
    total_loss(losses).backward()
    leaves = [predictions["rpn_mask_preds"], predictions["rpn_seg_preds"], *predictions["stage_mask_preds"],
              *predictions["stage_cls_scores"]]
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), name
        assert leaf.grad.abs().sum() > 0, name
    # Panoptic kernel-head stuff rows (appended at test time) take no part in the kernel-head loss.
    if "gt_semantic_seg" in ref:
        assert predictions["rpn_mask_preds"].grad[:, 10:].abs().max() == 0


def test_focal_normaliser_uses_reduce_mean(golden, one_thread):
    """Under DDP the class-loss normaliser is the positives count averaged across ranks."""
    _, ref = golden
    inputs = dict(**golden_predictions(ref), targets=golden_targets(ref))
    plain = make_criterion(ref)(**inputs)
    doubled = make_criterion(ref, reduce_mean=lambda count: count * 2)(**inputs)
    for stage in range(3):
        key = f"s{stage}_loss_cls"
        assert math.isclose(float(doubled[key]) * 2, float(plain[key]), rel_tol=1e-5)
        assert float(doubled[f"s{stage}_loss_dice"]) == float(plain[f"s{stage}_loss_dice"])


def test_no_ground_truth_gives_zero_mask_losses_with_gradient(one_thread):
    torch.manual_seed(0)
    criterion = KNetDetCriterion(num_thing_classes=3, num_stuff_classes=2, num_proposals=4, panoptic=True)
    rpn = torch.randn(1, 4, 6, 8, requires_grad=True)
    seg = torch.randn(1, 5, 6, 8, requires_grad=True)
    masks = [torch.randn(1, 6, 6, 8, requires_grad=True) for _ in range(3)]
    cls = [torch.randn(1, 6, 5, requires_grad=True) for _ in range(3)]
    empty = DetTargets(torch.zeros(0, 12, 16), torch.zeros(0, dtype=torch.long), torch.zeros(0, 12, 16),
                       torch.zeros(0, dtype=torch.long))
    losses = criterion(rpn, seg, masks, cls, [empty])
    for key in ["loss_rpn_mask", "loss_rpn_dice", "loss_rpn_rank", "s2_loss_mask", "s2_loss_rank"]:
        assert losses[key].item() == 0.0
    assert losses["s0_loss_cls"].item() > 0 and losses["loss_rpn_seg"].item() > 0
    total_loss(losses).backward()
    assert all(t.grad is not None for t in [rpn, seg, *masks, *cls])


def test_stage_targets_and_accuracy_on_a_hand_example(one_thread):
    """2 thing kernels + 2 stuff kernels; stuff class 3 present; a perfect classifier gets 100 %."""
    criterion = KNetDetCriterion(num_thing_classes=2, num_stuff_classes=2, num_proposals=2, panoptic=True,
                                 num_stages=1, mask_upsample_stride=1)
    thing = torch.zeros(1, 4, 4)
    thing[0, :2, :2] = 1
    stuff = torch.zeros(1, 4, 4)
    stuff[0, 2:, :] = 1
    target = DetTargets(thing, torch.tensor([1]), stuff, torch.tensor([3]))
    mask_logits = torch.full((1, 4, 4, 4), -10.0)
    mask_logits[0, 1] = thing[0] * 20 - 10  # kernel 1 predicts the thing
    mask_logits[0, 3] = stuff[0] * 20 - 10  # stuff kernel of class 3
    cls = torch.full((1, 4, 4), -10.0)
    cls[0, 1, 1] = 10.0
    cls[0, 3, 3] = 10.0
    results = criterion.assign(mask_logits, [mask_logits], [cls], [target])["rpn"]
    assert results[0].gt_inds.tolist() == [0, 1]
    losses = criterion.stage_losses(mask_logits, cls, results, [target])
    assert float(losses["pos_acc"]) == 100.0
    assert float(losses["loss_dice"]) < 1e-3 and float(losses["loss_cls"]) < 1e-3
    # Thing kernels are not asked about stuff classes, stuff kernels only about their own class:
    # raising a thing kernel's stuff logit or stuff kernel 2's thing logit changes nothing.
    cls_other = cls.clone()
    cls_other[0, 0, 3] = 10.0
    cls_other[0, 2, 0] = 10.0
    assert float(criterion.stage_losses(mask_logits, cls_other, results, [target])["loss_cls"]) == \
        float(losses["loss_cls"])


@pytest.mark.parametrize("weight_kind", [None, "rows", "elements"])
def test_sigmoid_focal_loss_gradient_equals_autograd_of_the_formula(weight_kind, monkeypatch):
    """The written-out backward (which keeps only logits and labels) against autograd through
    the plain formula, in float64, over several bands of rows."""
    import knet.losses.mask_losses as mask_losses

    monkeypatch.setattr(mask_losses, "_FOCAL_CHUNK_ELEMENTS", 20)  # 4 rows of 5 classes a band
    generator = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(13, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 6, (13,), generator=generator)  # 5 = background
    weight = {None: None, "rows": torch.rand(13, generator=generator, dtype=torch.float64),
              "elements": torch.rand(13, 5, generator=generator, dtype=torch.float64)}[weight_kind]
    plain = logits.detach().clone().requires_grad_()
    target = F.one_hot(labels, 6)[:, :5].to(plain.dtype)
    p = plain.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    terms = (F.binary_cross_entropy_with_logits(plain, target, reduction="none")
             * (0.25 * target + 0.75 * (1 - target)) * pt.pow(2.0))
    if weight is not None:
        terms = terms * (weight.view(-1, 1) if weight.dim() == 1 else weight)
    expected = terms.sum() / (3.0 + torch.finfo(torch.float32).eps)
    loss = sigmoid_focal_loss(logits, labels, weight, avg_factor=3.0)
    assert torch.allclose(loss, expected, rtol=1e-12)
    loss.backward()
    expected.backward(retain_graph=True)
    assert torch.allclose(logits.grad, plain.grad, rtol=1e-10, atol=1e-14)
    # and with the mean reduction
    logits.grad = None
    sigmoid_focal_loss(logits, labels, weight).backward()
    assert torch.allclose(logits.grad, torch.autograd.grad(terms.mean(), plain)[0], rtol=1e-10, atol=1e-14)


def test_elementary_losses_against_direct_formulas():
    logits = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.1, -2.0]])
    labels = torch.tensor([1, 3])  # 3 = background
    target = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = logits.sigmoid()
    pt = torch.where(target == 1, 1 - p, p)
    alpha = torch.where(target == 1, 0.25, 0.75)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    expected = (alpha * pt ** 2 * bce).sum() / 3
    assert torch.allclose(sigmoid_focal_loss(logits, labels, avg_factor=3.0), expected, rtol=1e-5)

    prob = torch.tensor([[0.2, 0.9], [0.6, 0.1]])
    mask_target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    dice = 1 - 2 * (prob * mask_target).sum() / ((prob ** 2).sum() + 1e-3 + (mask_target ** 2).sum() + 1e-3)
    assert torch.allclose(dice_loss(torch.logit(prob)[None], mask_target[None]), dice, rtol=1e-5)

    # Rank targets: a later positive kernel overwrites an earlier one; uncovered pixels are ignored.
    targets = torch.zeros(2, 1, 3)  # kernels 0 and 2, in that order
    targets[0, 0, :2] = 1
    targets[1, 0, 1:2] = 0.3
    positive = torch.tensor([[True, False, True]])
    rank_targets = build_rank_targets(targets, positive)
    assert rank_targets.tolist() == [[[0, 2, 255]]]
    scores = torch.randn(1, 3, 1, 3)
    expected_rank = (F.cross_entropy(scores[..., 0], torch.tensor([[0]]), reduction="sum")
                     + F.cross_entropy(scores[..., 1], torch.tensor([[2]]), reduction="sum")) / 3
    assert torch.allclose(rank_loss(scores, rank_targets), expected_rank, rtol=1e-5)

    assert float(accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))) == 50.0
    assert float(accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))) == 0.0


def test_rank_loss_of_coarse_logits_equals_the_loss_of_the_upsampled_logits(one_thread):
    """Stride-8 logits against stride-4 rank targets: the banded upsampling gives the value and the
    gradient of upsampling all of them x2 and taking the cross-entropy there."""
    generator = torch.Generator().manual_seed(0)
    coarse = (3 * torch.randn(2, 7, 5, 6, generator=generator)).requires_grad_()
    rank_targets = torch.randint(-1, 7, (2, 10, 12), generator=generator)
    loss = rank_loss(coarse, rank_targets, ignore_index=-1)
    (grad,) = torch.autograd.grad(loss, coarse)
    upsampled = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, rank_targets, ignore_index=-1, reduction="none").mean()
    (expected_grad,) = torch.autograd.grad(expected, coarse)
    assert torch.allclose(loss, expected, rtol=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-9)

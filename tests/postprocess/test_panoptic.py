"""Panoptic post-processing reproduces the official get_panoptic / merge_stuff_thing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from knet.postprocess import merge_panoptic, panoptic_candidates, panoptic_inference, reference_encoding
from tests.conftest import golden_path


@pytest.fixture(scope="module", params=["knet-det-panoptic", "knet-det-panoptic-swin"])
def golden(request):
    return request.param, dict(np.load(golden_path(f"det/{request.param}.tiny.npz")))


def image_inputs(ref, i):
    return (torch.from_numpy(ref["s2_cls_score"][i]), torch.from_numpy(ref["s2_scaled_mask_preds"][i]),
            ref["img_shape"][i], ref["batch_input_shape"], ref["ori_shape"][i])


@pytest.mark.parametrize("i", [0, 1])
def test_merge_of_reference_candidates_is_exact(golden, i):
    name, ref = golden
    masks, labels, scores = (torch.from_numpy(ref[f"pan_total_{k}_{i}"]) for k in ("masks", "labels", "scores"))
    result = merge_panoptic(masks, labels, scores)
    assert result.segment_map.dtype == torch.int32 and result.segment_map.shape == masks.shape[1:]
    np.testing.assert_array_equal(reference_encoding(result).numpy(), ref[f"pan_{i}"], err_msg=f"{name} pan_{i}")
    # Segments are numbered 1.. in score order and describe the map.
    assert [s.id for s in result.segments] == list(range(1, len(result.segments) + 1))
    assert all(a.score >= b.score for a, b in zip(result.segments, result.segments[1:]))
    for segment in result.segments:
        assert int((result.segment_map == segment.id).sum()) == segment.area
        assert segment.label == int(labels[segment.proposal]) and segment.score == float(scores[segment.proposal])
        assert segment.is_thing == (segment.label < 80) == (segment.proposal < 10)


@pytest.mark.parametrize("i", [0, 1])
def test_candidates_and_inference_match_reference(golden, i):
    name, ref = golden
    masks, labels, scores = panoptic_candidates(*image_inputs(ref, i))
    np.testing.assert_array_equal(labels.numpy(), ref[f"pan_total_labels_{i}"])
    assert np.abs(scores.numpy() - ref[f"pan_total_scores_{i}"]).max() <= 1e-5
    assert np.abs(masks.numpy() - ref[f"pan_total_masks_{i}"]).max() <= 1e-5
    pan = reference_encoding(panoptic_inference(*image_inputs(ref, i))).numpy()
    assert (pan != ref[f"pan_{i}"]).mean() <= 0.005, f"{name} pan_{i}"


def test_merge_rules():
    # 3 candidates on a 4x4 image: a confident thing on the left half, a weak thing on the right
    # half, and a stuff class everywhere at low probability.
    masks = torch.zeros(3, 4, 4)
    masks[0, :, :2] = 1.0
    masks[1, :, 2:] = 1.0
    masks[2] = 0.6
    labels = torch.tensor([5, 7, 100])
    scores = torch.tensor([0.9, 0.2, 0.25])
    result = merge_panoptic(masks, labels, scores)
    # The weak thing is dropped (score < 0.3) but keeps its pixels from the stuff, so they are void;
    # the stuff wins no pixel, so it is no segment either.
    assert [(s.id, s.label, s.proposal, s.area, s.is_thing) for s in result.segments] == [(1, 5, 0, 8, True)]
    assert (result.segment_map[:, :2] == 1).all() and (result.segment_map[:, 2:] == 0).all()
    # The threshold is a parameter; stuff has none.
    result = merge_panoptic(masks, labels, scores, instance_score_thr=0.1)
    assert [(s.id, s.label) for s in result.segments] == [(1, 5), (2, 7)]
    # A stuff segment that keeps less than overlap_thr of its own mask (prob >= 0.5) is dropped:
    # scored 0.5 the stuff wins the right half (0.3 > 0.2), 8 of its 16 mask pixels.
    scores = torch.tensor([0.9, 0.2, 0.5])
    result = merge_panoptic(masks, labels, scores)
    assert [s.label for s in result.segments] == [5]
    result = merge_panoptic(masks, labels, scores, overlap_thr=0.5)
    assert [(s.id, s.label, s.area) for s in result.segments] == [(1, 5, 8), (2, 100, 8)]


def test_votes_winner_is_the_weighted_argmax_with_its_ties():
    from knet.postprocess.panoptic import PanopticVotes

    generator = torch.Generator().manual_seed(0)
    # Values on a coarse grid, so that many pixels tie between candidates (also across chunks).
    masks = torch.randint(0, 4, (37, 9, 11), generator=generator).float() / 4
    scores = torch.randint(1, 3, (37,), generator=generator).float() / 2
    expected = (scores[:, None, None] * masks).argmax(dim=0)
    for chunk in (1, 5, 16, 64):
        votes = PanopticVotes(scores)
        for start in range(0, masks.shape[0], chunk):
            votes.add(start, masks[start:start + chunk])
        assert votes.winner is not None and torch.equal(votes.winner.long(), expected)


def test_votes_order_probabilities_of_every_magnitude_as_numbers():
    # The votes compare the float32 bits as integers: zeros, denormals and values near 1 must
    # order as numbers do, and a negative score (which would not) is refused.
    from knet.postprocess.panoptic import PanopticVotes

    generator = torch.Generator().manual_seed(1)
    exponents = torch.randint(-140, 1, (23, 7, 5), generator=generator).float()
    masks = torch.rand((23, 7, 5), generator=generator) * torch.pow(2.0, exponents)
    masks[:, 0] = 0.0
    masks[3:, 1] = 1e-40  # a denormal
    scores = torch.rand(23, generator=generator)
    votes = PanopticVotes(scores)
    votes.add(0, masks)
    assert votes.winner is not None
    assert torch.equal(votes.winner.long(), (scores[:, None, None] * masks).argmax(dim=0))
    assert (votes.winner[0] == 0).all()
    with pytest.raises(ValueError, match="scores must be >= 0"):
        PanopticVotes(torch.tensor([0.5, -0.1]))


@pytest.mark.parametrize("i", [0, 1])
def test_streamed_inference_equals_the_merge_of_all_candidates(golden, i):
    # panoptic_inference rescales and counts a few masks at a time; merging every rescaled
    # candidate at once gives the same map and segments.
    _, ref = golden
    inputs = image_inputs(ref, i)
    # Scores pushed up so that several things pass the threshold of these tiny models.
    cls_logits = inputs[0] + 3.0
    streamed = panoptic_inference(cls_logits, *inputs[1:])
    merged = merge_panoptic(*panoptic_candidates(cls_logits, *inputs[1:]))
    assert torch.equal(streamed.segment_map, merged.segment_map)
    assert streamed.segments == merged.segments and len(streamed.segments) > 0


def test_votes_come_in_kernel_order():
    from knet.postprocess.panoptic import PanopticVotes

    votes = PanopticVotes(torch.ones(4))
    votes.add(0, torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="expected 2, got 3"):
        votes.add(3, torch.rand(1, 3, 3))
    votes.add(2, torch.rand(2, 3, 3))
    assert len(votes.mask_areas) == 4

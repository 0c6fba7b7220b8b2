"""The void label of the semantic maps (``data.ignore_index``) in the panoptic losses: any value
gives the losses of 255, void pixels never become stuff targets, and a map whose void value is
not the one the targets are prepared with fails clearly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from knet.losses import KNetDetCriterion, prepare_targets

THINGS, STUFF, PROPOSALS = 2, 2, 4  # 6 kernels: a void label of 5 is also a kernel index


def _batch(void: int):
    """Two 32x40 images: thing masks, stuff bands and void pixels marked ``void``."""
    rng = np.random.default_rng(0)
    masks, labels, maps = [], [], []
    for i, (h, w) in enumerate(((32, 40), (24, 40))):
        thing = np.zeros((2, h, w), dtype=np.uint8)
        thing[0, 2:10, 3:15] = 1
        thing[1, 12:20, 20 + i:35] = 1
        sem = np.full((h, w), THINGS, dtype=np.uint8)
        sem[h // 2:] = THINGS + 1
        sem[thing[0] == 1], sem[thing[1] == 1] = 0, 1
        sem[rng.random((h, w)) < 0.2] = void
        sem[:, :4] = void
        masks.append(torch.from_numpy(thing))
        labels.append(torch.tensor([0, 1 - i]))
        maps.append(torch.from_numpy(sem))
    return masks, labels, maps


def _predictions(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    kernels, classes = PROPOSALS + STUFF, THINGS + STUFF
    return (torch.randn(2, kernels, 4, 5, generator=g), torch.randn(2, classes, 4, 5, generator=g),
            [torch.randn(2, kernels, 4, 5, generator=g) for _ in range(2)],
            [torch.randn(2, kernels, classes, generator=g) for _ in range(2)])


def _losses(void: int, ignore_index: int):
    masks, labels, maps = _batch(void)
    targets = prepare_targets(masks, labels, (32, 40), maps, num_thing_classes=THINGS, ignore_index=ignore_index)
    criterion = KNetDetCriterion(num_thing_classes=THINGS, num_stuff_classes=STUFF, num_proposals=PROPOSALS,
                                 num_stages=2)
    return targets, criterion(*_predictions(), targets)


@pytest.mark.parametrize("void", [5, 200, 254])
def test_any_void_label_gives_the_losses_of_255(void, one_thread):
    reference_targets, reference = _losses(255, 255)
    targets, losses = _losses(void, void)
    for got, want in zip(targets, reference_targets):
        assert got.stuff_labels.tolist() == want.stuff_labels.tolist() == [THINGS, THINGS + 1]
        torch.testing.assert_close(got.stuff_masks, want.stuff_masks, rtol=0, atol=0)
    assert sorted(losses) == sorted(reference)
    for key in reference:
        torch.testing.assert_close(losses[key], reference[key], rtol=0, atol=0, msg=key)


def test_void_pixels_are_in_no_stuff_target():
    masks, labels, maps = _batch(200)
    # Stride 1, so that the targets are the maps' own pixels (the padding included).
    for target, sem in zip(prepare_targets(masks, labels, (32, 40), maps, THINGS, assign_stride=1,
                                           ignore_index=200), maps):
        covered = target.stuff_masks.sum(0)
        h, w = sem.shape
        assert (covered[:h, :w][sem == 200] == 0).all() and (covered[h:] == 0).all()
        for mask, label in zip(target.stuff_masks, target.stuff_labels):
            assert torch.equal(mask[:h, :w].bool(), sem == label)


def test_a_map_with_another_void_value_fails_clearly(one_thread):
    pattern = r"holds the value 200, which is neither a class \(0\.\.3\) nor the void label.*data\.ignore_index"
    with pytest.raises(ValueError, match=pattern):
        _losses(200, 255)

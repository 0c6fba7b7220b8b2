"""The training data stream: sharding, resuming and reshuffling of the sampler, and
augmentation seeded by the sample number."""
from __future__ import annotations

import pytest
import torch

import knet
from knet.engine.train_data import InfiniteSampler, TrainSamples
from knet.errors import KnetError


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------
def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_sampler_shards_resumes_and_reshuffles():
    size, world = 10, 3
    streams = [_take(iter(InfiniteSampler(size, seed=5, rank=r, world_size=world)), 8) for r in range(world)]
    per_rank = 4  # ceil(10 / 3)
    first_epoch = [key for s in streams for key in s[:per_rank]]
    assert {i for i, _ in first_epoch} == set(range(size))  # the epoch covers the dataset (padded)
    numbers = [n for s in streams for _, n in s]
    assert len(set(numbers)) == len(numbers)  # sample numbers are unique over ranks
    full = _take(iter(InfiniteSampler(size, seed=5, rank=1, world_size=world)), 11)
    resumed = _take(iter(InfiniteSampler(size, seed=5, rank=1, world_size=world, start=6)), 5)
    assert resumed == full[6:]
    one = InfiniteSampler(size, seed=5)
    assert one.order(0) != one.order(1) and sorted(one.order(1)) == list(range(size))
    with pytest.raises(KnetError):
        InfiniteSampler(0, seed=0)


def test_augmentation_depends_on_sample_number_not_worker(toy):
    from knet.data.datasets import build_dataset
    from knet.data.transforms import TrainPipeline
    from knet.tasks import get_task

    cfg = knet.get_config("knet-r50-fcn-tiny", {"data.crop_size": "64,64", "data.train_scale": "64,64"})
    samples = TrainSamples(build_dataset("folder", toy.root, "train"), TrainPipeline(cfg.data), seed=1,
                           task=get_task("semantic"), config=cfg)
    a, b, c = samples[(3, 17)], samples[(3, 17)], samples[(3, 18)]
    assert a[0].shape == (3, 64, 64) and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])

"""The training data stream: an endless, resumable, rank-sharded sampler whose keys carry a
global sample number, and the dataset adapter that augments each sample with a generator
seeded by that number (so the stream is the same for any number of data workers). What a
sample is (tensors of an image and its label map, or a padded image with its masks) is the
task's (:meth:`knet.tasks.Task.train_sample`, :meth:`~knet.tasks.Task.collate`).
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import DataError
from ..tasks import Task
from ..tasks.semantic import to_tensors

__all__ = [
    "InfiniteSampler",
    "TrainSamples",
    "TrainTransform",
    "to_tensors",
    "worker_init",
]


class InfiniteSampler(Sampler):
    """Endless shuffled sample keys for one rank, resumable at any position.

    Epoch ``e`` is a permutation of the dataset drawn from ``seed + e``, padded (by repeating its
    start) to a multiple of the world size; rank ``r`` takes slots ``r, r + W, r + 2W, ...``.
    Each key is ``(dataset index, global sample number)``; the sample number seeds that sample's
    augmentation, so the stream does not depend on the number of data workers. ``start`` is the
    number of samples this rank has already consumed.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0) -> None:
        if size <= 0:
            raise DataError("the training set is empty")
        self.size = int(size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.start = int(start)
        self.per_rank = math.ceil(self.size / self.world_size)
        self.padded = self.per_rank * self.world_size

    def order(self, epoch: int) -> List[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        while len(order) < self.padded:
            order += order[: self.padded - len(order)]
        return order

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            order = self.order(epoch)
            for k in range(offset, self.per_rank):
                slot = self.rank + k * self.world_size
                yield order[slot], epoch * self.padded + slot
            epoch, offset = epoch + 1, 0


TrainTransform = Callable[[np.ndarray, Any, np.random.Generator], Any]


class TrainSamples(Dataset):
    """Adapts a dataset (items with ``image`` uint8 HxWx3 RGB and the task's labels) to the
    training loop: key ``(index, sample number)`` -> the task's training sample of that item
    (:meth:`knet.tasks.Task.train_sample`; semantic: ``(image (3,H,W) float32 normalised, label
    (H,W) int64)``), augmented by ``transform`` with a generator seeded by ``(seed, sample
    number)``."""

    def __init__(self, dataset: Any, transform: TrainTransform, seed: int, task: Task, config: Any) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.task = task
        self.config = config

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, number = key
        rng = np.random.default_rng([self.seed, int(number)])
        return self.task.train_sample(self.dataset[int(index)], self.transform, rng, self.config)


def worker_init(worker_id: int) -> None:
    """Seed a data worker's python/numpy from its torch seed (itself derived from the loader's
    seeded generator), for any randomness outside the per-sample generators."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)

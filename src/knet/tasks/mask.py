"""What the panoptic (:mod:`.panoptic`) and instance (:mod:`.instance`) tasks share: the COCO
datasets and their classes, the official ``knet/det`` training data path and losses, the
mmdetection test pipeline, and the collectives their evaluators need under torchrun.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import KNetMaskConfig
from ..data.mask_transforms import MaskBatch, MaskSample, MaskTrainTransform, collate_mask_samples
from ..losses import DetTargets, KNetDetCriterion, batch_targets
from ..models.outputs import KNetOutput
from .base import ReduceMean, Task

# The class-count dimension of the panoptic/instance models' weights: the kernel head's semantic
# classifier (whose stuff rows are also the stuff kernels) and each stage's classifier. The
# presets have three stages.
MASK_CLASS_DEPENDENT_KEYS: Tuple[str, ...] = (
    "kernel_head.conv_seg.weight",
    "kernel_head.conv_seg.bias",
    *(f"kernel_update_head.{stage}.fc_cls.{p}" for stage in range(3) for p in ("weight", "bias")),
)

# mmdetection's training sets drop images whose shorter side is below this.
TRAIN_MIN_SIZE = 32


class MaskTask(Task):
    """What the panoptic and instance tasks share: COCO datasets (training sets without images
    that hold no thing, as mmdetection's ``filter_empty_gt``), the official training augmentation
    (:class:`~knet.data.mask_transforms.MaskTrainTransform`), the ``knet/det`` losses and the
    mmdetection test pipeline (:class:`~knet.inference.mask_pipeline.MaskTestPipeline`)."""

    class_dependent_keys = MASK_CLASS_DEPENDENT_KEYS
    onnx_outputs = ("cls_logits", "mask_logits")
    onnx_check_shape = (1, 3, 96, 64)  # multiples of 32, as the pipeline pads
    # Whether the model also segments stuff (its criterion matches the stuff kernels too).
    panoptic = False

    # ---- datasets ----------------------------------------------------------------------
    def dataset_options(self, config: KNetMaskConfig, training: bool) -> Dict[str, Any]:
        options: Dict[str, Any] = {"ignore_index": config.data.ignore_index}
        if training:
            options.update(filter_empty_gt=True, min_size=TRAIN_MIN_SIZE)
        return options

    def default_splits(self, root: Path) -> Tuple[str, str]:
        """COCO's ``train2017`` / ``val2017`` when the root has their json, else ``train`` / ``val``."""
        from ..data.coco import annotation_file

        if annotation_file(root, "train2017", self.dataset_kinds[0])[0] is not None:
            return "train2017", "val2017"
        return "train", "val"

    def adopt_classes(self, config: KNetMaskConfig, dataset: Any) -> KNetMaskConfig:
        """The config with the dataset's things and stuff: their numbers, names, colours, thing
        flags and category ids (a COCO dataset's ``num_thing_classes``, ``category_ids``, ...)."""
        return config.replace(num_thing_classes=int(dataset.num_thing_classes),
                              num_stuff_classes=int(dataset.num_stuff_classes),
                              class_names=[str(n) for n in dataset.class_names],
                              palette=[[int(c) for c in colour] for colour in dataset.palette],
                              isthing=[bool(t) for t in dataset.isthing],
                              category_ids=[int(i) for i in dataset.category_ids])

    # ---- training ----------------------------------------------------------------------
    def train_transform(self, config: KNetMaskConfig) -> MaskTrainTransform:
        """Keep-ratio resize to one of ``data.train_scales``, flip, normalise, pad to
        ``data.size_divisor``, semantic maps with ``data.ignore_index``
        (``(image, item, rng) -> MaskSample``)."""
        data = config.data
        return MaskTrainTransform(scales=[tuple(s) for s in data.train_scales], multiscale_mode=data.multiscale_mode,
                                  flip_prob=data.flip_prob, mean=data.mean, std=data.std,
                                  size_divisor=data.size_divisor, seg_pad_value=data.ignore_index)

    def train_sample(self, item: Dict[str, Any], transform: Any, rng: np.random.Generator,
                     config: KNetMaskConfig) -> MaskSample:
        return transform(item["image"], item, rng)

    def collate(self, samples: Sequence[MaskSample]) -> MaskBatch:
        """Pads the semantic maps with the value the samples carry (the transform's ``data.ignore_index``)."""
        return collate_mask_samples(samples)

    def batch_inputs(self, batch: MaskBatch, config: KNetMaskConfig,
                     device: torch.device) -> Tuple[torch.Tensor, List[DetTargets]]:
        """The padded images and one :class:`~knet.losses.DetTargets` per image at stride 4,
        computed on ``device``."""
        batch = batch.to(device)
        return batch.images, batch_targets(batch, config.num_thing_classes, ignore_index=config.data.ignore_index)

    def losses(self, output: KNetOutput, targets: Sequence[DetTargets], config: KNetMaskConfig,
               reduce_mean: Optional[ReduceMean] = None) -> Dict[str, torch.Tensor]:
        """The official losses (:class:`~knet.losses.KNetDetCriterion`), keyed ``s{k}_loss_*`` and
        ``loss_rpn_*``; the stages' ``pos_acc`` accuracies are left out so that the values sum to
        the objective.

        ``output``: a forward pass with every stage (``KNetMaskSegmentor.outputs``);
        ``targets``: one :class:`~knet.losses.DetTargets` per image at stride 4 of the padded
        batch (:func:`knet.losses.prepare_targets`); ``reduce_mean``: under torchrun, the
        class losses are normalised by the mean number of positives over the processes.
        """
        criterion = self._criterion(config, reduce_mean)
        predictions = [output.mask_logits[0], output.semantic_logits, list(output.mask_logits[1:]),
                       list(output.cls_logits[1:])]
        finite = bool(torch.stack([torch.isfinite(t.detach()).all() for t in _tensors(predictions)]).all())
        if not finite:
            # The Hungarian matching of non-finite predictions is undefined (scipy refuses it):
            # match finite stand-ins and return NaN losses, the same keys as always, so that the
            # trainer stops as for any diverged loss (every rank with the same losses).
            predictions = _map_tensors(predictions, lambda t: torch.nan_to_num(t.detach(), 0.0, 0.0, 0.0))
        values = criterion(*predictions, targets)
        losses = {key: value for key, value in values.items() if "loss" in key}
        if not finite:
            losses = {key: value * float("nan") for key, value in losses.items()}
        return losses

    def _criterion(self, config: KNetMaskConfig, reduce_mean: Optional[ReduceMean]) -> KNetDetCriterion:
        """The criterion of ``config``'s loss settings, built on the first call and kept while the
        settings (and ``reduce_mean``) stay the same: a run builds it once, not per step."""
        key = (config.num_thing_classes, config.num_stuff_classes, config.kernel_head.num_proposals, config.task,
               config.kernel_update.num_stages, dataclasses.astuple(config.loss))
        cached = getattr(self, "_cached_criterion", None)
        if cached is not None and cached[0] == key and cached[1] is reduce_mean:
            return cached[2]
        loss = config.loss
        criterion = KNetDetCriterion(
            num_thing_classes=config.num_thing_classes, num_stuff_classes=config.num_stuff_classes,
            num_proposals=config.kernel_head.num_proposals, panoptic=self.panoptic,
            num_stages=config.kernel_update.num_stages, stage_loss_weights=loss.stage_weights,
            cls_loss_weight=loss.cls_weight, mask_loss_weight=loss.mask_weight, dice_loss_weight=loss.dice_weight,
            rank_loss_weight=loss.rank_weight, seg_loss_weight=loss.seg_weight, cls_cost_weight=loss.cls_cost,
            mask_cost_weight=loss.mask_cost, dice_cost_weight=loss.dice_cost, focal_alpha=loss.focal_alpha,
            focal_gamma=loss.focal_gamma, reduce_mean=reduce_mean)
        self._cached_criterion = (key, reduce_mean, criterion)
        return criterion

    def synthetic_batch(self, config: KNetMaskConfig, batch_size: int, height: int, width: int,
                        rng: np.random.Generator) -> MaskBatch:
        """Images padded to the config's size divisor as the training transform pads them, 2-5
        non-overlapping rectangles as things of random thing classes and, for a model with stuff, a
        semantic map of horizontal bands of random stuff classes under the things
        (``data.ignore_index`` in the padding)."""
        divisor = int(config.data.size_divisor)
        pad_h, pad_w = -(-height // divisor) * divisor, -(-width // divisor) * divisor
        samples = []
        for _ in range(batch_size):
            image = np.zeros((3, pad_h, pad_w), dtype=np.float32)
            image[:, :height, :width] = rng.standard_normal((3, height, width), dtype=np.float32)
            occupied = np.zeros((pad_h, pad_w), dtype=bool)
            masks = []
            for _ in range(int(rng.integers(2, 6))):
                box_h = int(rng.integers(max(1, height // 8), max(2, height // 2) + 1))
                box_w = int(rng.integers(max(1, width // 8), max(2, width // 2) + 1))
                y0, x0 = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
                mask = np.zeros((pad_h, pad_w), dtype=bool)
                mask[y0:y0 + box_h, x0:x0 + box_w] = True
                mask &= ~occupied  # things do not overlap, as in COCO panoptic
                if mask.any():
                    occupied |= mask
                    masks.append(mask)
            labels = rng.integers(0, config.num_thing_classes, len(masks), dtype=np.int64)
            sem_seg = None
            if config.num_stuff_classes > 0:
                sem_seg = np.full((pad_h, pad_w), config.data.ignore_index, dtype=np.uint8)
                bands = np.linspace(0, height, int(rng.integers(2, 4)) + 1).astype(int)
                for top, bottom in zip(bands[:-1], bands[1:]):
                    sem_seg[top:bottom, :width] = config.num_thing_classes + int(rng.integers(config.num_stuff_classes))
                for mask, label in zip(masks, labels):
                    sem_seg[mask] = label
            stacked = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, pad_h, pad_w), dtype=np.uint8)
            samples.append(MaskSample(image=image, masks=stacked, labels=labels, sem_seg=sem_seg,
                                      img_shape=(height, width), flipped=False, scale_factor=(1.0, 1.0)))
        return self.collate(samples)

    # ---- inference ---------------------------------------------------------------------
    def pipeline(self, model: Any, **options: Any) -> Any:
        """The mmdetection test pipeline, finishing with this task's :meth:`postprocess`."""
        from ..inference.mask_pipeline import MaskTestPipeline

        return MaskTestPipeline(model, self.postprocess, **options)

    def postprocess(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor, prepared: Any,
                    config: KNetMaskConfig) -> Any:
        """One image's last-stage class logits (K, C) and stride-4 mask logits (K, H/4, W/4), and its
        :class:`~knet.data.mask_transforms.TestInput` -> its prediction at the original size."""
        raise NotImplementedError


def _tensors(nested: Any) -> List[torch.Tensor]:
    if isinstance(nested, torch.Tensor):
        return [nested]
    return [t for item in nested for t in _tensors(item)]


def _map_tensors(nested: Any, fn: Any) -> Any:
    if isinstance(nested, torch.Tensor):
        return fn(nested)
    return [_map_tensors(item, fn) for item in nested]


def dataset_class_meta(dataset: Any) -> Any:
    """The :class:`~knet.inference.results.ClassMeta` of a COCO dataset's classes (names,
    category ids, thing flags, colours), for results written in the dataset's ids."""
    from ..inference.results import ClassMeta

    return ClassMeta([str(n) for n in dataset.class_names], [int(i) for i in dataset.category_ids],
                     [bool(t) for t in dataset.isthing], [tuple(int(v) for v in c) for c in dataset.palette])


# --------------------------------------------------------------------------------------------
# Collectives of the evaluators (torch.distributed directly: the engine sits above the tasks)
# --------------------------------------------------------------------------------------------
def distributed(dist_info: Any) -> bool:
    return dist_info is not None and bool(dist_info.distributed)


def gather_objects(obj: Any, dist_info: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    if not distributed(dist_info):
        return [obj]
    import torch.distributed as dist

    gathered: List[Any] = [None] * dist_info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def from_main(obj: Any, dist_info: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not distributed(dist_info):
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]

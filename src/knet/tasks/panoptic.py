"""Panoptic segmentation (things and stuff, scored by PQ) and what it shares with instance
segmentation (:mod:`.instance`): the losses, the test pipeline and the drawing of segments.

Not yet here: the COCO evaluators and the training augmentation (they need the COCO datasets);
those methods are the base class's, which raise NotImplementedError.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..config import KNetMaskConfig
from ..losses import DetTargets, KNetDetCriterion
from ..models.outputs import KNetOutput
from .base import Task

# The class-count dimension of the panoptic/instance models' weights: the kernel head's semantic
# classifier (whose stuff rows are also the stuff kernels) and each stage's classifier. The
# presets have three stages.
MASK_CLASS_DEPENDENT_KEYS: Tuple[str, ...] = (
    "kernel_head.conv_seg.weight",
    "kernel_head.conv_seg.bias",
    *(f"kernel_update_head.{stage}.fc_cls.{p}" for stage in range(3) for p in ("weight", "bias")),
)


class MaskTask(Task):
    """What the panoptic and instance tasks share: the official ``knet/det`` losses and the
    mmdetection test pipeline (:class:`~knet.inference.mask_pipeline.MaskTestPipeline`)."""

    class_dependent_keys = MASK_CLASS_DEPENDENT_KEYS

    def losses(self, output: KNetOutput, targets: Sequence[DetTargets],
               config: KNetMaskConfig) -> Dict[str, torch.Tensor]:
        """The official losses (:class:`~knet.losses.KNetDetCriterion`), keyed ``s{k}_loss_*`` and
        ``loss_rpn_*``; the stages' ``pos_acc`` accuracies are left out so that the values sum to
        the objective.

        ``output``: a forward pass with every stage (``KNetMaskSegmentor.outputs``);
        ``targets``: one :class:`~knet.losses.DetTargets` per image at stride 4 of the padded
        batch (:func:`knet.losses.prepare_targets`).
        """
        criterion = KNetDetCriterion(
            num_thing_classes=config.num_thing_classes, num_stuff_classes=config.num_stuff_classes,
            num_proposals=config.kernel_head.num_proposals, panoptic=config.task == "panoptic",
            num_stages=config.kernel_update.num_stages, ignore_index=config.data.ignore_index)
        values = criterion(output.mask_logits[0], output.semantic_logits, output.mask_logits[1:],
                           output.cls_logits[1:], targets)
        return {key: value for key, value in values.items() if "loss" in key}

    def pipeline(self, model: Any, **options: Any) -> Any:
        from ..inference.mask_pipeline import MaskTestPipeline

        return MaskTestPipeline(model, **options)


class PanopticTask(MaskTask):
    name = "panoptic"
    best_metric = "PQ"
    summary_metrics = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")

    def visualize(self, image: np.ndarray, prediction: Any, palette: Sequence[Sequence[int]],
                  opacity: float = 0.5) -> np.ndarray:
        """uint8 (H, W, 3): every segment of a :class:`~knet.postprocess.PanopticResult` blended
        over ``image`` in its own colour (stuff: its class colour; things: their class colour,
        shifted for each further instance of a class) and outlined in it; void pixels unchanged."""
        segment_map = as_numpy(prediction.segment_map)
        segments = prediction.segments
        regions = [segment_map == segment.id for segment in segments]
        colours = segment_colours([segment.label for segment in segments],
                                   [segment.is_thing for segment in segments], palette)
        return draw_regions(image, regions, colours, opacity)


def as_numpy(value: Any) -> np.ndarray:
    """A tensor (on any device) or an array-like as a numpy array."""
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def segment_colours(labels: Sequence[int], is_thing: Sequence[bool],
                     palette: Sequence[Sequence[int]]) -> List[Tuple[int, int, int]]:
    """One RGB colour per segment: its class's; the n-th further instance of a thing class gets
    that colour moved by a fixed pseudo-random offset (seed n), so touching instances differ."""
    colours = []
    seen: Dict[int, int] = {}
    for label, thing in zip(labels, is_thing):
        label = int(label)
        if not 0 <= label < len(palette):
            raise ValueError(f"label {label} has no colour in a palette of {len(palette)}")
        colour = np.asarray(palette[label], dtype=np.float64)
        count = seen.get(label, 0)
        seen[label] = count + 1
        if thing and count:
            colour = colour + np.random.default_rng(count).uniform(-70, 70, size=3)
        colours.append(tuple(int(c) for c in np.clip(np.rint(colour), 0, 255)))
    return colours


def _outline(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` (bool (H, W)) with a 4-neighbour outside it (the image border does
    not count as outside)."""
    padded = np.pad(region, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def draw_regions(image: np.ndarray, regions: Sequence[np.ndarray], colours: Sequence[Sequence[int]],
                 opacity: float = 0.5) -> np.ndarray:
    """Blend each bool (H, W) region over a uint8 (H, W, 3) RGB image in its colour
    (``image * (1 - opacity) + colour * opacity``) and draw its outline in the full colour.
    Later regions are drawn over earlier ones. Returns a new uint8 (H, W, 3) image."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    out = image.astype(np.float32)
    for region, colour in zip(regions, colours):
        if region.shape != image.shape[:2]:
            raise ValueError(f"a region of size {region.shape} on an image of size {image.shape[:2]}")
        colour = np.asarray(colour, dtype=np.float32)
        out[region] = out[region] * (1.0 - opacity) + colour * opacity
        out[_outline(region)] = colour
    return np.rint(out).astype(np.uint8)

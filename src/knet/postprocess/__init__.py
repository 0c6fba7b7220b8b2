"""From the mask models' logits to final results: panoptic segment maps and instance lists."""
from __future__ import annotations

from .instance import InstancePrediction, instance_inference, rescale_masks
from .panoptic import (PanopticPrediction, PanopticSegment, merge_panoptic, panoptic_candidates, panoptic_inference,
                       reference_encoding)

__all__ = [
    "InstancePrediction",
    "PanopticPrediction",
    "PanopticSegment",
    "instance_inference",
    "merge_panoptic",
    "panoptic_candidates",
    "panoptic_inference",
    "reference_encoding",
    "rescale_masks",
]

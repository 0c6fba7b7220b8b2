"""The test pipeline of the panoptic and instance models (the reference's mmdetection 2.x one).

For uint8 RGB images of any size, step by step as the reference's configs:

1. keep-ratio resize to fit the test scale (1333, 800): factor ``min(1333 / long side, 800 /
   short side)`` (small images are enlarged), sides ``int(x * factor + 0.5)``, OpenCV bilinear on
   the uint8 image (its fixed-point result, not a float resize);
2. normalise ((x - mean) / std, RGB, float32);
3. pad bottom/right to a multiple of 32 with 0 (after normalising: 0 is the mean colour);
4. the model -> the last stage's class logits (K, C) and stride-4 mask logits (K, H/4, W/4);
5. the task's post-processing (:meth:`knet.tasks.mask.MaskTask.postprocess`, :mod:`knet.postprocess`)
   at the original size: a panoptic segment map or the top-scoring instances.

Batching: only images whose padded sizes are equal are stacked, so every image sees exactly the
input it would alone (K-Net's kernels pool features over every pixel, padding included, so padding
an image further would change its result).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import MASK_TASKS, KNetMaskConfig
from ..data.mask_transforms import TestInput, prepare_test_image, rescale_image
from ..data.transforms import Size
from ..errors import KnetError
from ..postprocess import InstancePrediction, PanopticPrediction
from .pipeline import as_runner, check_images

MaskPrediction = Union[PanopticPrediction, InstancePrediction]
# One image's (class logits, mask logits, TestInput, config) -> its prediction.
Postprocess = Callable[[torch.Tensor, torch.Tensor, TestInput, KNetMaskConfig], MaskPrediction]


class MaskTestPipeline:
    """The reference's test pipeline for a panoptic or instance model (see the module docstring).

    ``predict(images)`` maps uint8 (H, W, 3) RGB images to one :class:`PanopticPrediction` (panoptic
    models) or :class:`InstancePrediction` (instance models) each, at the image's size, on the model's
    device. Build it with the task (``knet.tasks.get_task(config.task).pipeline(model)``), which
    passes its post-processing; thresholds come from ``config.postprocess``.

    Args:
        model: a ``KNetMaskSegmentor`` built from a config (run where its parameters are, in eval
            mode; its train/eval flag is restored afterwards) or a model runner (see
            :class:`~knet.inference.pipeline.TorchRunner`: its call gives the last stage's class
            logits and stride-4 mask logits).
        postprocess: the task's step 5 (:meth:`knet.tasks.mask.MaskTask.postprocess`).
        test_scale: (width, height) to fit; default the config's ``data.test_scale``.
        size_divisor: pad to multiples of it; default the config's ``data.size_divisor``.
        mode, crop_size, stride, tta: the semantic pipeline's options, accepted so that generic
            callers can pass them; these models only run on whole images without augmentation.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, model: Any, postprocess: Postprocess, test_scale: Optional[Size] = None,
                 size_divisor: Optional[int] = None, mode: str = "whole", crop_size: Optional[Size] = None,
                 stride: Optional[Size] = None, tta: bool = False) -> None:
        if mode != "whole" or crop_size is not None or stride is not None or tta:
            raise KnetError("panoptic and instance models run on whole images: sliding-window inference and "
                            "multi-scale + flip testing are not available for them")
        self.mode, self.tta = mode, tta  # the semantic pipeline's attributes, for generic callers
        self.runner = as_runner(model)
        config = self.runner.config
        if getattr(config, "task", None) not in MASK_TASKS:
            raise KnetError(f"the mask test pipeline needs a panoptic or instance model, got a "
                            f"{getattr(config, 'task', type(config).__name__)} model")
        self.config: KNetMaskConfig = config
        self._postprocess = postprocess
        self.test_scale: Size = tuple(test_scale) if test_scale is not None else tuple(config.data.test_scale)
        self.size_divisor = int(size_divisor) if size_divisor is not None else int(config.data.size_divisor)
        if len(self.test_scale) != 2 or min(self.test_scale) <= 0:
            raise KnetError(f"test scale must be two positive integers (width, height), got {self.test_scale}")
        if self.size_divisor < 1:
            raise KnetError(f"size divisor must be a positive integer, got {self.size_divisor}")
        self.mean, self.std = tuple(config.data.mean), tuple(config.data.std)

    @property
    def device(self) -> torch.device:
        return self.runner.device

    # ---- steps -------------------------------------------------------------------------------
    def resize(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (h, w, 3) resized to fit the test scale (step 1)."""
        return rescale_image(image, self.test_scale)

    def prepare(self, image: np.ndarray) -> TestInput:
        """Steps 1-3 for one uint8 (H, W, 3) RGB image (the training pipeline's helpers)."""
        return prepare_test_image(image, self.test_scale, self.mean, self.std, self.size_divisor)

    @torch.no_grad()
    def logits(self, images: Sequence[np.ndarray]) -> List[Tuple[torch.Tensor, torch.Tensor, TestInput]]:
        """Per image: the class logits (K, C), the stride-4 mask logits (K, H/4, W/4) of its
        padded input, and its :class:`~knet.data.mask_transforms.TestInput`; in input order."""
        check_images(images)
        prepared = [self.prepare(image) for image in images]
        outputs: List[Optional[Tuple[torch.Tensor, torch.Tensor, TestInput]]] = [None] * len(images)
        for indices in _group_by_pad_shape(prepared).values():
            x = torch.from_numpy(np.stack([prepared[i].image for i in indices])).to(self.device)
            cls_logits, mask_logits = self.runner(x)
            for row, i in enumerate(indices):
                outputs[i] = (cls_logits[row], mask_logits[row], prepared[i])
        return outputs  # type: ignore[return-value]

    def postprocess(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor, prepared: TestInput) -> MaskPrediction:
        """Step 5 for one image: its logits -> its result at the original size."""
        return self._postprocess(cls_logits, mask_logits, prepared, self.config)

    # ---- public ------------------------------------------------------------------------------
    def predict(self, images: Sequence[np.ndarray]) -> List[MaskPrediction]:
        """Per uint8 (H, W, 3) RGB image its :class:`PanopticPrediction` or :class:`InstancePrediction`."""
        return [self.postprocess(cls_logits, mask_logits, prepared)
                for cls_logits, mask_logits, prepared in self.logits(images)]

    __call__ = predict


def _group_by_pad_shape(prepared: Sequence[TestInput]) -> Dict[Tuple[int, int], List[int]]:
    """Indices grouped by padded (H, W), groups in order of first appearance."""
    groups: Dict[Tuple[int, int], List[int]] = OrderedDict()
    for i, item in enumerate(prepared):
        groups.setdefault(item.pad_shape, []).append(i)
    return groups

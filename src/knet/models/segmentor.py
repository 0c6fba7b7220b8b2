"""KNet: backbone + iterative K-Net decode head + auxiliary FCN head."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import KNetConfig
from ..errors import KnetError
from ..presets import get_config
from .backbones import build_backbone
from .heads import FCNHead
from .knet.iterative_head import IterativeDecodeHead
from .layers import resize


class KNet(nn.Module):
    """K-Net semantic segmentor.

    Eval mode: ``model(x)`` maps normalised images (N,3,H,W) to class logits (N,C,H,W) at the
    input size. Train mode: ``model(x, labels)`` with labels (N,H,W) int64 (255 = ignore) returns
    the named losses ``decode.loss_ce.s0`` (initial prediction), ``.s1``..``.sS`` (each stage) and
    ``aux.loss_ce`` (auxiliary head, weight applied); their sum is the training objective.
    """

    def __init__(self, config: KNetConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.align_corners = config.align_corners
        self.ignore_index = config.data.ignore_index
        self.backbone = build_backbone(config.backbone)
        in_channels = list(self.backbone.out_channels)
        self.decode_head = IterativeDecodeHead(config.decode_head, config.kernel_update, in_channels,
                                               config.num_classes, config.align_corners)
        aux = config.auxiliary_head
        self.auxiliary_head: Optional[FCNHead] = None
        if aux.enabled:
            self.auxiliary_head = FCNHead(in_channels[aux.in_index], aux.channels, config.num_classes,
                                          in_index=aux.in_index, num_convs=aux.num_convs,
                                          concat_input=False, dropout_ratio=aux.dropout_ratio)

    # ---- inference ---------------------------------------------------------------------
    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) -> final-stage logits (N,C,H,W) at the input size."""
        feats = self.backbone(x)
        logits = self.decode_head(feats, all_stages=False)[-1]
        return resize(logits, x.shape[2:], self.align_corners)

    def slide_inference(self, x: torch.Tensor, crop_size: Tuple[int, int], stride: Tuple[int, int],
                        crops_per_batch: int = 8) -> torch.Tensor:
        """Sliding-window logits (N,C,H,W): overlapping crops (h,w) every stride (h,w), averaged.

        All windows of an image have the same size, so they run as batches of crops.
        """
        (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
        batch, _, height, width = x.shape
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        boxes = []
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
                boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
        logits = x.new_zeros((batch, self.num_classes, height, width))
        counts = x.new_zeros((1, 1, height, width))
        for start in range(0, len(boxes), crops_per_batch):
            chunk = boxes[start:start + crops_per_batch]
            crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            out = self.encode_decode(crops).reshape(len(chunk), batch, self.num_classes, *crops.shape[2:])
            for (y1, y2, x1, x2), crop_logits in zip(chunk, out):
                logits[:, :, y1:y2, x1:x2] += crop_logits
                counts[:, :, y1:y2, x1:x2] += 1
        return logits / counts

    def inference(self, x: torch.Tensor, mode: str = "whole", crop_size: Optional[Sequence[int]] = None,
                  stride: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Logits (N,C,H,W) at the input size, whole-image or sliding-window."""
        if mode == "whole":
            return self.encode_decode(x)
        if mode == "slide":
            crop = tuple(crop_size or self.config.data.crop_size[::-1])
            step = tuple(stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3)))
            return self.slide_inference(x, crop, step)
        raise KnetError(f"inference mode {mode!r} is not one of: whole, slide")

    # ---- training ----------------------------------------------------------------------
    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = resize(logits, labels.shape[1:], self.align_corners)
        # As the reference: the mean over all pixels of the batch, ignored ones included (as 0).
        loss = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index, reduction="none")
        return loss.mean()

    def forward_train(self, x: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.backbone(x)
        losses = {}
        for i, logits in enumerate(self.decode_head(feats)):
            losses[f"decode.loss_ce.s{i}"] = self._cross_entropy(logits, labels)
        if self.auxiliary_head is not None:
            aux_logits = self.auxiliary_head(feats)
            losses["aux.loss_ce"] = self.config.auxiliary_head.loss_weight * self._cross_entropy(aux_logits, labels)
        return losses

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        if labels is not None:
            return self.forward_train(x, labels)
        return self.encode_decode(x)


def build_model(name_or_config: Union[str, KNetConfig], overrides: Optional[Dict[str, Any]] = None,
                **kwargs: Any) -> KNet:
    """Build a K-Net from a preset name (see ``knet.list_presets()``) or a :class:`KNetConfig`.

    Overrides are dotted keys or nested dicts, e.g. ``build_model("knet-r50-fcn", num_classes=5)``
    or ``build_model("knet-swin-t-upernet", {"backbone.drop_path_rate": 0.1})``.
    """
    if isinstance(name_or_config, KNetConfig):
        config = name_or_config.replace(overrides, **kwargs) if (overrides or kwargs) else name_or_config
    else:
        config = get_config(name_or_config, overrides, **kwargs)
    return KNet(config)

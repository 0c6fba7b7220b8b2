"""KNet: backbone + iterative K-Net decode head + auxiliary FCN head; and :func:`build_model`,
which builds any K-Net (semantic, panoptic, instance) from a preset name or a config."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..config import KNetConfig, KNetMaskConfig, ModelConfig
from ..errors import KnetError
from ..presets import get_config
from ..utils.windows import sliding_windows
from .backbones import build_backbone
from .heads import FCNHead
from .knet.iterative_head import IterativeDecodeHead
from .layers import resize
from .mask_segmentor import KNetMaskSegmentor, build_mask_model
from .outputs import KNetOutput


class KNet(nn.Module):
    """K-Net semantic segmentor.

    ``model(x)`` maps normalised images (N,3,H,W) to class logits (N,C,H,W) at the input size;
    :meth:`outputs` gives every prediction (each stage's, the auxiliary head's). The model computes
    no losses: the semantic task does, from the outputs
    (``knet.tasks.get_task("semantic").losses(model.outputs(x), labels, model.config)``).
    """

    def __init__(self, config: KNetConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.align_corners = config.align_corners
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

    # ---- outputs -------------------------------------------------------------------------
    def outputs(self, x: torch.Tensor, all_stages: bool = True, with_aux: Optional[bool] = None) -> KNetOutput:
        """Every prediction for normalised images (N, 3, H, W), no losses.

        ``mask_logits``: the kernel-generate head's class logits, then each stage's, (N, C, h, w)
        at the head's stride; with ``all_stages=False`` the last stage's only. ``aux_logits``: the
        auxiliary head's (N, C, h', w') when the model has one and ``with_aux`` (default: in
        training mode), else None.
        """
        feats = self.backbone(x)
        masks = self.decode_head(feats, all_stages=all_stages)
        with_aux = self.training if with_aux is None else with_aux
        aux = self.auxiliary_head(feats) if (self.auxiliary_head is not None and with_aux) else None
        return KNetOutput(mask_logits=masks, aux_logits=aux)

    # ---- inference ---------------------------------------------------------------------
    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) -> final-stage logits (N,C,H,W) at the input size."""
        logits = self.outputs(x, all_stages=False).final_masks
        return resize(logits, x.shape[2:], self.align_corners)

    def slide_inference(self, x: torch.Tensor, crop_size: Tuple[int, int], stride: Tuple[int, int],
                        crops_per_batch: int = 8) -> torch.Tensor:
        """Sliding-window logits (N,C,H,W): overlapping crops (h,w) every stride (h,w), averaged.

        All windows of an image have the same size, so they run as batches of crops.
        """
        batch, _, height, width = x.shape
        boxes = sliding_windows(height, width, crop_size, stride)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_decode(x)


# The model class of each config class: semantic K-Net, or the panoptic/instance K-Net.
MODEL_BUILDERS: Dict[type, Callable[[Any], nn.Module]] = {
    KNetConfig: KNet,
    KNetMaskConfig: build_mask_model,
}


def build_model(name_or_config: Union[str, ModelConfig], overrides: Optional[Dict[str, Any]] = None,
                **kwargs: Any) -> Union[KNet, KNetMaskSegmentor]:
    """Build a K-Net from a preset name (see ``knet.list_presets()``) or a config
    (:class:`KNetConfig`: a :class:`KNet`; :class:`KNetMaskConfig`: a :class:`KNetMaskSegmentor`).

    Overrides are dotted keys or nested dicts, e.g. ``build_model("knet-r50-fcn", num_classes=5)``
    or ``build_model("knet-swin-t-upernet", {"backbone.drop_path_rate": 0.1})``.
    """
    if isinstance(name_or_config, str):
        config = get_config(name_or_config, overrides, **kwargs)
    else:
        config = name_or_config.replace(overrides, **kwargs) if (overrides or kwargs) else name_or_config
    builder = MODEL_BUILDERS.get(type(config))
    if builder is None:
        valid = ", ".join(cls.__name__ for cls in MODEL_BUILDERS)
        raise KnetError(f"cannot build a model from a {type(config).__name__}; expected a preset name or "
                        f"one of: {valid}")
    return builder(config)

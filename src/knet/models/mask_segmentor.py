"""KNetMaskSegmentor: the panoptic and instance K-Net (the reference's ``knet/det`` KNet).

backbone -> FPN neck -> kernel head (learned proposal kernels, + stuff kernels when panoptic) ->
kernel-update stages, each predicting mask logits and class logits for every kernel. The model
returns predictions only (:class:`knet.models.outputs.KNetOutput`); losses and post-processing
(:mod:`knet.postprocess`) live elsewhere.

Parameter names: ``backbone.*`` and ``neck.*`` as the given modules name them, ``kernel_head.*``
= the reference's ``rpn_head.*`` and ``kernel_update_head.{i}.*`` = its ``roi_head.mask_head.{i}.*``
(the rename table is :data:`knet.checkpoint.reference.RENAME_RULES`).

:func:`build_mask_model` builds one from a :class:`~knet.config.KNetMaskConfig`.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import KNetMaskConfig
from ..errors import KnetError
from .backbones import build_backbone
from .knet.kernel_head import ConvKernelHead
from .knet.kernel_update_head import KernelUpdateHead
from .necks import FPN
from .outputs import KNetOutput


class KNetMaskSegmentor(nn.Module):
    """Panoptic (num_stuff_classes > 0) or instance (num_stuff_classes = 0) K-Net.

    ``outputs(x)`` / ``forward(x)``: normalised images (B, 3, H, W), H and W multiples of 32 ->
    :class:`KNetOutput` with num_stages + 1 predictions at stride 8 (h, w = H/8, W/8):
    mask_logits[0] = the kernel head's (B, K, h, w), cls_logits[0] = None; then per stage
    mask_logits (B, K, h, w) and cls_logits (B, K, num_classes); semantic_logits (B, num_classes, h, w).
    K = num_proposals (+ num_stuff_classes: the stuff kernels come last), num_classes =
    num_thing_classes + num_stuff_classes. ``final_mask_logits(output)`` gives the last stage's
    masks at stride 4, the post-processing's input (``scaled_mask_logits`` upsamples any masks).

    Args:
        backbone: the backbone module.
        neck: the neck module; it returns four maps of ``channels`` channels at strides 4, 8, 16, 32.
        channels: width of the FPN output, the kernels and the stages (256 in the reference).
        num_groups: GroupNorm groups of the kernel head (32; the tiny goldens use 8).
        pos_num_feats: per-axis channels of the positional encoding (default channels // 2).
        feedforward_channels: the stages' FFN width.
        num_heads: the stages' attention heads.
        dropout: the stages' dropout.
        updator_channels: width of the stages' KernelUpdator (default ``channels``, as the reference).
        mask_upsample_stride: factor from the stages' stride 8 to the stride-4 output masks.
        recompute_fusion: when training, the kernel head's semantic FPN recomputes its activations
            in the backward pass (``KernelHeadConfig.recompute_fusion``).

    ``config`` is the :class:`KNetMaskConfig` the model was built from (set by
    :func:`build_mask_model`; None for a model assembled by hand).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, num_thing_classes: int = 80,
                 num_stuff_classes: int = 53, num_proposals: int = 100, channels: int = 256,
                 num_groups: int = 32, pos_num_feats: Optional[int] = None, num_stages: int = 3,
                 num_heads: int = 8, feedforward_channels: int = 2048, num_ffn_fcs: int = 2,
                 num_cls_fcs: int = 1, num_mask_fcs: int = 1, dropout: float = 0.0,
                 updator_channels: Optional[int] = None, mask_upsample_stride: int = 2,
                 recompute_fusion: bool = False) -> None:
        super().__init__()
        self.config: Optional[KNetMaskConfig] = None
        self.num_thing_classes = num_thing_classes
        self.num_stuff_classes = num_stuff_classes
        self.num_classes = num_thing_classes + num_stuff_classes
        self.num_proposals = num_proposals
        self.mask_upsample_stride = mask_upsample_stride
        self.backbone = backbone
        self.neck = neck
        self.kernel_head = ConvKernelHead(channels, channels, num_proposals, num_thing_classes, num_stuff_classes,
                                          num_groups=num_groups, pos_num_feats=pos_num_feats,
                                          recompute_fusion=recompute_fusion)
        self.kernel_update_head = nn.ModuleList(
            KernelUpdateHead(in_channels=channels, out_channels=channels, num_heads=num_heads,
                             feedforward_channels=feedforward_channels,
                             updator_channels=updator_channels if updator_channels is not None else channels,
                             num_ffn_fcs=num_ffn_fcs, num_mask_fcs=num_mask_fcs, dropout=dropout,
                             mask_gather="binary", num_classes=self.num_classes, num_cls_fcs=num_cls_fcs)
            for _ in range(num_stages)
        )

    def init_weights(self) -> None:
        """The reference's initialisation of the heads (the backbone and neck keep theirs)."""
        self.kernel_head.init_weights()
        for stage in self.kernel_update_head:
            stage.init_weights()

    def decode(self, feats: Sequence[torch.Tensor]) -> KNetOutput:
        """The heads alone: the neck's four maps -> :class:`KNetOutput` (see the class doc)."""
        head = self.kernel_head(feats)
        kernels, masks = head.kernels, head.mask_logits
        mask_logits: List[torch.Tensor] = [masks]
        cls_logits: List[Optional[torch.Tensor]] = [None]
        for stage in self.kernel_update_head:
            masks, kernels = stage(head.feats, kernels, masks)
            mask_logits.append(masks)
            cls_logits.append(stage.class_logits(kernels))
        return KNetOutput(mask_logits=mask_logits, cls_logits=cls_logits, semantic_logits=head.semantic_logits)

    def outputs(self, x: torch.Tensor) -> KNetOutput:
        """(B, 3, H, W) normalised images -> every prediction (see the class doc)."""
        return self.decode(self.neck(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> KNetOutput:
        return self.outputs(x)

    def inference(self, x: torch.Tensor, mode: str = "whole", crop_size: Any = None,
                  stride: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """What post-processing reads: (B, 3, H, W) normalised images, H and W multiples of 32 ->
        the last stage's class logits (B, K, num_classes) and stride-4 mask logits (B, K, H/4, W/4).
        Only whole-image inference exists for these models (``mode`` is the semantic model's option)."""
        if mode != "whole":
            raise KnetError(f"inference mode {mode!r}: panoptic and instance models run on whole images")
        output = self.outputs(x)
        return output.final_classes, self.final_mask_logits(output)

    def scaled_mask_logits(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) stride-8 mask logits -> (B, K, 2h, 2w) stride-4 logits (bilinear,
        align_corners=False), what the post-processing takes (the reference's scaled_mask_preds)."""
        if self.mask_upsample_stride == 1:
            return mask_logits
        return F.interpolate(mask_logits, scale_factor=self.mask_upsample_stride, mode="bilinear",
                             align_corners=False)

    def final_mask_logits(self, output: KNetOutput) -> torch.Tensor:
        """The last stage's masks of ``outputs(x)`` at stride 4: (B, K, H/4, W/4) logits."""
        return self.scaled_mask_logits(output.final_masks)


def build_mask_model(config: KNetMaskConfig) -> KNetMaskSegmentor:
    """A panoptic or instance K-Net as ``config`` describes it, with the reference's initial
    weights (ImageNet backbone weights are loaded separately)."""
    backbone = build_backbone(config.backbone)
    # Four FPN levels from the four backbone stages, as all the reference's configs: with as many
    # outputs as inputs no extra level (and no extra conv) exists.
    neck = FPN(backbone.out_channels, config.neck.out_channels, num_outs=4, start_level=0, add_extra_convs="on_input")
    head, stages = config.kernel_head, config.kernel_update
    model = KNetMaskSegmentor(
        backbone, neck, num_thing_classes=config.num_thing_classes, num_stuff_classes=config.num_stuff_classes,
        num_proposals=head.num_proposals, channels=config.neck.out_channels, num_groups=head.num_groups,
        pos_num_feats=head.pos_num_feats, num_stages=stages.num_stages, num_heads=stages.num_heads,
        feedforward_channels=stages.feedforward_channels, num_ffn_fcs=stages.num_ffn_fcs,
        num_cls_fcs=stages.num_cls_fcs, num_mask_fcs=stages.num_mask_fcs, dropout=stages.dropout,
        updator_channels=stages.updator_channels, recompute_fusion=head.recompute_fusion)
    model.init_weights()
    model.config = config
    return model

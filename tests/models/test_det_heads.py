"""The panoptic/instance K-Net heads loaded from the official tiny checkpoints reproduce every
intermediate the official code recorded, starting from its FPN outputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from knet.checkpoint.reference import convert_reference_state_dict
from knet.checkpoint.safe_load import safe_load
from knet.models.knet.kernel_head import sine_positional_encoding
from knet.models.knet.kernel_update_head import KernelUpdateHead
from knet.models.mask_segmentor import KNetMaskSegmentor
from knet.models.outputs import KNetOutput
from tests.conftest import golden_path

GOLDENS = ["knet-det-panoptic", "knet-det-instance", "knet-det-panoptic-swin"]


def tiny_heads(num_stuff_classes: int, backbone: nn.Module | None = None, neck: nn.Module | None = None):
    """The heads at the goldens' widths (README overrides): 32 channels, GN(8), 10 proposals, 4 heads."""
    return KNetMaskSegmentor(backbone or nn.Identity(), neck or nn.Identity(), num_thing_classes=80,
                             num_stuff_classes=num_stuff_classes, num_proposals=10, channels=32, num_groups=8,
                             num_heads=4, feedforward_channels=64)


def convert_reference_keys(state_dict):
    """The official names -> knet's, every key accounted for by the rename table."""
    converted, unaccounted = convert_reference_state_dict(state_dict)
    assert not unaccounted, f"keys no rename rule covers: {unaccounted[:5]}"
    return converted


def head_state(state_dict):
    return convert_reference_keys({k: v for k, v in state_dict.items() if k.startswith(("rpn_head.", "roi_head."))})


@pytest.fixture(scope="module", params=GOLDENS)
def golden(request):
    name = request.param
    ref = dict(np.load(golden_path(f"det/{name}.tiny.npz")))
    state = safe_load(golden_path(f"det/{name}.tiny.pth"))["state_dict"]
    model = tiny_heads(53 if "panoptic" in name else 0)
    model.load_state_dict(head_state(state), strict=True)
    model.eval()
    feats = [torch.from_numpy(ref[f"fpn_{i}"]) for i in range(4)]
    return name, ref, model, feats


def assert_close(name, key, actual, ref):
    expected = ref[key]
    assert tuple(actual.shape) == expected.shape, f"{name} {key}: shape {tuple(actual.shape)} vs {expected.shape}"
    diff = float(np.abs(actual.detach().numpy() - expected).max())
    tol = 1e-4 * float(np.abs(expected).max())
    assert diff <= tol, f"{name} {key}: max abs diff {diff:.3g} > {tol:.3g}"


def test_head_keys_are_the_reference_keys_renamed(golden):
    name, _, model, _ = golden
    state = safe_load(golden_path(f"det/{name}.tiny.pth"))["state_dict"]
    expected = {k.replace("rpn_head.", "kernel_head.").replace("roi_head.mask_head.", "kernel_update_head.")
                for k in state if k.startswith(("rpn_head.", "roi_head."))}
    assert set(model.state_dict()) == expected


def test_kernel_head_matches_reference(golden):
    name, ref, model, feats = golden
    with torch.no_grad():
        loc, sem = model.kernel_head.localization_fpn(feats)
        out = model.kernel_head(feats)
    assert_close(name, "rpn_locfpn_out", loc, ref)
    assert_close(name, "rpn_locfpn_aux", sem, ref)
    assert_close(name, "rpn_proposal_feats", out.kernels, ref)
    assert_close(name, "rpn_x_feats", out.feats, ref)
    assert_close(name, "rpn_mask_preds", out.mask_logits, ref)
    assert_close(name, "rpn_seg_preds", out.semantic_logits, ref)


def test_update_stages_match_reference(golden):
    name, ref, model, feats = golden
    with torch.no_grad():
        head = model.kernel_head(feats)
        # Each stage fed the reference's own inputs, so a failure points at one stage.
        kernels, masks = torch.from_numpy(ref["rpn_proposal_feats"]), torch.from_numpy(ref["rpn_mask_preds"])
        x_feats = torch.from_numpy(ref["rpn_x_feats"])
        for s, stage in enumerate(model.kernel_update_head):
            new_masks, new_kernels = stage(x_feats, kernels, masks)
            assert_close(name, f"s{s}_cls_score", stage.class_logits(new_kernels), ref)
            assert_close(name, f"s{s}_mask_preds", new_masks, ref)
            assert_close(name, f"s{s}_object_feats", new_kernels, ref)
            kernels, masks = torch.from_numpy(ref[f"s{s}_object_feats"]), torch.from_numpy(ref[f"s{s}_mask_preds"])
        # The whole chain from the FPN outputs.
        output = model.decode(feats)
    assert isinstance(output, KNetOutput)
    assert len(output.mask_logits) == 4 and output.cls_logits[0] is None
    assert torch.equal(output.mask_logits[0], head.mask_logits)
    assert torch.equal(output.semantic_logits, head.semantic_logits)
    for s in range(3):
        assert_close(name, f"s{s}_cls_score", output.cls_logits[s + 1], ref)
        assert_close(name, f"s{s}_mask_preds", output.mask_logits[s + 1], ref)
    assert_close(name, "s2_scaled_mask_preds", model.final_mask_logits(output), ref)


def test_sine_positional_encoding_layout():
    pos = sine_positional_encoding(2, 3, 5, num_feats=4)
    assert pos.shape == (2, 8, 3, 5)
    y, x = 1, 3
    ye, xe = (y + 1) / (3 + 1e-6) * 2 * math.pi, (x + 1) / (5 + 1e-6) * 2 * math.pi
    # Channels: y then x; frequencies 10000 ** (2 * (i // 2) / 4); sin at even i, cos at odd i.
    expected = [math.sin(ye), math.cos(ye), math.sin(ye / 100), math.cos(ye / 100),
                math.sin(xe), math.cos(xe), math.sin(xe / 100), math.cos(xe / 100)]
    assert torch.allclose(pos[1, :, y, x], torch.tensor(expected), atol=1e-6)


def test_binary_gathering_differs_from_softmax_and_is_validated():
    torch.manual_seed(0)
    feats, kernels, masks = torch.randn(1, 8, 6, 6), torch.randn(1, 3, 8, 1, 1), torch.randn(1, 3, 6, 6)
    soft = KernelUpdateHead(8, 8, num_heads=2, feedforward_channels=16, updator_channels=8)
    hard = KernelUpdateHead(8, 8, num_heads=2, feedforward_channels=16, updator_channels=8, mask_gather="binary")
    hard.load_state_dict(soft.state_dict())
    with torch.no_grad():
        assert not torch.allclose(soft(feats, kernels, masks)[0], hard(feats, kernels, masks)[0])
        # A binary stage only sees which pixels are above the threshold, not the logit values.
        assert torch.equal(hard(feats, kernels, masks)[0], hard(feats, kernels, torch.where(masks > 0, 5.0, -5.0))[0])
    with pytest.raises(ValueError, match="mask_gather"):
        KernelUpdateHead(8, 8, num_heads=2, mask_gather="sigmoid")
    with pytest.raises(RuntimeError, match="class branch"):
        soft.class_logits(kernels)


def test_init_weights_gives_the_focal_prior():
    model = tiny_heads(53)
    model.init_weights()
    prior = torch.full((1,), -math.log(0.99 / 0.01))
    assert torch.allclose(model.kernel_head.conv_seg.bias, prior.expand(133))
    for stage in model.kernel_update_head:
        assert torch.allclose(stage.fc_cls.bias, prior.expand(133))
    # The proposal kernels start N(0, 1), every other conv N(0, 0.01).
    assert 0.5 < float(model.kernel_head.init_kernels.weight.detach().std()) < 1.5
    assert float(model.kernel_head.loc_convs[0].conv.weight.detach().std()) < 0.05


def test_instance_model_has_no_stuff_kernels():
    model = tiny_heads(0).eval()
    feats = [torch.randn(1, 32, 24 // 2 ** i, 32 // 2 ** i) for i in range(4)]
    with torch.no_grad():
        out = model.decode(feats)
    assert out.mask_logits[0].shape == (1, 10, 12, 16)
    assert out.final_classes.shape == (1, 10, 80) and out.semantic_logits.shape == (1, 80, 12, 16)


def tiny_backbone_and_neck(name: str):
    """The goldens' backbones (README overrides) and FPN, as the reference configs build them."""
    from knet.models.backbones.resnet import ResNet
    from knet.models.backbones.swin import SwinTransformer
    from knet.models.necks import FPN

    if "swin" in name:
        backbone = SwinTransformer(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7,
                                   mlp_ratio=4, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2)
    else:
        backbone = ResNet(depth=50, base_channels=8, frozen_stages=1, norm_eval=True)
    return backbone, FPN(backbone.out_channels, 32, num_outs=4, start_level=0, add_extra_convs="on_input")


@pytest.mark.parametrize("name", GOLDENS)
def test_end_to_end_from_images(name, one_thread):
    from knet.postprocess import instance_inference, panoptic_inference, reference_encoding

    ref = dict(np.load(golden_path(f"det/{name}.tiny.npz")))
    state = safe_load(golden_path(f"det/{name}.tiny.pth"))["state_dict"]
    model = tiny_heads(53 if "panoptic" in name else 0, *tiny_backbone_and_neck(name))
    # The whole official checkpoint loads with the prefix rename alone.
    model.load_state_dict(convert_reference_keys(state), strict=True)
    model.eval()
    with torch.no_grad():
        output = model.outputs(torch.from_numpy(ref["x"]))
        scaled = model.final_mask_logits(output)
    assert_close(name, "rpn_mask_preds", output.mask_logits[0], ref)
    assert_close(name, "rpn_seg_preds", output.semantic_logits, ref)
    for s in range(3):
        assert_close(name, f"s{s}_cls_score", output.cls_logits[s + 1], ref)
        assert_close(name, f"s{s}_mask_preds", output.mask_logits[s + 1], ref)
    assert_close(name, "s2_scaled_mask_preds", scaled, ref)

    for i in range(2):
        shapes = ref["img_shape"][i], ref["batch_input_shape"], ref["ori_shape"][i]
        if "panoptic" in name:
            pan = reference_encoding(panoptic_inference(output.final_classes[i], scaled[i], *shapes)).numpy()
            assert (pan != ref[f"pan_{i}"]).mean() <= 0.005, f"{name} pan_{i}"
        else:
            result = instance_inference(output.final_classes[i], scaled[i], *shapes, max_per_img=10)
            np.testing.assert_array_equal(result.labels.numpy(), ref[f"ins_labels_{i}"])
            np.testing.assert_array_equal(result.proposal_indices.numpy(), ref[f"ins_proposal_inds_{i}"])
            assert np.abs(result.scores.numpy() - ref[f"ins_scores_{i}"]).max() <= 1e-5
            assert (result.masks.numpy() != ref[f"ins_masks_{i}"]).mean(axis=(1, 2)).max() <= 0.005

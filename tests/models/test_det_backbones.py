"""Backbones + FPN of the panoptic / instance models against the official (mmdet 2.x) K-Net code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import golden_path, logits_tolerance
from knet.checkpoint.safe_load import safe_load
from knet.models.backbones.deform_conv import DeformConv2dPack
from knet.models.backbones.resnet import ResNet, ResNetV1c
from knet.models.backbones.swin import SwinTransformer
from knet.models.necks import FPN

DCN_C3_C5 = (False, True, True, True)


def _resnet(depth: int = 50, base_channels: int = 64, **kwargs) -> ResNet:
    """The configs' backbone: mmdet ResNet, pytorch style, frozen_stages=1, norm_eval=True."""
    return ResNet(depth=depth, base_channels=base_channels, frozen_stages=1, norm_eval=True, **kwargs)


def _swin_l(**overrides) -> SwinTransformer:
    """knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py's backbone."""
    args = dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=7, mlp_ratio=4,
                qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2)
    return SwinTransformer(**{**args, **overrides})


def _fpn(in_channels, out_channels: int = 256) -> FPN:
    return FPN(in_channels, out_channels, num_outs=4, start_level=0, add_extra_convs="on_input")


def _tiny_backbone(name: str) -> nn.Module:
    """The goldens' overrides: base_channels 8 (ResNet-50) / embed_dims 16, depths 2 (Swin)."""
    if "swin" in name:
        return _swin_l(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    return _resnet(50, base_channels=8)


def _part(state, prefix: str):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


GOLDENS = ["knet-det-panoptic", "knet-det-instance", "knet-det-panoptic-swin"]


@pytest.mark.parametrize("name", GOLDENS)
def test_fpn_features_match_official(name, one_thread):
    state = safe_load(golden_path(f"det/{name}.tiny.pth"))["state_dict"]
    ref = np.load(golden_path(f"det/{name}.tiny.npz"))
    backbone = _tiny_backbone(name)
    neck = _fpn(backbone.out_channels, 32)
    backbone.load_state_dict(_part(state, "backbone."), strict=True)
    neck.load_state_dict(_part(state, "neck."), strict=True)
    backbone.eval()
    neck.eval()
    with torch.no_grad():
        feats = neck(backbone(torch.from_numpy(ref["x"])))
    assert len(feats) == 4
    for level, feat in enumerate(feats):
        expected = ref[f"fpn_{level}"]
        assert feat.shape == expected.shape
        assert float(np.abs(feat.numpy() - expected).max()) <= logits_tolerance(expected)


def test_train_mode_features_equal_eval_mode(one_thread):
    """With norm_eval the BatchNorms use their running statistics in train mode too (the golden's
    forward_train gives the same stage outputs as the test path)."""
    state = safe_load(golden_path("det/knet-det-panoptic.tiny.pth"))["state_dict"]
    ref = np.load(golden_path("det/knet-det-panoptic.tiny.npz"))
    backbone = _tiny_backbone("knet-det-panoptic")
    backbone.load_state_dict(_part(state, "backbone."), strict=True)
    x = torch.from_numpy(ref["x"])
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        train_feats = backbone.train()(x)
        eval_feats = backbone.eval()(x)
    for a, b in zip(train_feats, eval_feats):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key, value in backbone.state_dict().items():  # running statistics untouched
        assert torch.equal(value, before[key]), key


def test_frozen_stages_and_norm_eval():
    model = _resnet(50, base_channels=8).train()
    frozen = ("conv1.", "bn1.", "layer1.")
    for key, param in model.named_parameters():
        assert param.requires_grad == (not key.startswith(frozen)), key
    for key, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert not module.training, key  # norm_eval: every BN
        elif isinstance(module, nn.Conv2d) and key.startswith("layer1."):
            assert not module.training, key  # frozen stage: eval mode throughout
    assert model.layer2.training and model.layer2[0].conv2.training

    unfrozen = ResNet(50, base_channels=8).train()
    assert all(p.requires_grad for p in unfrozen.parameters())
    assert all(m.training for m in unfrozen.modules())
    deep = ResNet(50, base_channels=8, deep_stem=True, frozen_stages=2).train()
    for key, param in deep.named_parameters():
        assert param.requires_grad == (not key.startswith(("stem.", "layer1.", "layer2."))), key
    assert not deep.stem.training and deep.layer3.training


def test_resnet_keys_are_mmdet_and_torchvision_layout():
    model = ResNet(50, base_channels=8)
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
            "layer4.2.conv3.weight", "layer4.2.bn3.num_batches_tracked"} <= keys
    assert not any(k.startswith("stem.") for k in keys)
    assert len([k for k in keys if k.endswith(".weight")]) == 53 + 53  # 53 convs and their BNs, no fc
    assert model.out_channels == [32, 64, 128, 256] and model.strides == [4, 8, 16, 32]
    x = torch.randn(1, 3, 70, 45)
    shapes = [tuple(f.shape) for f in model.eval()(x)]
    assert shapes == [(1, 32, 18, 12), (1, 64, 9, 6), (1, 128, 5, 3), (1, 256, 3, 2)]


def test_dcn_stages_keys_and_zero_offsets():
    """DCN on every bottleneck of layer2-4 (strided first blocks included): keys conv2.weight and
    conv2.conv_offset.*; with the offsets at their zero init it computes the plain ResNet."""
    dcn = _resnet(50, base_channels=8, dcn_stages=DCN_C3_C5).eval()
    plain = _resnet(50, base_channels=8).eval()
    for name, module in dcn.named_modules():
        if name.endswith(".conv2"):
            assert isinstance(module, DeformConv2dPack) == (not name.startswith("layer1.")), name
    assert isinstance(dcn.layer2[0].conv2, DeformConv2dPack) and dcn.layer2[0].conv2.stride == (2, 2)
    assert dcn.layer2[0].conv2.conv_offset.weight.shape == (18, 16, 3, 3)
    extra = set(dcn.state_dict()) - set(plain.state_dict())
    assert extra == {f"layer{i}.{j}.conv2.conv_offset.{p}" for i, n in ((2, 4), (3, 6), (4, 3))
                     for j in range(n) for p in ("weight", "bias")}
    # A torchvision-layout (no DCN) state dict fills everything but the offset convs.
    result = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert set(result.missing_keys) == extra and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(dcn(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        dcn.layer3[1].conv2.conv_offset.bias.fill_(0.5)
        moved = dcn(x)
    assert not torch.allclose(moved[2], plain(x)[2], atol=1e-3)


def test_resnet_v1c_is_the_deep_stem_resnet():
    v1c = ResNetV1c(depth=50, stem_channels=16, base_channels=8, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                    contract_dilation=True)
    generic = ResNet(depth=50, stem_channels=16, base_channels=8, deep_stem=True, strides=(1, 2, 1, 1),
                     dilations=(1, 1, 2, 4), contract_dilation=True)
    assert isinstance(v1c, ResNet) and v1c.strides == [4, 8, 8, 8]
    assert list(v1c.state_dict()) == list(generic.state_dict())
    assert "stem.0.weight" in v1c.state_dict() and "conv1.weight" not in v1c.state_dict()
    generic.load_state_dict(v1c.state_dict(), strict=True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        for a, b in zip(v1c.eval()(x), generic.eval()(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fpn_extra_levels_and_odd_sizes():
    feats = [torch.randn(1, c, s, s) for c, s in zip((4, 8, 16, 32), (25, 13, 7, 4))]
    plain = FPN([4, 8, 16, 32], 6, num_outs=4, add_extra_convs="on_input")
    assert len(plain.fpn_convs) == 4  # num_outs=4 on 4 inputs: no extra level, no extra conv
    assert [tuple(f.shape) for f in plain(feats)] == [(1, 6, 25, 25), (1, 6, 13, 13), (1, 6, 7, 7), (1, 6, 4, 4)]
    on_input = FPN([4, 8, 16, 32], 6, num_outs=6, add_extra_convs="on_input")
    assert on_input.fpn_convs[4].conv.in_channels == 32 and on_input.fpn_convs[5].conv.in_channels == 6
    assert [f.shape[-1] for f in on_input(feats)] == [25, 13, 7, 4, 2, 1]
    pooled = FPN([4, 8, 16, 32], 6, num_outs=5)
    outs = pooled(feats)
    assert len(pooled.fpn_convs) == 4 and torch.equal(outs[4], outs[3][:, :, ::2, ::2])
    sub = FPN([4, 8, 16, 32], 6, num_outs=2, start_level=1, end_level=2)
    assert [f.shape[-1] for f in sub(feats)] == [13, 7]
    with pytest.raises(ValueError):
        FPN([4, 8, 16, 32], 6, num_outs=3)


def test_fpn_top_down_is_nearest_upsampling_sum():
    fpn = FPN([2, 3], 4, num_outs=2)
    low, high = torch.randn(1, 2, 5, 6), torch.randn(1, 3, 3, 3)
    lateral_high = fpn.lateral_convs[1](high)
    up = lateral_high[:, :, [0, 0, 1, 1, 2], :][:, :, :, [0, 0, 1, 1, 2, 2]]  # nearest to 5x6
    expected_low = fpn.fpn_convs[0](fpn.lateral_convs[0](low) + up)
    out_low, out_high = fpn([low, high])
    torch.testing.assert_close(out_low, expected_low)
    torch.testing.assert_close(out_high, fpn.fpn_convs[1](lateral_high))
    assert set(fpn.state_dict()) == {f"{m}.{i}.conv.{p}" for m in ("lateral_convs", "fpn_convs")
                                     for i in range(2) for p in ("weight", "bias")}


# Official whole-model parameter counts (backbone + neck + heads) and this module's backbone + neck.
FULL_SIZE = {
    "R-50": (37_536_852, 23_508_032, lambda: _resnet(50)),
    "R-101": (56_528_980, 42_500_160, lambda: _resnet(101)),
    "R-101-DCN": (57_815_152, 43_786_332, lambda: _resnet(101, dcn_stages=DCN_C3_C5)),
    "Swin-L": (208_781_224, 194_998_164, _swin_l),
}


def test_full_size_parameter_counts():
    """ResNet-50/101 equal torchvision's counts less the classifier (25,557,032 / 44,549,160 minus
    2,049,000); the heads then account for the same remainder in all four official models."""
    heads = set()
    for name, (official_total, expected_backbone, build) in FULL_SIZE.items():
        with torch.device("meta"):  # shapes only: no memory, no init cost
            backbone = build()
            neck = _fpn(backbone.out_channels)
        assert _num_params(backbone) == expected_backbone, name
        heads.add(official_total - _num_params(backbone) - _num_params(neck))
    assert heads == {10_684_436}


def test_bottleneck_sums_in_place_without_touching_its_input():
    from knet.models.backbones.resnet import Bottleneck

    torch.manual_seed(0)
    block = Bottleneck(16, 4).train()
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    before = x.detach().clone()
    out = block(x)
    expected = torch.relu(block.bn3(block.conv3(block.relu(block.bn2(block.conv2(block.relu(block.bn1(
        block.conv1(x)))))))) + x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(x.detach(), before)
    out.sum().backward()  # the in-place sum leaves every saved tensor intact
    assert x.grad is not None and block.conv1.weight.grad is not None
    # A sum that needs the identity's wider dtype is not done in place (it would round to bf16).

    class ToBfloat16(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.bfloat16()

    block.eval().bn3 = ToBfloat16()
    with torch.no_grad():
        mixed = block(x)
        narrow = block.conv3(block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))).bfloat16()
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, torch.relu(narrow + x), rtol=0, atol=0)

"""ImageNet backbone weight files: the three layouts reproduce the reference's features; bad files
fail with errors that name the file and the keys."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import golden_path, logits_tolerance
from knet.checkpoint.pretrained import (
    _merge_norm_to_unfold, _merge_weight_to_unfold, convert_swin_original, detect_layout, load_backbone_weights)
from knet.errors import CheckpointError
from knet.models.backbones.resnet import ResNetV1c
from knet.models.backbones.swin import PatchMerging, SwinTransformer

SWIN_TINY = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def _resnet_d8() -> ResNetV1c:
    return ResNetV1c(depth=50, stem_channels=16, base_channels=8, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                     contract_dilation=True)


def _assert_features(model: torch.nn.Module, npz_name: str) -> None:
    ref = np.load(golden_path(f"backbones/{npz_name}"))
    model.eval()
    with torch.no_grad():
        feats = model(torch.from_numpy(ref["x"]))
    assert len(feats) == 4
    for i, feat in enumerate(feats):
        expected = ref[f"feat{i}"]
        assert feat.shape == expected.shape, i
        diff = float(np.abs(feat.numpy() - expected).max())
        assert diff <= logits_tolerance(expected), (i, diff)


def _load(name: str) -> dict:
    return torch.load(golden_path(f"backbones/{name}"), map_location="cpu", weights_only=True)


def test_resnet_v1c_file():
    model = _resnet_d8()
    skipped = load_backbone_weights(model, golden_path("backbones/resnet50_v1c.tiny.pth"))
    assert sorted(skipped) == ["fc.bias", "fc.weight"]
    _assert_features(model, "resnet50_v1c.tiny.npz")


def test_swin_converted_file():
    model = SwinTransformer(**SWIN_TINY)
    assert load_backbone_weights(model, golden_path("backbones/swin.tiny.converted.pth")) == []
    for i in range(4):  # not in ImageNet files: keep their initial values
        norm = getattr(model, f"norm{i}")
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    _assert_features(model, "swin.tiny.npz")


def test_swin_original_file():
    model = SwinTransformer(**SWIN_TINY)
    skipped = load_backbone_weights(model, golden_path("backbones/swin.tiny.original.pth"))
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias"} <= set(skipped)
    assert all(k in {"head.weight", "head.bias", "norm.weight", "norm.bias"}
               or k.endswith(".attn_mask") or k.endswith(".attn.relative_position_index") for k in skipped)
    _assert_features(model, "swin.tiny.npz")


def test_original_converts_to_the_converted_file():
    """The rename table maps the original release onto exactly the reference's converted file."""
    converted, dropped = convert_swin_original(_load("swin.tiny.original.pth")["model"])
    reference = _load("swin.tiny.converted.pth")
    index_keys = {k for k in reference if k.endswith("relative_position_index")}
    assert set(converted) == set(reference) - index_keys
    for key, value in converted.items():
        assert torch.equal(value, reference[key]), key
    assert len(dropped) == len(_load("swin.tiny.original.pth")["model"]) - len(converted)


def test_merge_reorder_equals_original_merging():
    """Original merging (concat TL, BL, TR, BR; norm; linear) == unfold-order merging with the
    re-ordered weights."""
    c, out = 3, 6
    x = torch.randn(2, c, 6, 4)
    weight, gamma, beta = torch.randn(out, 4 * c), torch.randn(4 * c), torch.randn(4 * c)
    grid = x.permute(0, 2, 3, 1)  # (N, H, W, C)
    x0, x1 = grid[:, 0::2, 0::2], grid[:, 1::2, 0::2]
    x2, x3 = grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]
    original = torch.cat([x0, x1, x2, x3], -1).reshape(2, -1, 4 * c)
    expected = F.linear(F.layer_norm(original, (4 * c,), gamma, beta), weight)

    merge = PatchMerging(c, out)
    with torch.no_grad():
        merge.reduction.weight.copy_(_merge_weight_to_unfold(weight))
        merge.norm.weight.copy_(_merge_norm_to_unfold(gamma))
        merge.norm.bias.copy_(_merge_norm_to_unfold(beta))
    got, hw = merge(x.flatten(2).transpose(1, 2), (6, 4))
    assert hw == (3, 2)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_backbone_prefixed_dict(tmp_path, wrapper):
    """A ``backbone.``-prefixed dict (e.g. a segmentor checkpoint) loads its backbone part."""
    state = {f"backbone.{k}": v for k, v in _load("swin.tiny.converted.pth").items()}
    state["decode_head.conv_seg.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "prefixed.pth"
    torch.save({wrapper: state} if wrapper else state, path)
    model = SwinTransformer(**SWIN_TINY)
    assert load_backbone_weights(model, path) == ["decode_head.conv_seg.weight"]
    _assert_features(model, "swin.tiny.npz")


def test_resnet_prefixed_dict(tmp_path):
    state = {f"backbone.{k}": v for k, v in _load("resnet50_v1c.tiny.pth")["state_dict"].items()}
    path = tmp_path / "prefixed.pth"
    torch.save({"state_dict": state}, path)
    model = _resnet_d8()
    assert sorted(load_backbone_weights(model, path)) == ["fc.bias", "fc.weight"]
    _assert_features(model, "resnet50_v1c.tiny.npz")


def test_detect_layout():
    assert detect_layout(_load("resnet50_v1c.tiny.pth")["state_dict"]) == "resnet_v1c"
    assert detect_layout(_load("swin.tiny.converted.pth")) == "swin_converted"
    assert detect_layout(_load("swin.tiny.original.pth")["model"]) == "swin_original"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth does not exist"):
        load_backbone_weights(SwinTransformer(**SWIN_TINY), path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*garbage.pth"):
        load_backbone_weights(SwinTransformer(**SWIN_TINY), path)


def test_unknown_layout(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"other.pth: unknown backbone weight layout.*conv1.weight"):
        load_backbone_weights(_resnet_d8(), path)


def test_not_a_tensor_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="list.pth holds no state dict"):
        load_backbone_weights(_resnet_d8(), path)


def test_layout_of_another_backbone():
    with pytest.raises(CheckpointError, match="swin_converted weights, which do not fit a ResNetV1c"):
        load_backbone_weights(_resnet_d8(), golden_path("backbones/swin.tiny.converted.pth"))
    with pytest.raises(CheckpointError, match="resnet_v1c weights, which do not fit a SwinTransformer"):
        load_backbone_weights(SwinTransformer(**SWIN_TINY), golden_path("backbones/resnet50_v1c.tiny.pth"))


def test_shape_mismatch():
    model = SwinTransformer(**{**SWIN_TINY, "embed_dims": 32})
    with pytest.raises(CheckpointError, match=r"swin.tiny.converted.pth does not fit.*shape mismatches: "
                                              r".*patch_embed.norm.bias \(file \(16,\), model \(32,\)\)"):
        load_backbone_weights(model, golden_path("backbones/swin.tiny.converted.pth"))


def test_missing_and_unexpected_keys(tmp_path):
    state = dict(_load("swin.tiny.converted.pth"))
    del state["stages.1.blocks.0.norm1.weight"]
    state["stages.9.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    before = {k: v.clone() for k, v in SwinTransformer(**SWIN_TINY).state_dict().items()}
    model = SwinTransformer(**SWIN_TINY)
    model.load_state_dict(before)
    with pytest.raises(CheckpointError, match=r"broken.pth .*missing keys: stages.1.blocks.0.norm1.weight; "
                                              r"unexpected keys: stages.9.extra"):
        load_backbone_weights(model, path)
    for key, value in model.state_dict().items():  # a failed load leaves the model untouched
        assert torch.equal(value, before[key]), key


def test_unknown_original_key(tmp_path):
    ckpt = _load("swin.tiny.original.pth")
    ckpt["model"]["absolute_pos_embed"] = torch.zeros(1, 3136, 16)
    path = tmp_path / "ape.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="ape.pth: keys of an original Swin file .*absolute_pos_embed"):
        load_backbone_weights(SwinTransformer(**SWIN_TINY), path)


def test_resnet_missing_key_is_an_error(tmp_path):
    ckpt = _load("resnet50_v1c.tiny.pth")
    del ckpt["state_dict"]["layer4.2.bn3.running_var"]
    path = tmp_path / "r.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing keys: layer4.2.bn3.running_var"):
        load_backbone_weights(_resnet_d8(), path)

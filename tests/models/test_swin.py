"""SwinTransformer: reference features, state-dict names, odd sizes, stochastic depth, sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import golden_path, logits_tolerance
from knet.config import SwinConfig
from knet.errors import KnetError
from knet.models.backbones import BACKBONES, build_backbone
from knet.models.backbones.swin import PatchMerging, SwinTransformer, WindowMSA, relative_position_index

TINY = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
OUTPUT_NORMS = {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}


def _tiny(**overrides) -> SwinTransformer:
    return SwinTransformer(**{**TINY, **overrides})


def test_reference_features_from_converted_file():
    """Loading the reference's converted file by name alone reproduces its backbone features."""
    state = torch.load(golden_path("backbones/swin.tiny.converted.pth"), map_location="cpu", weights_only=True)
    ref = np.load(golden_path("backbones/swin.tiny.npz"))
    model = _tiny().eval()
    result = model.load_state_dict(state, strict=False)
    assert set(result.missing_keys) == OUTPUT_NORMS and not result.unexpected_keys
    with torch.no_grad():
        feats = model(torch.from_numpy(ref["x"]))
    for i, feat in enumerate(feats):
        expected = ref[f"feat{i}"]
        assert feat.shape == expected.shape
        assert float(np.abs(feat.numpy() - expected).max()) <= logits_tolerance(expected)


def test_state_dict_keys_equal_reference_checkpoint():
    """Parameter and buffer names equal the reference K-Net checkpoint's ``backbone.*`` keys."""
    ckpt = torch.load(golden_path("knet-swin-t-upernet.tiny.pth"), map_location="cpu", weights_only=True)
    backbone = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    model = _tiny()
    assert set(model.state_dict()) == set(backbone)
    model.load_state_dict(backbone, strict=True)


def test_relative_position_index_matches_reference_buffer():
    state = torch.load(golden_path("backbones/swin.tiny.converted.pth"), map_location="cpu", weights_only=True)
    assert torch.equal(relative_position_index(7), state["stages.0.blocks.0.attn.w_msa.relative_position_index"])


@pytest.mark.parametrize("size", [(49, 67), (67, 93), (64, 64), (5, 3), (1, 1), (230, 97)])
def test_any_input_size(size):
    h, w = size
    model = _tiny().eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, h, w))
    assert model.out_channels == [16, 32, 64, 128] and model.strides == [4, 8, 16, 32]
    fh, fw = math.ceil(h / 4), math.ceil(w / 4)
    for i, feat in enumerate(feats):
        assert feat.shape == (2, model.out_channels[i], fh, fw)
        assert feat.is_contiguous() and torch.isfinite(feat).all()
        fh, fw = math.ceil(fh / 2), math.ceil(fw / 2)


def test_batch_items_are_independent():
    """The shifted-window mask repeats per image: each image's features equal its solo run."""
    model = _tiny().eval()
    x = torch.randn(3, 3, 49, 67)
    with torch.no_grad():
        batched = model(x)
        single = model(x[1:2])
    for b, s in zip(batched, single):
        torch.testing.assert_close(b[1:2], s, rtol=1e-5, atol=1e-5)


def test_window_attention_matches_explicit_formula():
    """The fused attention equals softmax(q k^T * scale + bias + mask) v written out."""
    torch.manual_seed(1)
    msa = WindowMSA(embed_dims=8, num_heads=2, window_size=3).eval()
    torch.nn.init.normal_(msa.relative_position_bias_table)
    num_windows, length = 4, 9
    x = torch.randn(2 * num_windows, length, 8)
    mask = torch.where(torch.rand(num_windows, length, length) > 0.5, -100.0, 0.0)
    mask.diagonal(dim1=1, dim2=2).zero_()
    b = x.shape[0]
    q, k, v = msa.qkv(x).reshape(b, length, 3, 2, 4).permute(2, 0, 3, 1, 4)
    attn = (q * msa.scale) @ k.transpose(-2, -1) + msa.relative_position_bias().unsqueeze(0)
    attn = attn.view(b // num_windows, num_windows, 2, length, length) + mask[None, :, None]
    attn = attn.view(b, 2, length, length).softmax(-1)
    expected = msa.proj((attn @ v).transpose(1, 2).reshape(b, length, 8))
    torch.testing.assert_close(msa(x, mask), expected, rtol=1e-5, atol=1e-6)


def test_patch_merging_uses_unfold_order():
    """Merged input channel c*4+k holds channel c of neighbour k (TL, TR, BL, BR), as nn.Unfold."""
    merge = PatchMerging(in_channels=3, out_channels=6)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
        merge.norm.bias.zero_()
    x = torch.randn(2, 3, 5, 7)  # odd sizes: zero-padded bottom/right
    padded = F.pad(x, (0, 1, 0, 1))
    expected = F.unfold(padded, kernel_size=2, stride=2).transpose(1, 2)
    expected = merge.reduction(merge.norm(expected))
    out, hw = merge(x.flatten(2).transpose(1, 2), (5, 7))
    assert hw == (3, 4)
    torch.testing.assert_close(out, expected)


def test_drop_path_active_in_train_mode_only():
    model = _tiny(drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first[3], second[3])
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    for fa, fb in zip(a, b):
        assert torch.equal(fa, fb)
    # Without any stochastic layer, train mode computes what eval mode computes.
    plain = _tiny(drop_path_rate=0.0)
    plain.load_state_dict(model.state_dict())
    plain.train()
    with torch.no_grad():
        for ft, fe in zip(plain(x), a):
            torch.testing.assert_close(ft, fe)


def test_drop_path_rates_grow_linearly_over_blocks():
    model = _tiny(drop_path_rate=0.7)
    rates = [block.attn.drop.drop_prob for stage in model.stages for block in stage.blocks]
    ffn_rates = [block.ffn.dropout_layer.drop_prob for stage in model.stages for block in stage.blocks]
    expected = torch.linspace(0, 0.7, 8).tolist()
    assert rates == pytest.approx(expected) and ffn_rates == pytest.approx(expected)


def test_backward_reaches_every_parameter():
    model = _tiny().train()
    sum(f.mean() for f in model(torch.randn(2, 3, 45, 39))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad


def test_init_for_training_from_scratch():
    model = _tiny()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert 0.01 < float(module.weight.detach().std()) < 0.03, name
            if module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name


@pytest.mark.parametrize("embed_dims, depths, num_heads, expected", [
    (96, (2, 2, 6, 2), (3, 6, 12, 24), 27_520_698),      # Swin-T
    (192, (2, 2, 18, 2), (6, 12, 24, 48), 194_998_164),  # Swin-L
])
def test_full_size_parameter_counts(embed_dims, depths, num_heads, expected):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = SwinTransformer(embed_dims, depths, num_heads)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.out_channels == [embed_dims * 2 ** i for i in range(4)]


def test_build_backbone_from_config():
    model = build_backbone(SwinConfig(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)))
    assert isinstance(model, SwinTransformer) and model.out_channels == [16, 32, 64, 128]
    assert set(BACKBONES) == {"resnet_v1c", "resnet", "swin"}


def test_build_backbone_unknown_kind():
    with pytest.raises(KnetError, match="valid kinds: resnet, resnet_v1c, swin"):
        build_backbone(SwinConfig(kind="vit"))

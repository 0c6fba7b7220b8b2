"""Swin Transformer backbone with the reference's (mmsegmentation 1.2.2) semantics.

Shifted-window self-attention over non-overlapping ``window_size`` x ``window_size`` windows,
with zero padding (bottom/right) wherever a size does not divide, so any input size works.

Parameter and buffer names equal the reference's state-dict keys (``patch_embed.projection``,
``stages.{i}.blocks.{j}.attn.w_msa.qkv``, ``ffn.layers.0.0``, ``stages.{i}.downsample.reduction``,
``norm{i}`` ...), so reference checkpoints and the reference's converted ImageNet files load
without renaming. Patch merging orders its 4C inputs channel by channel over the 2x2 neighbourhood
(index ``c * 4 + k``, k = top-left, top-right, bottom-left, bottom-right), as the reference's
``nn.Unfold``-based merging does; the original Swin release orders them group by group, which
:mod:`knet.checkpoint.pretrained` converts.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath, run_block

HW = Tuple[int, int]


def _pad_amount(size: int, multiple: int) -> int:
    """Zeros to append so that ``size`` becomes a multiple of ``multiple``.

    A ceiling division of non-negative numbers, not ``%`` nor ``-(-size // multiple)``: for a
    symbolic size (ONNX export) chains of modulos take the exporter minutes to simplify, and ONNX
    divides negative integers by truncation, not flooring.
    """
    return (size + multiple - 1) // multiple * multiple - size


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: (N,3,H,W) -> tokens (N, H'W', C), H' = ceil(H/p).

    Sizes that do not divide by the patch size are padded bottom/right with zeros first (the
    reference's "corner" adaptive padding).
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, HW]:
        # Padded even by zero amounts (a copy): no branch on the size, so that one exported graph
        # serves every input size.
        pad_h = _pad_amount(x.shape[2], self.patch_size)
        pad_w = _pad_amount(x.shape[3], self.patch_size)
        x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, hw


class PatchMerging(nn.Module):
    """2x2 patch merging: tokens (N, H*W, C) -> (N, ceil(H/2)*ceil(W/2), out_channels).

    Odd sizes are padded bottom/right with zeros. The four neighbours are gathered in the order of
    ``nn.Unfold(kernel_size=2, stride=2)`` (channel-major: ``c * 4 + kh * 2 + kw``), then
    LayerNorm(4C) and a bias-free Linear(4C -> out_channels). A reshape/permute produces exactly the
    unfold layout without im2col's cost.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor, hw: HW) -> Tuple[torch.Tensor, HW]:
        n, length, c = x.shape
        h, w = hw
        if length != h * w:
            raise ValueError(f"PatchMerging got {length} tokens for a {h}x{w} map")
        x = x.view(n, h, w, c)
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        x = F.pad(x, (0, 0, 0, 2 * w2 - w, 0, 2 * h2 - h))  # unconditional, as in PatchEmbed
        # (N, h2, kh, w2, kw, C) -> (N, h2, w2, C, kh, kw): channel-major, then the 2x2 offsets.
        x = x.view(n, h2, 2, w2, 2, c).permute(0, 1, 3, 5, 2, 4).reshape(n, h2 * w2, 4 * c)
        x = self.reduction(self.norm(x))
        return x, (h2, w2)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(w*w, w*w) int64 index into the (2w-1)^2-row bias table, built as the reference builds it.

    Entry [i, j] identifies the 2-D offset between window positions i and j.
    """
    w = window_size
    seq1 = torch.arange(0, (2 * w - 1) * w, 2 * w - 1)
    seq2 = torch.arange(0, w)
    coords = (seq1[:, None] + seq2[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1).contiguous()


class WindowMSA(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    ``relative_position_bias_table``: ((2w-1)^2, heads); ``relative_position_index``: (w*w, w*w),
    a persistent buffer (it is in the reference's checkpoints).
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop_rate = attn_drop_rate
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, w*w, w*w) additive attention bias."""
        area = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(area, area, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, L, C) windows (B = N * nW, L = w*w); mask: (nW, L, L) of 0 / -100 or None.

        Returns (B, L, C).
        """
        b, length, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, length, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, L, d)
        # softmax(q * scale @ k^T + bias + mask) v, written out as the reference computes it
        # (mmsegmentation's WindowMSA). PyTorch's fused scaled_dot_product_attention rounds
        # differently, and with random weights the kernel-update head amplifies that: Swin-T
        # UPerNet's logits were 1.46e-4 x max from the reference's with it, 8.8e-5 written out
        # (knet's model as it is; its inference copy 1.27e-4 -> 8.3e-5). The -100 (not -inf) of
        # the mask keeps the reference's values for pixels from other regions of a shifted window.
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, L, L)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            # Windows of one image are consecutive in the batch (image-major), so the per-window
            # mask repeats once per image.
            num_windows = mask.shape[0]
            attn = attn.view(b // num_windows, num_windows, heads, length, length)
            attn = (attn + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)).view(b, heads, length, length)
        attn = F.dropout(attn.softmax(dim=-1), self.attn_drop_rate, self.training)
        out = (attn @ v).transpose(1, 2).reshape(b, length, c)
        return self.proj_drop(self.proj(out))


def _shift_attention_mask(hp: int, wp: int, window_size: int, shift_size: int,
                          device: torch.device) -> torch.Tensor:
    """(nW, w*w, w*w) mask of the shifted windows of a padded hp x wp map: 0 between tokens of the
    same region (before the cyclic roll), -100 between different regions."""
    img_mask = torch.zeros((1, hp, wp, 1), device=device)
    slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    count = 0
    for hs in slices:
        for ws in slices:
            img_mask[:, hs, ws, :] = count
            count += 1
    windows = _window_partition(img_mask, window_size).squeeze(-1)  # (nW, w*w)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0).to(img_mask.dtype)


def _window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(N, Hp, Wp, C) -> (N * nW, w*w, C), windows of one image consecutive, row-major."""
    n, h, w, c = x.shape
    ws = window_size
    x = x.view(n, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_reverse(windows: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_window_partition`: (N * nW, w*w, C) -> (N, Hp, Wp, C)."""
    c = windows.shape[-1]
    ws = int(round(windows.shape[1] ** 0.5))
    x = windows.view(n, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention on a token map: pad to whole windows, roll, attend, roll back,
    crop, then drop-path. ``w_msa`` holds the weights."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int,
                 qkv_bias: bool = True, attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias, attn_drop_rate, proj_drop_rate)
        self.drop = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """x: (N, H*W, C) -> (N, H*W, C)."""
        n, length, c = x.shape
        h, w = hw
        if length != h * w:
            raise ValueError(f"ShiftWindowMSA got {length} tokens for a {h}x{w} map")
        ws, shift = self.window_size, self.shift_size
        x = x.view(n, h, w, c)
        # Padding comes after norm1, so the zero tokens take part in attention exactly as in the
        # reference (they are not masked out). Unconditional, as in PatchEmbed.
        pad_b, pad_r = _pad_amount(h, ws), _pad_amount(w, ws)
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = _shift_attention_mask(hp, wp, ws, shift, x.device)
        windows = self.w_msa(_window_partition(x, ws), mask=mask)
        x = _window_reverse(windows, n, hp, wp)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :h, :w, :]
        return self.drop(x.contiguous().view(n, h * w, c))


class FFN(nn.Module):
    """Linear(C -> hidden) -> GELU -> Dropout -> Linear(hidden -> C) -> Dropout, then
    ``identity + DropPath(out)``. ``layers`` mirrors the reference's nesting (keys
    ``layers.0.0`` and ``layers.1``)."""

    def __init__(self, embed_dims: int, feedforward_channels: int, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.GELU(), nn.Dropout(drop_rate)),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(drop_rate),
        )
        self.dropout_layer = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """x, identity: (N, L, C) -> (N, L, C)."""
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    """Pre-norm transformer block: x + W-MSA(norm1(x)), then + FFN(norm2(.))."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, window_size: int,
                 shift: bool, qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size, window_size // 2 if shift else 0,
                                   qkv_bias, attn_drop_rate, drop_rate, drop_path_rate)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, feedforward_channels, drop_rate, drop_path_rate)

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """x: (N, H*W, C) -> (N, H*W, C)."""
        x = x + self.attn(self.norm1(x), hw)
        return self.ffn(self.norm2(x), identity=x)


class SwinBlockSequence(nn.Module):
    """One stage: ``depth`` blocks (every second one shifted), then optional patch merging."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, depth: int,
                 window_size: int, qkv_bias: bool, drop_rate: float, attn_drop_rate: float,
                 drop_path_rates: Sequence[float], downsample: Optional[PatchMerging]) -> None:
        super().__init__()
        if len(drop_path_rates) != depth:
            raise ValueError(f"{len(drop_path_rates)} drop-path rates for {depth} blocks")
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, feedforward_channels, window_size, shift=j % 2 == 1,
                      qkv_bias=qkv_bias, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                      drop_path_rate=drop_path_rates[j])
            for j in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw: HW, recompute: bool = False) -> Tuple[torch.Tensor, HW, torch.Tensor, HW]:
        """x: (N, H*W, C) -> (merged tokens, merged hw, stage tokens before merging, hw).
        ``recompute``: the blocks recompute their activations in the backward pass
        (:func:`~knet.models.layers.run_block`)."""
        for block in self.blocks:
            x = run_block(block, recompute, x, hw)
        if self.downsample is None:
            return x, hw, x, hw
        x_down, down_hw = self.downsample(x, hw)
        return x_down, down_hw, x, hw


class SwinTransformer(nn.Module):
    """Swin Transformer returning the four stage outputs (no absolute position embedding).

    Input (N,3,H,W) -> [(N, C, ceil(H/4), ceil(W/4)), (N, 2C, ../8), (N, 4C, ../16), (N, 8C, ../32)]
    with C = ``embed_dims`` (each stage's spatial size is the ceiling of half the previous one).
    Each output is LayerNorm'd by ``norm{i}``.
    """

    prefers_channels_last = False  # its tokens are (B, L, C) already; channels-last copies were slower

    def __init__(self, embed_dims: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, patch_size: int = 4,
                 mlp_ratio: float = 4, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 recompute_stages: Sequence[int] = ()) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        num_stages = len(depths)
        if any(not 0 <= i < num_stages for i in recompute_stages):
            raise ValueError(f"recompute_stages must be stages 0-{num_stages - 1}, got {tuple(recompute_stages)}")
        self.out_channels: List[int] = [embed_dims * 2 ** i for i in range(num_stages)]
        self.strides: List[int] = [patch_size * 2 ** i for i in range(num_stages)]

        self.patch_embed = PatchEmbed(3, embed_dims, patch_size)
        self.drop_after_pos = nn.Dropout(drop_rate)
        # Stochastic depth grows linearly over all blocks, across stages.
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            channels = self.out_channels[i]
            downsample = PatchMerging(channels, 2 * channels) if i < num_stages - 1 else None
            self.stages.append(SwinBlockSequence(
                channels, num_heads[i], int(mlp_ratio * channels), depth, window_size, qkv_bias,
                drop_rate, attn_drop_rate, dpr[start:start + depth], downsample))
            start += depth
        for i, channels in enumerate(self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))
        # Stages whose blocks recompute their activations in the backward pass instead of
        # keeping them (:func:`~knet.models.layers.run_block`): less memory for more time, the same
        # values and gradients. A training-time choice, not in the state dict.
        self.recompute_stages: Tuple[int, ...] = tuple(recompute_stages)
        self._init_weights()

    def _init_weights(self) -> None:
        """Initialisation for training from scratch: truncated normal (std 0.02) for Linear weights
        and bias tables, zero biases, LayerNorm 1 / 0 (the patch-embedding conv keeps PyTorch's)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(N,3,H,W) -> list of 4 feature maps (N, C_i, H_i, W_i), contiguous."""
        x, hw = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw, out, out_hw = stage(x, hw, i in self.recompute_stages)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, out_hw[0], out_hw[1], self.out_channels[i]).permute(0, 3, 1, 2).contiguous())
        return outs

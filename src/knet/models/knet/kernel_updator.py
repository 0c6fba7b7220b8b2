"""The gated kernel updator: how a kernel absorbs the feature its mask assembled."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class KernelUpdator(nn.Module):
    """Adaptive, gated update of kernels by their group features (K-Net, Sec. 3.2).

    A kernel of ``width`` channels is processed as ``width // in_channels`` independent chunks
    of ``in_channels`` (the semantic reference splits 512-wide kernels into two 256-wide halves;
    the panoptic/instance reference updates its 256-wide kernels whole). ``feat_channels`` is the
    width of the gates (every reference config uses feat_channels = in_channels).

    Args of ``forward``:
        group_feats: (B, N, width) features assembled by each of the N masks.
        kernels: (B, N, K*K, width) current kernels.
    Returns: (B*N*chunks, K*K, out_channels) updated kernels (caller reshapes them back).
    """

    def __init__(self, in_channels: int = 256, feat_channels: int = 64, out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.out_channels = out_channels or in_channels
        self.dynamic_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_gate = nn.Linear(in_channels, feat_channels)
        self.update_gate = nn.Linear(in_channels, feat_channels)
        self.norm_in = nn.LayerNorm(feat_channels)
        self.norm_out = nn.LayerNorm(feat_channels)
        self.input_norm_in = nn.LayerNorm(feat_channels)
        self.input_norm_out = nn.LayerNorm(feat_channels)
        self.activation = nn.ReLU(inplace=True)
        self.fc_layer = nn.Linear(feat_channels, self.out_channels)
        self.fc_norm = nn.LayerNorm(self.out_channels)

    def forward(self, group_feats: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        group_feats = group_feats.reshape(-1, self.in_channels)  # (P, C) with P = B*N*chunks
        num_kernels = group_feats.shape[0]
        params = self.dynamic_layer(group_feats)
        param_in, param_out = params[:, : self.feat_channels], params[:, -self.feat_channels:]

        input_feats = self.input_layer(kernels.reshape(num_kernels, -1, self.in_channels))  # (P, K*K, 2F)
        input_in, input_out = input_feats[..., : self.feat_channels], input_feats[..., -self.feat_channels:]

        gate_feats = input_in * param_in.unsqueeze(-2)
        input_gate = self.input_norm_in(self.input_gate(gate_feats)).sigmoid()
        update_gate = self.norm_in(self.update_gate(gate_feats)).sigmoid()
        param_out = self.norm_out(param_out)
        input_out = self.input_norm_out(input_out)

        features = update_gate * param_out.unsqueeze(-2) + input_gate * input_out
        return self.activation(self.fc_norm(self.fc_layer(features)))

"""DMAF fusion: masked transformer attention across modalities with attention-derived weights.

At one encoder scale every modality m contributes a feature map ``f_m`` of shape [B, C, *S].
The module

1. pools each map to a coarse token grid of ``G = prod(grid)`` cells ([B, M, C, G]);
2. runs one pre-norm transformer layer over the M modality tokens of every cell (sequence length M,
   batch B*G) with an additive ``-inf`` key mask on missing modalities, so a missing modality is
   never attended to and its own (query) output is discarded;
3. derives per-cell modality weights from the attention maps: ``w_m`` is the attention that the
   present modalities pay to modality m, averaged over heads and present queries (sums to 1 over
   present modalities, exactly 0 for missing ones);
4. turns the attended tokens into channel gates ``g_m = sigmoid(W y_m)`` and fuses
   ``sum_m up(w_m) * up(g_m) * f_m``, where ``up`` interpolates the token grid back to S;
5. projects the fused map to ``out_channels`` with a 1x1 conv block (conv, norm, nonlinearity).

Nothing of a missing modality reaches the output, whatever its feature content.
"""
from __future__ import annotations

from typing import Type

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.conv import _ConvNd


class DMAFFusion(nn.Module):
    """Fuses M modality feature maps of one scale into one map.

    Args:
        num_modalities: M.
        channels: C, channels of each modality's feature map.
        out_channels: channels of the fused map handed to the decoder.
        conv_op: nn.Conv2d or nn.Conv3d (decides 2D/3D pooling and interpolation).
        num_heads: attention heads; reduced to the largest divisor of C that is <= num_heads.
        token_grid: cells per spatial axis of the token grid (capped by the feature map size).
        mlp_ratio: hidden width of the transformer MLP relative to C.
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: as in nnU-Net's plans, for the output block.
    """

    def __init__(self, num_modalities: int, channels: int, out_channels: int, conv_op: Type[_ConvNd],
                 num_heads: int = 4, token_grid: int = 4, mlp_ratio: float = 2.0,
                 norm_op: Type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 conv_bias: bool = True):
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        self.num_modalities = num_modalities
        self.channels = channels
        self.token_grid = token_grid
        self.spatial_dims = 3 if conv_op == nn.Conv3d else 2
        self.num_heads = max(h for h in range(1, max(1, num_heads) + 1) if channels % h == 0)

        self.modality_embedding = nn.Parameter(torch.zeros(num_modalities, channels))
        nn.init.trunc_normal_(self.modality_embedding, std=0.02)
        self.norm_attn = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, self.num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(channels)
        hidden = max(1, int(round(channels * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self.gate = nn.Linear(channels, channels)
        self.out_block = ConvDropoutNormReLU(conv_op, channels, out_channels, 1, 1, conv_bias,
                                             norm_op, norm_op_kwargs, None, None, nonlin, nonlin_kwargs)

    def _grid_size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(min(s, self.token_grid) for s in spatial)

    def forward(self, modality_features: torch.Tensor, modality_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            modality_features: [B, M, C, *S]; entries of missing modalities are ignored.
            modality_mask: bool [B, M], True = present; at least one True per row.
        Returns:
            fused: [B, out_channels, *S]
            modality_weights: [B, M, *grid] attention-derived weights (0 for missing modalities,
                summing to 1 over modalities in every grid cell).
        """
        b, m, c = modality_features.shape[:3]
        spatial = tuple(modality_features.shape[3:])
        grid = self._grid_size(spatial)
        num_cells = 1
        for g in grid:
            num_cells *= g

        pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
        tokens = pool(modality_features.reshape(b * m, c, *spatial), grid)  # [B*M, C, *grid]
        tokens = tokens.reshape(b, m, c, num_cells).permute(0, 3, 1, 2).reshape(b * num_cells, m, c)
        present = modality_mask.bool()
        present_cells = present.repeat_interleave(num_cells, dim=0)  # [B*G, M]
        tokens = torch.where(present_cells.unsqueeze(-1), tokens, torch.zeros((), dtype=tokens.dtype,
                                                                              device=tokens.device))
        tokens = tokens + self.modality_embedding.unsqueeze(0)

        normed = self.norm_attn(tokens)
        attended, attn = self.attention(normed, normed, normed, key_padding_mask=~present_cells,
                                        need_weights=True, average_attn_weights=True)  # attn [B*G, M(q), M(k)]
        tokens = tokens + attended
        tokens = tokens + self.mlp(self.norm_mlp(tokens))

        query_weight = present_cells.to(attn.dtype)
        weights = (attn * query_weight.unsqueeze(-1)).sum(1) / query_weight.sum(1, keepdim=True)  # [B*G, M]
        weights = weights * query_weight  # exact zeros for missing modalities
        gates = torch.sigmoid(self.gate(tokens))  # [B*G, M, C]

        weights = weights.reshape(b, *grid, m).movedim(-1, 1)  # [B, M, *grid]
        gates = gates.reshape(b, *grid, m, c).movedim(-2, 1).movedim(-1, 2)  # [B, M, C, *grid]
        scaled_gates = (gates * weights.unsqueeze(2)).reshape(b * m, c, *grid)
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        scaled_gates = F.interpolate(scaled_gates, size=spatial, mode=mode, align_corners=False)
        scaled_gates = scaled_gates.reshape(b, m, c, *spatial)

        present_view = present.view(b, m, *([1] * (1 + len(spatial))))
        contributions = torch.where(present_view, scaled_gates * modality_features,
                                    torch.zeros((), dtype=modality_features.dtype, device=modality_features.device))
        fused = contributions.sum(1)
        return self.out_block(fused), weights

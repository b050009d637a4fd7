"""DMAF fusion (figure DMAF.png of Lan et al. 2025): masked multi-head attention over the tokens of
all present modalities, one attention map per modality, fused = sum_m e^m * Att_map_m.

At one encoder level every modality m contributes a feature map ``e^m`` [B, C, *S]. The module

1. **Project**: average-pools each map to a token grid of at most ``token_grid`` cells per axis
   (``T = prod(grid)`` tokens; this bounds the cost at high resolution), then a linear projection
   C -> D plus a learned modality embedding and a fixed sinusoidal position code: tokens t_m [B, T, D];
2. **Masked multi-head attention**: ``num_layers`` (default 4) pre-norm transformer layers over the
   M*T tokens of all modalities; the key padding mask removes every token of a missing modality
   (they are never attended to, and their own outputs are discarded);
3. **Restore**: a linear map D -> ``map_channels`` (default 1: one spatial map per modality; C: one
   map per channel) gives per-modality logits at the token grid; a softmax over the PRESENT
   modalities (per map channel and cell; missing modalities get exactly 0) gives ``Att_map_m``
   [B, map_channels, *grid], which is interpolated (trilinear/bilinear) to the feature resolution;
   interpolation keeps the maps summing to 1 over the present modalities;
4. **Fuse**: ``f = sum over present m of e^m * Att_map_m`` (element-wise product, element-wise sum).

Choices the figure leaves open (documented in docs/training_method.md): pooled token grid, softmax
across modalities (so f is a convex combination whose scale does not depend on how many modalities
are present), sinusoidal positions (no parameters tied to the patch size), spatial maps (one channel:
interpolating and storing per-channel maps at full resolution cost about three U-Net convolutions at
the first level in training on CPU; ``map_channels=C`` restores them).
``mode="mean"`` replaces the attention maps by 1/|present| (the "plain mean" ablation).
Nothing of a missing modality reaches ``f``, whatever its feature content.
"""
from __future__ import annotations

import math
from typing import Type

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.conv import _ConvNd

from nnunetv2_dmaf.architecture.attention_bias import key_padding_bias

FUSION_MODES = ("attention", "mean")


def _memo(memo: dict | None, key: tuple, make):
    """``memo[key]``, made with ``make()`` the first time (always made without a memo)."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


def sinusoidal_positions(grid: tuple[int, ...], dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed position code [T, dim] for a token grid (each axis gets an equal share of the sin/cos
    frequencies over its normalised coordinate; unused dimensions are 0)."""
    coords = torch.meshgrid(*[torch.linspace(0, 1, g, device=device) if g > 1 else torch.zeros(1, device=device)
                              for g in grid], indexing="ij")
    per_axis = (dim // (2 * len(grid))) or 1
    freqs = torch.exp(torch.arange(per_axis, device=device) * (-math.log(100.0) / per_axis)) * math.pi * 4
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * freqs  # [T, per_axis]
        parts += [torch.sin(angles), torch.cos(angles)]
    code = torch.cat(parts, 1)[:, :dim]
    if code.shape[1] < dim:
        code = F.pad(code, (0, dim - code.shape[1]))
    return code.to(dtype)


class DMAFFusion(nn.Module):
    """Fuses M modality feature maps of one level into one map with the same channels.

    Args:
        num_modalities: M.
        channels: C, channels of each modality's (and the fused) feature map.
        conv_op: nn.Conv2d or nn.Conv3d (decides 2D/3D pooling and interpolation).
        num_layers: stacked masked multi-head attention layers (figure: 4).
        num_heads: attention heads; reduced to the largest divisor of the token width <= num_heads.
        token_grid: at most this many token cells per spatial axis (T <= token_grid ** dims).
        token_dim: D, token width (default: C, capped at 128).
        mlp_ratio: hidden width of each layer's MLP relative to D.
        map_channels: channels of each attention map: 1 (spatial map, default) or C (per channel).
        mode: "attention" (DMAF) or "mean" (ablation: Att_map_m = 1/|present|; the module has no
            parameters then).
    """

    def __init__(self, num_modalities: int, channels: int, conv_op: Type[_ConvNd], num_layers: int = 4,
                 num_heads: int = 4, token_grid: int = 4, token_dim: int | None = None, mlp_ratio: float = 2.0,
                 map_channels: int = 1, mode: str = "attention"):
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
        if map_channels not in (1, channels):
            raise ValueError(f"map_channels must be 1 or the feature channels ({channels}), got {map_channels}")
        if num_layers < 1 or token_grid < 1:
            raise ValueError(f"num_layers and token_grid must be >= 1, got {num_layers}, {token_grid}")
        self.num_modalities = num_modalities
        self.channels = channels
        self.token_grid = token_grid
        self.mode = mode
        self.spatial_dims = 3 if conv_op == nn.Conv3d else 2
        dim = token_dim if token_dim is not None else min(channels, 128)
        self.token_dim = dim
        self.num_heads = max(h for h in range(1, max(1, num_heads) + 1) if dim % h == 0)
        self.map_channels = map_channels
        self._position_cache: dict[tuple, torch.Tensor] = {}
        if mode == "mean":  # no parameters: every parameter of a module must get a gradient under DDP
            return
        self.project = nn.Linear(channels, dim)
        self.modality_embedding = nn.Parameter(torch.zeros(num_modalities, dim))
        nn.init.trunc_normal_(self.modality_embedding, std=0.02)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, self.num_heads, dim_feedforward=max(1, int(round(dim * mlp_ratio))),
                                       dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim)
        self.restore = nn.Linear(dim, map_channels)

    def grid_size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(min(s, self.token_grid) for s in spatial)

    def positions(self, grid: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The sinusoidal position code [T, D] of ``grid``, computed once per (grid, device, dtype) and
        kept in a plain dict (not a buffer: no state_dict entry). Under torch.compile it is traced
        into the graph (constant there); tensors of a tracing mode (fake/meta) are never kept."""
        if torch.compiler.is_compiling():
            return sinusoidal_positions(grid, self.token_dim, device, dtype)
        key = (grid, device, dtype)
        code = self._position_cache.get(key)
        if code is None:
            with torch.inference_mode(False), torch.no_grad():
                code = sinusoidal_positions(grid, self.token_dim, device, dtype)
            if type(code) is torch.Tensor and not code.is_meta:
                self._position_cache[key] = code
        return code

    def missing_mask(self, modality_mask: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
        """bool [B, M, 1, *1] (broadcasts over [B, M, C, *S]), True = missing modality.

        ``memo``: a dict shared by the levels of one forward pass (same mask), so that the tensors
        derived from the mask (this one and :meth:`token_attention_bias`) are built once."""
        b, m = modality_mask.shape
        return _memo(memo, ("missing", self.spatial_dims),
                     lambda: (~modality_mask.bool()).view(b, m, *([1] * (1 + self.spatial_dims))))

    def token_attention_bias(self, missing: torch.Tensor, tokens_per_modality: int, dtype: torch.dtype,
                             memo: dict | None = None) -> torch.Tensor:
        """The key padding mask as an additive attention bias [B, 1, 1, M*T] (0 for the tokens of
        present modalities, -inf for missing ones), shared by all layers (and levels, with ``memo``)."""
        b, m, t = missing.shape[0], missing.shape[1], tokens_per_modality
        return _memo(memo, ("attention_bias", t, dtype),
                     lambda: key_padding_bias(missing.view(b, m, 1).expand(b, m, t).reshape(b, m * t), dtype))

    @staticmethod
    def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, attention_bias: torch.Tensor,
                      batch: int, heads: int) -> torch.Tensor:
        """``layer(x, src_key_padding_mask=...)`` of a pre-norm GELU ``nn.TransformerEncoderLayer`` without
        dropout, on tokens [B*N, D], with the layer's own parameters: the same math in fewer operators
        (one q/k/v projection, one fused attention call; no transposes, mask conversions or merges).
        ``attention_bias``: [B, 1, 1, N] additive (see :meth:`token_attention_bias`)."""
        d = x.shape[1]
        attn = layer.self_attn
        h = F.layer_norm(x, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(batch, -1, 3, heads, d // heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, D / heads]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias)
        x = x + F.linear(attended.transpose(1, 2).reshape(x.shape), attn.out_proj.weight, attn.out_proj.bias)
        h = F.layer_norm(x, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
        h = F.gelu(F.linear(h, layer.linear1.weight, layer.linear1.bias))
        return x + F.linear(h, layer.linear2.weight, layer.linear2.bias)

    def attention_logits(self, modality_features: torch.Tensor, modality_mask: torch.Tensor,
                         memo: dict | None = None) -> torch.Tensor:
        """[B, M, C, *S], bool [B, M] -> per-modality map logits [B, M, map_channels, *grid] (steps 1-3).
        The features of missing modalities are replaced by 0 after pooling (NaN/inf there cannot leak).
        ``memo``: see :meth:`missing_mask`."""
        b, m, c = modality_features.shape[:3]
        spatial = tuple(modality_features.shape[3:])
        grid = self.grid_size(spatial)
        pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
        t = math.prod(grid)
        missing = self.missing_mask(modality_mask, memo)
        pooled = pool(modality_features.reshape(b * m, c, *spatial), grid).view(b, m, c, *grid).masked_fill(missing, 0)
        tokens = F.linear(pooled.view(b * m, c, t).transpose(1, 2).reshape(b * m * t, c),
                          self.project.weight, self.project.bias)  # [B*M*T, D]
        d = self.token_dim
        offsets = self.modality_embedding.unsqueeze(1) + self.positions(grid, tokens.device, tokens.dtype)  # [M, T, D]
        tokens = (tokens.view(b, m, t, d) + offsets).view(b * m * t, d)
        attention_bias = self.token_attention_bias(missing, t, tokens.dtype, memo)
        for layer in self.layers:
            tokens = self.encoder_layer(layer, tokens, attention_bias, b, self.num_heads)
        logits = F.linear(F.layer_norm(tokens, (d,), self.norm.weight, self.norm.bias, self.norm.eps),
                          self.restore.weight, self.restore.bias)  # [B*M*T, map_channels]
        if self.map_channels == 1:
            return logits.view(b, m, 1, *grid)
        return logits.view(b, m, t, self.map_channels).transpose(2, 3).reshape(b, m, self.map_channels, *grid)

    def attention_maps(self, modality_features: torch.Tensor, modality_mask: torch.Tensor,
                       memo: dict | None = None) -> torch.Tensor:
        """Att_map [B, M, map_channels, *grid]: softmax over present modalities (0 for missing ones).
        ``memo``: see :meth:`missing_mask`."""
        if self.mode == "mean":
            present = ~self.missing_mask(modality_mask, memo)
            b, m = modality_features.shape[:2]
            grid = self.grid_size(tuple(modality_features.shape[3:]))
            ones = modality_features.new_ones((b, m, self.map_channels, *grid))
            return ones * present / present.sum(1, keepdim=True)
        logits = self.attention_logits(modality_features, modality_mask, memo).float()
        logits = logits.masked_fill(self.missing_mask(modality_mask, memo), float("-inf"))
        return torch.softmax(logits, 1).to(modality_features.dtype)

    def weighted_sum(self, modality_features: torch.Tensor, maps: torch.Tensor, missing: torch.Tensor
                     ) -> torch.Tensor:
        """Step 4: f = sum over present m of e^m * Att_map_m (maps interpolated to the feature size).
        ``missing``: bool [B, M, 1, *1], True = missing (:meth:`missing_mask`)."""
        spatial = tuple(modality_features.shape[3:])
        b, m = modality_features.shape[:2]
        # masked_fill, not a product, so that NaN/inf in a missing modality's features cannot leak
        modality_features = modality_features.masked_fill(missing, 0)
        c = maps.shape[2]
        if tuple(maps.shape[3:]) != spatial:
            mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
            full = F.interpolate(maps.reshape(b * m, c, *maps.shape[3:]), size=spatial, mode=mode,
                                 align_corners=True).view(b, m, c, *spatial)
        else:
            full = maps
        return (full * modality_features).sum(1)

    def forward(self, modality_features: torch.Tensor, modality_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            modality_features: [B, M, C, *S] (e^m per modality; entries of missing modalities ignored).
            modality_mask: bool [B, M], True = present; at least one True per row.
        Returns:
            fused f: [B, C, *S]; attention maps [B, M, map_channels, *grid] (at the token grid).
        """
        memo: dict = {}
        maps = self.attention_maps(modality_features, modality_mask, memo)
        return self.weighted_sum(modality_features, maps, self.missing_mask(modality_mask, memo)), maps

"""The learned parts of DMAF-Net's relation distillation (right panel of architecture.png).

Both act at the deepest level L on (sample, modality) pairs of PRESENT modalities, with the fused
feature f_L of the same sample as the teacher. They live inside DMAFNet so that their parameters are
trained, checkpointed and synchronised under DDP with the rest of the network; inference never runs
them.

* :class:`CovarianceProjection` -- CCA's "Linear": one C x C linear map per modality, applied to
  e^m_L before its channel covariance is compared with f_L's.
* :class:`MaskedAttentionAlignment` -- MAA: multi-head attention with queries from e^m_L tokens and
  keys/values from f_L tokens (detached: f_L is the teacher); its output is compared with f_L. The
  mask: only present (sample, modality) pairs form queries, and key tokens outside the valid (not
  ignore-label) region can be masked with ``key_padding_mask``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from nnunetv2_dmaf.architecture.attention_bias import key_padding_bias


def level_tokens(features: torch.Tensor, max_cells: int) -> torch.Tensor:
    """[N, C, *S] -> tokens [N, T, C], average-pooled to at most ``max_cells`` per axis."""
    spatial = tuple(features.shape[2:])
    grid = tuple(min(s, max_cells) for s in spatial)
    if grid != spatial:
        pool = F.adaptive_avg_pool3d if len(spatial) == 3 else F.adaptive_avg_pool2d
        features = pool(features, grid)
    return features.flatten(2).transpose(1, 2)


class CovarianceProjection(nn.Module):
    """Per-modality linear map of the channels: x [P, C, N] with modality ids [P] -> [P, C, N]."""

    def __init__(self, num_modalities: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_modalities, channels, channels))
        self.bias = nn.Parameter(torch.zeros(num_modalities, channels))
        bound = 1 / math.sqrt(channels)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return torch.einsum("pdc,pcn->pdn", self.weight[modality], x) + self.bias[modality][..., None]


class MaskedAttentionAlignment(nn.Module):
    """MMHA(Q = e^m_L tokens, K = V = f_L tokens): [P, T, C] x [P, T, C] -> [P, T, C]."""

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        heads = max(h for h in range(1, max(1, num_heads) + 1) if channels % h == 0)
        self.norm_query = nn.LayerNorm(channels)
        self.norm_key = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, student_tokens: torch.Tensor, teacher_tokens: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention(norm_query(student), norm_key(teacher), teacher, key_padding_mask=...)`` computed
        functionally with the module's own parameters (the same math as ``nn.MultiheadAttention``
        without dropout, in fewer aten operators). ``key_padding_mask`` [P, T]: bool (True = ignore)
        or additive float."""
        p, t, c = student_tokens.shape
        s = teacher_tokens.shape[1]
        attn = self.attention
        heads = attn.num_heads
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        q = F.linear(self.norm_query(student_tokens), w_q, b_q).view(p, t, heads, c // heads).transpose(1, 2)
        k = F.linear(self.norm_key(teacher_tokens), w_k, b_k).view(p, s, heads, c // heads).transpose(1, 2)
        v = F.linear(teacher_tokens, w_v, b_v).view(p, s, heads, c // heads).transpose(1, 2)
        bias = None
        if key_padding_mask is not None:
            bias = key_padding_bias(key_padding_mask, q.dtype) if key_padding_mask.dtype == torch.bool \
                else key_padding_mask.to(q.dtype).view(p, 1, 1, s)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [P, heads, T, C / heads]
        return F.linear(attended.transpose(1, 2).reshape(p, t, c), attn.out_proj.weight, attn.out_proj.bias)

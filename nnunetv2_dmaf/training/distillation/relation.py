"""Relation distillation (architecture.png, right panel): CCA and MAA, per (sample, modality) pair.

Teacher = the fused feature f_L of the pair's sample, DETACHED: f_L is what the student e^m_L should
relate like, and letting these losses pull f_L towards a single (possibly weak) modality would harm the
fused path that inference uses. Student = e^m_L (gradient flows into encoder m and the heads).
Computed in float32 with autocast disabled (covariances and cosines are precision-sensitive).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def normalized_covariance(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Channel covariance over the positions, scaled to unit Frobenius norm: [P, C, N] -> [P, C, C].
    A constant feature map gives a zero matrix."""
    x = features.float()
    x = x - x.mean(-1, keepdim=True)
    cov = torch.bmm(x, x.transpose(1, 2)) / max(1, x.shape[-1])
    return cov / cov.flatten(1).norm(dim=1).clamp_min(eps).view(-1, 1, 1)


def covariance_consistency(projected_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_cov per pair: ||cov(Linear_m(e^m_L)) - cov(f_L)||_F^2 of unit-norm covariances (range [0, 4]).

    projected_student [P, C, N] (from DMAFNet's CovarianceProjection), teacher [P, C, N] -> [P]."""
    with torch.autocast(projected_student.device.type, enabled=False):
        diff = normalized_covariance(projected_student) - normalized_covariance(teacher.detach())
        return diff.pow(2).sum((1, 2))


def attention_alignment(attended: torch.Tensor, teacher_tokens: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_att per pair: mean over tokens of 1 - cos(MMHA(e^m_L, f_L)_t, f_L,t) (range [0, 2]).

    attended [P, T, C] (DMAFNet's MaskedAttentionAlignment output), teacher_tokens [P, T, C],
    valid: optional bool [P, T] tokens to count -> [P]."""
    with torch.autocast(attended.device.type, enabled=False):
        distance = 1 - F.cosine_similarity(attended.float(), teacher_tokens.detach().float(), dim=-1, eps=1e-8)
        if valid is None:
            return distance.mean(1)
        valid = valid.float()
        return (distance * valid).sum(1) / valid.sum(1).clamp_min(1.0)

"""Relation distillation: covariance (Gram) consistency and a masked graph-attention relation.

Both compare a *teacher* pass (the modalities a case has) with a *student* pass (a subset) of the
same network; the teacher's tensors are detached. Both are exactly 0 when student equals teacher.
Computations run in float32 with autocast disabled.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def normalized_covariance(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Channel covariance over the spatial positions, scaled to unit Frobenius norm per sample.

    features: [B, C, *S] -> [B, C, C]. A constant feature map gives a zero matrix.
    """
    x = features.float().flatten(2)
    x = x - x.mean(-1, keepdim=True)
    cov = x @ x.transpose(1, 2) / x.shape[-1]
    return cov / cov.flatten(1).norm(dim=1).clamp_min(eps)[:, None, None]


class CovarianceConsistencyLoss(nn.Module):
    """mean_b || cov_s(b) - cov_t(b) ||_F^2 with unit-norm covariances (range [0, 4])."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student, teacher: [B, C, *S] (e.g. fused bottleneck features) -> scalar."""
        with torch.autocast(student.device.type, enabled=False):
            diff = normalized_covariance(student) - normalized_covariance(teacher.detach())
            return diff.pow(2).sum((1, 2)).mean()


def masked_softmax_logits(logits: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last axis with keys where ``key_mask`` is False excluded.

    logits [B, M, M], key_mask bool [B, M]; rows whose keys are all masked come out as zeros."""
    masked = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
    log_p = torch.log_softmax(masked, -1)
    return torch.where(key_mask[:, None, :], log_p, torch.zeros_like(log_p)).nan_to_num(0.0)


def graph_relation(nodes: torch.Tensor, graph_mask: torch.Tensor, relation_mask: torch.Tensor,
                   temperature: float = 0.5) -> torch.Tensor:
    """Relation among modality nodes after one parameter-free masked graph-attention step.

    1. ``h = normalize(nodes)``; attention ``A = softmax_j(h_i . h_j / T)`` over nodes in ``graph_mask``;
       ``h' = normalize(A h)`` (each node aggregates the modalities present in this pass);
    2. relation ``log R_ij = log_softmax_j(h'_i . h'_j / T)`` over ``j`` in ``relation_mask``.

    Args:
        nodes: [B, M, D] modality node embeddings, e.g. :func:`modality_nodes` (rows of missing
            modalities are ignored).
        graph_mask: bool [B, M], modalities present in this pass.
        relation_mask: bool [B, M], subset of ``graph_mask`` the relation is taken over (the
            student's modalities, for both passes).
    Returns:
        log R: [B, M, M] (0 outside ``relation_mask`` keys).
    """
    h = F.normalize(nodes.float(), dim=-1) * graph_mask[..., None]
    attention = masked_softmax_logits(h @ h.transpose(1, 2) / temperature, graph_mask).exp() * graph_mask[..., None]
    h = F.normalize(attention @ h, dim=-1)
    return masked_softmax_logits(h @ h.transpose(1, 2) / temperature, relation_mask)


class GraphRelationLoss(nn.Module):
    """KL(R_teacher || R_student) between the masked graph relations, averaged over the student's
    modality nodes (queries) in samples with at least two student modalities.

    The teacher graph aggregates over all the case's modalities, the student graph only over its own,
    and both relations are taken over the student's modalities, so the loss asks the student's
    modalities to relate to each other as they do when the missing ones are there.
    Zero when the masks are equal (identical nodes) or the student has a single modality.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student_nodes: torch.Tensor, teacher_nodes: torch.Tensor,
                student_mask: torch.Tensor, teacher_mask: torch.Tensor) -> torch.Tensor:
        """nodes: [B, M, D]; masks: bool [B, M] with student_mask a subset of teacher_mask -> scalar."""
        with torch.autocast(student_nodes.device.type, enabled=False):
            student_mask = student_mask.bool()
            teacher_mask = teacher_mask.bool() | student_mask
            log_s = graph_relation(student_nodes, student_mask, student_mask, self.temperature)
            log_t = graph_relation(teacher_nodes.detach(), teacher_mask, student_mask, self.temperature)
            kl = (log_t.exp() * (log_t - log_s) * student_mask[:, None, :]).sum(-1)  # [B, M] per query
            rows = (student_mask & (student_mask.sum(1, keepdim=True) >= 2)).float()
            return (kl * rows).sum() / rows.sum().clamp_min(1.0)


def modality_nodes(modality_features: torch.Tensor) -> torch.Tensor:
    """[B, M, C, *S] -> [B, M, N]: each modality's spatial activation map (channel mean of the squared
    features, centred over the N positions).

    Channel-agnostic on purpose: the modality encoders' channels are not aligned with each other.
    (Global average pooling is not used: after InstanceNorm + LeakyReLU it is almost independent of
    the data.)
    """
    energy = modality_features.float().pow(2).mean(2).flatten(2)
    return energy - energy.mean(-1, keepdim=True)

"""Helpers for tests: modality m's share of DMAFNet's grouped encoder (dimension 0 of every
parameter is M equal blocks, block m = modality m)."""
from __future__ import annotations

import torch
from torch import nn


def modality_grads(encoder: nn.Module, num_modalities: int, m: int) -> list[torch.Tensor]:
    """Copies of modality m's gradient blocks (zeros where a parameter has no gradient)."""
    return [(p.grad if p.grad is not None else torch.zeros_like(p)).view(num_modalities, -1)[m].clone()
            for p in encoder.parameters()]


def modality_params(encoder: nn.Module, num_modalities: int, m: int) -> list[torch.Tensor]:
    """Copies of modality m's parameter blocks."""
    return [p.detach().view(num_modalities, -1)[m].clone() for p in encoder.parameters()]


def modality_gradient_norm(encoder: nn.Module, num_modalities: int, m: int) -> float:
    return float(sum(g.abs().sum() for g in modality_grads(encoder, num_modalities, m)))

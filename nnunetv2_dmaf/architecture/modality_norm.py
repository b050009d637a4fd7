"""Normalisation with the affine parameters of each sample's modality, for ONE encoder shared by the
M modalities (``DMAFNet(shared_encoder=True, modality_norms=True)``).

``modality_conditioned_norm(nn.InstanceNorm3d, M)`` is a subclass of ``nn.InstanceNorm3d`` that
normalises without an affine of its own and then applies the scale and shift of the sample's
modality: parameters ``modality_weight`` / ``modality_bias`` [M, C], initialised to 1 / 0 (the
affine init of nnU-Net's norms). It expects the batch as the shared encoder runs it, ``[B*M, C, *S]``
flattened from ``[B, M, ...]``, so row r belongs to modality ``r % M``. Given to PlainConvEncoder /
ResidualEncoder as ``norm_op``, the convolutions stay shared while every norm layer is modality-
specific (2*M*C parameters each): the encoder knows which modality it encodes.

Created once per (norm class, M) as a real subclass, like grouped_conv.py's convolutions.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Type

import torch
from torch import nn


@lru_cache(maxsize=None)
def modality_conditioned_norm(norm_op: Type[nn.Module], modalities: int) -> Type[nn.Module]:
    """``norm_op`` (an instance/batch norm class) with per-modality affine parameters [M, C]."""
    if modalities < 1:
        raise ValueError(f"modalities must be >= 1, got {modalities}")

    def __init__(self, num_features: int, *args, **kwargs):
        kwargs["affine"] = False
        norm_op.__init__(self, num_features, *args, **kwargs)
        self.modality_weight = nn.Parameter(torch.ones(modalities, num_features))
        self.modality_bias = nn.Parameter(torch.zeros(modalities, num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B*M, C, *S] -> [B*M, C, *S]; row r normalised, then scaled/shifted by modality r % M."""
        if x.shape[0] % modalities:
            raise ValueError(f"{type(self).__name__} needs a batch of B*{modalities} rows (modality = row % "
                             f"{modalities}), got shape {tuple(x.shape)}")
        y = norm_op.forward(self, x).unflatten(0, (-1, modalities))  # [B, M, C, *S]
        expand = (1, modalities, x.shape[1]) + (1,) * (x.ndim - 2)
        return (y * self.modality_weight.view(expand) + self.modality_bias.view(expand)).flatten(0, 1)

    return type(f"ModalityConditioned{norm_op.__name__}x{modalities}", (norm_op,),
                {"__init__": __init__, "forward": forward, "__module__": __name__, "modalities": modalities})

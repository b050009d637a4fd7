"""The distillation terms of one training iteration, per present (sample, modality) pair, from the
SAME forward pass (no teacher network, no complete-modality pass): works in table mode (cases that
truly lack modalities), rates mode and both.

For every present pair (b, m), at level L (DMAFNet's ``distillation_level``, default the bottleneck):

* ``relation_covariance`` (CCA): :func:`covariance_consistency` of Linear_m(e^m_L) and f_L;
* ``relation_attention`` (MAA): :func:`attention_alignment` of MMHA(Q=e^m_L, KV=f_L) and f_L;
* ``prototype``: :func:`prototype_alignment` of e^m_L and f_L with the ground truth at level L.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnunetv2_dmaf.architecture.dmaf_net import DMAFFeatures
from nnunetv2_dmaf.training.distillation.prototype import prototype_alignment, region_masks
from nnunetv2_dmaf.training.distillation.relation import attention_alignment, covariance_consistency

LOSS_NAMES = ("relation_covariance", "relation_attention", "prototype")


@dataclass
class DistillationSettings:
    prototype_min_mass: float = 1e-3


def per_modality_mean(values: torch.Tensor, modality: torch.Tensor, num_modalities: int,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """values [P] of pairs with modality ids [P] -> [M] mean per modality (0 where it has no pair),
    weighted by ``weights`` [P] (0 or 1; default 1)."""
    weights = torch.ones_like(values) if weights is None else weights.to(values.dtype)
    sums = values.new_zeros(num_modalities).index_add(0, modality, values * weights)
    counts = values.new_zeros(num_modalities).index_add(0, modality, weights)
    return sums / counts.clamp_min(1.0)


def target_at(target: torch.Tensor | list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
    """The deep-supervision target with the feature's size, else the smallest one at least as large."""
    targets = target if isinstance(target, (list, tuple)) else [target]
    exact = [t for t in targets if tuple(t.shape[2:]) == tuple(size)]
    if exact:
        return exact[0]
    larger = [t for t in targets if all(a >= b for a, b in zip(t.shape[2:], size))]
    return min(larger, key=lambda t: t[0, 0].numel()) if larger else targets[0]


class CrossModalDistillation(nn.Module):
    """{name: per-pair loss [P]} for :data:`LOSS_NAMES` (no parameters: the learned heads live in
    DMAFNet).

    Args:
        settings: loss options.
        num_classes: segmentation heads (K classes for label maps, R regions for region maps).
        has_regions: region-based training (sigmoid outputs, region-map targets).
        has_ignore_channel: region targets carry nnU-Net's ignore mask as last channel.
    """

    def __init__(self, settings: DistillationSettings, num_classes: int, has_regions: bool,
                 has_ignore_channel: bool = False):
        super().__init__()
        self.settings = settings
        self.num_classes = num_classes
        self.has_regions = has_regions
        self.has_ignore_channel = has_ignore_channel

    def forward(self, features: DMAFFeatures, target: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor]:
        b_idx = features.pair_index[:, 0]
        e_l, f_l = features.student_features, features.teacher_features  # [P, C, *S]; f_l detached
        size = tuple(e_l.shape[2:])
        masks = region_masks(target_at(target, size), size, self.num_classes, self.has_regions,
                             self.has_ignore_channel)[b_idx]
        return {
            "relation_covariance": covariance_consistency(features.cca_projection, f_l.flatten(2)),
            "relation_attention": attention_alignment(features.maa_output, features.teacher_tokens),
            "prototype": prototype_alignment(e_l, f_l, masks, self.settings.prototype_min_mass),
        }

"""Prototype distillation: class/region prototypes of e^m_L and of f_L (masked average pooling with the
ground truth at level L), aligned per (sample, modality) pair ("cross-modal class-specific prototype
alignment"). The fused side is the detached teacher (see relation.py).

Handles both nnU-Net target layouts:

* label maps [B, 1, *S] (integer labels 0..K-1; values outside, e.g. an ignore label, belong to no
  class) -> K class prototypes, background included;
* region maps [B, R, *S] (bool/0-1, after ``ConvertSegmentationToRegionsTransform``; BraTS: WT, TC,
  ET) -> R region prototypes. With an ignore label nnU-Net appends its mask as an extra last channel:
  pass ``has_ignore_channel=True`` to drop it and exclude those voxels.

The target is area-downsampled to the feature resolution, so each voxel's membership is a fraction.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def region_masks(target: torch.Tensor, size: tuple[int, ...], num_classes: int | None = None,
                 has_regions: bool = False, has_ignore_channel: bool = False) -> torch.Tensor:
    """Soft class/region membership at the feature resolution.

    Args:
        target: label map [B, 1, *S] (int) or region map [B, R(+1), *S].
        size: spatial size of the features.
        num_classes: K for label maps.
        has_regions / has_ignore_channel: see module docstring.
    Returns:
        [B, K, *size] float32 in [0, 1].
    """
    if has_regions:
        masks = target.float()
        if has_ignore_channel:
            masks = masks[:, :-1] * (1 - masks[:, -1:])
    else:
        if num_classes is None:
            raise ValueError("num_classes is needed for label-map targets")
        labels = target[:, 0].long()
        valid = (labels >= 0) & (labels < num_classes)
        masks = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float()
        masks = masks * valid[:, None]
    if tuple(masks.shape[2:]) != tuple(size):
        pool = F.adaptive_avg_pool3d if len(size) == 3 else F.adaptive_avg_pool2d
        masks = pool(masks, size)
    return masks


def masked_average_prototypes(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """features [B, C, *S], masks [B, K, *S] -> prototypes [B, K, C], mass [B, K] (sum of the mask)."""
    f = features.float().flatten(2)  # [B, C, N]
    m = masks.float().flatten(2)  # [B, K, N]
    mass = m.sum(-1)
    prototypes = torch.bmm(m, f.transpose(1, 2)) / mass.clamp_min(eps).unsqueeze(-1)
    return prototypes, mass


def prototype_alignment(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor,
                        min_mass: float = 1e-3) -> torch.Tensor:
    """L_proto per pair: mean over the classes present (mask mass > ``min_mass`` feature voxels) of
    1 - cos(p^m_c, p^f_c); 0 for a pair without any class present.

    student e^m_L [P, C, *S], teacher f_L [P, C, *S] (detached here), masks [P, K, *S] -> [P]."""
    with torch.autocast(student.device.type, enabled=False):
        p_s, mass = masked_average_prototypes(student, masks)
        p_t, _ = masked_average_prototypes(teacher.detach(), masks)
        present = (mass > min_mass).float()
        distance = 1 - F.cosine_similarity(p_s, p_t, dim=-1, eps=1e-8)
        return (distance * present).sum(1) / present.sum(1).clamp_min(1.0)

"""Prototype distillation: class/region prototypes (masked average pooling of features with the
ground truth) aligned between the teacher (the case's modalities) and the student (a subset).

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
from torch import nn
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
    prototypes = (m @ f.transpose(1, 2)) / mass.clamp_min(eps)[..., None]
    return prototypes, mass


class PrototypeDistillationLoss(nn.Module):
    """mean over (sample, class present in the patch) of 1 - cos(p_student, p_teacher).

    A class is present when its mask mass at the feature resolution exceeds ``min_mass`` (in feature
    voxels). Zero (with a graph) when no class is present.
    """

    def __init__(self, min_mass: float = 1e-3):
        super().__init__()
        self.min_mass = min_mass

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """student, teacher: [B, C, *S]; masks: [B, K, *S] from :func:`region_masks` -> scalar."""
        with torch.autocast(student.device.type, enabled=False):
            p_s, mass = masked_average_prototypes(student, masks)
            p_t, _ = masked_average_prototypes(teacher.detach(), masks)
            present = (mass > self.min_mass).float()
            distance = 1 - F.cosine_similarity(p_s, p_t, dim=-1, eps=1e-8)
            return (distance * present).sum() / present.sum().clamp_min(1.0)

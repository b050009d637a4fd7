"""The three distillation terms of one training iteration, and the cheap teacher pass they need.

Teacher = the same DMAFNet under ``torch.no_grad()`` with the modalities the case has
(self-distillation); only the encoders and the fusion blocks of the stages used below run (no
decoder). Student = the training forward pass (``return_features=True``) with the dropout mask.

Stages (negative = counted from the bottleneck, as Python indices):

* relation_covariance: fused features of ``covariance_stage`` (default -1, the bottleneck);
* relation_graph: modality nodes (spatial activation maps of the encoder features) of ``graph_stage``
  (-2);
* prototype: fused features of ``prototype_stage`` (-2, the coarsest deep-supervision scale, whose
  downsampled target nnU-Net already provides).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnunetv2_dmaf.architecture.dmaf_net import DMAFFeatures, DMAFNet
from nnunetv2_dmaf.training.distillation.prototype import PrototypeDistillationLoss, region_masks
from nnunetv2_dmaf.training.distillation.relation import (CovarianceConsistencyLoss, GraphRelationLoss,
                                                          modality_nodes)

LOSS_NAMES = ("relation_covariance", "relation_graph", "prototype")


@dataclass
class DistillationSettings:
    covariance_stage: int = -1
    graph_stage: int = -2
    prototype_stage: int = -2
    graph_temperature: float = 0.5
    prototype_min_mass: float = 1e-3


@dataclass
class TeacherFeatures:
    """modality_features: per stage [B, M, C_s, *S_s]; fused: {stage index >= 0: [B, F_s, *S_s]}."""
    modality_features: list[torch.Tensor]
    fused: dict[int, torch.Tensor]
    modality_mask: torch.Tensor


class DistillationObjective(nn.Module):
    """Computes {name: loss} for :data:`LOSS_NAMES` from teacher and student features.

    Args:
        settings: stages and loss options.
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
        self.covariance = CovarianceConsistencyLoss()
        self.graph = GraphRelationLoss(settings.graph_temperature)
        self.prototype = PrototypeDistillationLoss(settings.prototype_min_mass)

    @staticmethod
    def _stage(index: int, num_stages: int) -> int:
        if not -num_stages <= index < num_stages:
            raise ValueError(f"distillation stage {index} does not exist in a network with {num_stages} stages")
        return index % num_stages

    @torch.no_grad()
    def teacher(self, network: DMAFNet, x: torch.Tensor, teacher_mask: torch.Tensor) -> TeacherFeatures:
        """Teacher pass: encoders of the case's modalities + fusion of the needed stages only."""
        mask = network.check_inputs(x, teacher_mask)
        modality = network.encode(x, mask)
        n = len(modality)
        stages = {self._stage(self.settings.covariance_stage, n), self._stage(self.settings.prototype_stage, n)}
        fused = {s: network.fusions[s](modality[s], mask)[0] for s in sorted(stages)}
        return TeacherFeatures(modality, fused, mask)

    def _target_for(self, target: torch.Tensor | list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """The deep-supervision target with the feature's size, else the smallest one at least as large."""
        targets = target if isinstance(target, (list, tuple)) else [target]
        exact = [t for t in targets if tuple(t.shape[2:]) == tuple(size)]
        if exact:
            return exact[0]
        larger = [t for t in targets if all(a >= b for a, b in zip(t.shape[2:], size))]
        return min(larger, key=lambda t: t[0, 0].numel()) if larger else targets[0]

    def forward(self, student: DMAFFeatures, teacher: TeacherFeatures,
                target: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor]:
        n = len(student.fused_features)
        cov_stage = self._stage(self.settings.covariance_stage, n)
        graph_stage = self._stage(self.settings.graph_stage, n)
        proto_stage = self._stage(self.settings.prototype_stage, n)
        losses = {"relation_covariance": self.covariance(student.fused_features[cov_stage], teacher.fused[cov_stage]),
                  "relation_graph": self.graph(modality_nodes(student.modality_features[graph_stage]),
                                               modality_nodes(teacher.modality_features[graph_stage]),
                                               student.modality_mask, teacher.modality_mask)}
        features = student.fused_features[proto_stage]
        size = tuple(features.shape[2:])
        masks = region_masks(self._target_for(target, size), size, self.num_classes, self.has_regions,
                             self.has_ignore_channel)
        losses["prototype"] = self.prototype(features, teacher.fused[proto_stage], masks)
        return losses

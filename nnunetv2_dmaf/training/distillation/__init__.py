"""Relation (CCA, MAA) and prototype distillation from the fused feature f_L to each present
modality's feature e^m_L, in the same forward pass."""
from nnunetv2_dmaf.training.distillation.objective import (LOSS_NAMES, CrossModalDistillation,  # noqa: F401
                                                           DistillationSettings, per_modality_mean, target_at)
from nnunetv2_dmaf.training.distillation.prototype import (masked_average_prototypes,  # noqa: F401
                                                           prototype_alignment, region_masks)
from nnunetv2_dmaf.training.distillation.relation import (attention_alignment, covariance_consistency,  # noqa: F401
                                                          normalized_covariance)

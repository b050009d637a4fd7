"""Relation and prototype distillation between the full-modality (teacher) and the incomplete
(student) pass of DMAF-Net."""
from nnunetv2_dmaf.training.distillation.objective import (LOSS_NAMES, DistillationObjective,  # noqa: F401
                                                           DistillationSettings, TeacherFeatures)
from nnunetv2_dmaf.training.distillation.prototype import (PrototypeDistillationLoss,  # noqa: F401
                                                           masked_average_prototypes, region_masks)
from nnunetv2_dmaf.training.distillation.relation import (CovarianceConsistencyLoss, GraphRelationLoss,  # noqa: F401
                                                          graph_relation, normalized_covariance,
                                                          modality_nodes)

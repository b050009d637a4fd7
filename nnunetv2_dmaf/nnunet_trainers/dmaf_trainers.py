"""Trainer names nnU-Net can find with ``-tr``; the classes live in nnunetv2_dmaf.training."""
from nnunetv2_dmaf.training.baselines import nnUNetTrainerChannelDropout  # noqa: F401
from nnunetv2_dmaf.training.nnUNetTrainerDMAF import (nnUNetTrainerDMAF, nnUNetTrainerDMAF_meanFusion,  # noqa: F401
                                                      nnUNetTrainerDMAF_noDistill, nnUNetTrainerDMAF_noDTM,
                                                      nnUNetTrainerDMAF_noCheckpointing, nnUNetTrainerDMAF_noGapShrinkage,
                                                      nnUNetTrainerDMAF_noUniDecoder,
                                                      nnUNetTrainerDMAF_rebalanced, nnUNetTrainerDMAF_sharedEncoder,
                                                      nnUNetTrainerDMAF_sharedEncoderModalityNorms,
                                                      nnUNetTrainerDMAF_singleModalityFusion,
                                                      nnUNetTrainerDMAF_singleModalityFusion_025,
                                                      nnUNetTrainerDMAF_singleModalityFusion_025_noDTM,
                                                      nnUNetTrainerDMAF_subsetSampling,
                                                      nnUNetTrainerDMAF_tiny)
from nnunetv2_dmaf.training.nnUNetTrainerZeroFilled import (nnUNetTrainerZeroFilled,  # noqa: F401
                                                            nnUNetTrainerZeroFilled_tiny)

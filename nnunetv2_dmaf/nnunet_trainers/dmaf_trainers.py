"""Trainer names nnU-Net can find with ``-tr``; the classes live in nnunetv2_dmaf.training."""
from nnunetv2_dmaf.training.baselines import nnUNetTrainerChannelDropout  # noqa: F401
from nnunetv2_dmaf.training.nnUNetTrainerDMAF import nnUNetTrainerDMAF, nnUNetTrainerDMAF_tiny  # noqa: F401

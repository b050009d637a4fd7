"""Training: nnUNetTrainerDMAF and its parts."""

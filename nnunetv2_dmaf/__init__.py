"""nnunetv2_dmaf: DMAF-Net for incomplete multi-modal segmentation as an nnU-Net v2 plugin."""
__version__ = "0.1.0"

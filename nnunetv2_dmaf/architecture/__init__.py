"""DMAF-Net architecture: per-modality encoders, DMAF fusion, shared nnU-Net decoder."""
from nnunetv2_dmaf.architecture.dmaf_net import DMAFFeatures, DMAFNet, build_dmaf_net_from_plans, infer_modality_mask
from nnunetv2_dmaf.architecture.fusion import DMAFFusion

__all__ = ["DMAFNet", "DMAFFusion", "DMAFFeatures", "build_dmaf_net_from_plans", "infer_modality_mask"]

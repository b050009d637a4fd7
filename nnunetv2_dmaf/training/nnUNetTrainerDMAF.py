"""nnUNetTrainerDMAF: nnU-Net's trainer with the DMAF-Net architecture.

Everything except the network (loss, optimizer, schedule, data loading and augmentation,
checkpointing, validation, progress plot) is nnU-Net's own.
"""
from __future__ import annotations

import torch
from torch import nn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_dmaf.architecture.dmaf_net import build_dmaf_net_from_plans


class nnUNetTrainerDMAF(nnUNetTrainer):
    """Trains DMAF-Net (per-modality encoders + DMAF fusion + shared decoder) from nnU-Net plans."""

    #: DMAFNet options beyond the plans (see DMAFNet); class-level so that inference, which builds
    #: the network from the trainer class alone, rebuilds exactly the trained architecture.
    dmaf_network_kwargs: dict = {}

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_dmaf_net_from_plans(configuration_manager.network_arch_class_name,
                                         configuration_manager.network_arch_init_kwargs,
                                         configuration_manager.network_arch_init_kwargs_req_import,
                                         num_input_channels, num_output_channels, enable_deep_supervision,
                                         **cls.dmaf_network_kwargs)


class nnUNetTrainerDMAF_tiny(nnUNetTrainerDMAF):
    """A few iterations only: for smoke tests and CPU demos, not for real training."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2

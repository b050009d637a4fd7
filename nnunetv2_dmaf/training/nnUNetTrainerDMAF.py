"""nnUNetTrainerDMAF: nnU-Net's trainer with the DMAF-Net architecture and training method.

On top of nnU-Net (loss, optimizer, schedule, augmentation, checkpointing, validation are nnU-Net's):

* imbalanced modality dropout (:mod:`nnunetv2_dmaf.training.modality_dropout`), configured with
  ``nnUNet_dmaf_missing_rates`` and/or a ``modality_availability.csv`` table;
* self-distillation from a full-modality teacher pass (no grad) into the incomplete student pass:
  relation (covariance + masked graph attention) and prototype losses
  (:mod:`nnunetv2_dmaf.training.distillation`);
* DTM (:mod:`nnunetv2_dmaf.training.dtm`): loss reweighting from the distillation gaps and
  OGM-GE-style scaling of each modality encoder's gradients; state in checkpoints, values logged.

Every hyperparameter, its default and its origin: docs/training_method.md.
"""
from __future__ import annotations

import os
from unittest import mock

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnunetv2_dmaf.architecture.dmaf_net import DMAFNet, build_dmaf_net_from_plans, infer_modality_mask
from nnunetv2_dmaf.training.data_loader import DMAFDataLoader
from nnunetv2_dmaf.training.distillation import LOSS_NAMES, DistillationObjective, DistillationSettings
from nnunetv2_dmaf.training.dtm import DynamicTrainingMonitor, per_sample_soft_dice_loss
from nnunetv2_dmaf.training.modality_dropout import ModalityDropoutConfig, load_dropout_config


class nnUNetTrainerDMAF(nnUNetTrainer):
    """Trains DMAF-Net (per-modality encoders + DMAF fusion + shared decoder) from nnU-Net plans."""

    #: DMAFNet options beyond the plans (see DMAFNet); class-level so that inference, which builds
    #: the network from the trainer class alone, rebuilds exactly the trained architecture.
    dmaf_network_kwargs: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        ### DMAF-Net training method (docs/training_method.md); change in a subclass' __init__
        self.distillation_weights = {"relation_covariance": 0.1, "relation_graph": 0.1, "prototype": 0.1}
        self.distillation_settings = DistillationSettings()
        self.dtm_kwargs = dict(gap_momentum=0.9, weight_temperature=1.0, weight_bounds=(0.5, 2.0),
                               gap_floor=1e-4, speed_momentum=0.9, grad_alpha=0.5, min_grad_scale=0.1,
                               reweight_losses=True, modulate_gradients=True)
        #: user configuration (environment / availability table); raises early on bad input
        self.dmaf_dropout_config: ModalityDropoutConfig = load_dropout_config(dataset_json,
                                                                              self.plans_manager.dataset_name)
        self.distillation: DistillationObjective | None = None  # -> initialize
        self.dtm: DynamicTrainingMonitor | None = None  # -> initialize

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

    # ------------------------------------------------------------------ setup
    @property
    def distillation_enabled(self) -> bool:
        return any(w > 0 for w in self.distillation_weights.values())

    @property
    def dmaf_network(self) -> DMAFNet:
        """The DMAFNet inside DDP / torch.compile wrappers."""
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def initialize(self):
        super().initialize()
        lm = self.label_manager
        self.distillation = DistillationObjective(self.distillation_settings, lm.num_segmentation_heads,
                                                  lm.has_regions, lm.has_regions and lm.ignore_label is not None)
        self.dtm = DynamicTrainingMonitor(LOSS_NAMES, self.dmaf_dropout_config.channel_names, device=self.device,
                                          **self.dtm_kwargs)
        self._ensure_dmaf_log_keys()

    def get_training_transforms(self, *args, **kwargs) -> BasicTransform:
        """nnU-Net's training pipeline followed by the modality dropout (it only touches the image).
        Dropped channels stay in the image when the distillation teacher needs them (the student's
        DMAFNet never reads a channel its mask marks missing)."""
        transforms = super().get_training_transforms(*args, **kwargs)
        dropout = self.dmaf_dropout_config.training_transform(zero_dropped=not self.distillation_enabled)
        return transforms if dropout is None else ComposeTransforms([transforms, dropout])

    def get_validation_transforms(self, *args, **kwargs) -> BasicTransform:
        """Validation iterations see all modalities a case has (table mode: the table's set)."""
        transforms = super().get_validation_transforms(*args, **kwargs)
        availability = self.dmaf_dropout_config.validation_transform()
        return transforms if availability is None else ComposeTransforms([transforms, availability])

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        self.dmaf_dropout_config.check_cases(list(dataset_tr.identifiers) + list(dataset_val.identifiers))
        return dataset_tr, dataset_val

    def get_dataloaders(self):
        """nnU-Net's loaders, built with DMAFDataLoader: a drop-in nnUNetDataLoader that passes each
        sample's case id to the transforms and collates the per-sample modality masks."""
        with mock.patch.object(nnunet_trainer_module, "nnUNetDataLoader", DMAFDataLoader):
            return super().get_dataloaders()

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"DMAF {self.dmaf_dropout_config.describe()}")
        self.print_to_log_file(f"DMAF distillation weights {self.distillation_weights} "
                               f"(active: {self.distillation_enabled}), {self.distillation_settings}, "
                               f"DTM {self.dtm_kwargs}")

    # ------------------------------------------------------------------ training step
    def _batch_masks(self, batch: dict, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) bool [B, M] on CPU; without masks in the batch both are inferred from
        all-zero channels, as DMAFNet does."""
        student = batch.get("modality_mask")
        if student is None:
            student = infer_modality_mask(data).cpu()
        teacher = batch.get("available_mask")
        return student.bool(), (student if teacher is None else teacher).bool() | student.bool()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"]
        target = batch["target"]
        student_mask, teacher_mask = self._batch_masks(batch, data)
        distill = self.distillation_enabled and bool((student_mask != teacher_mask).any())

        data = data.to(self.device, non_blocking=True)
        if isinstance(target, list):
            target = [i.to(self.device, non_blocking=True) for i in target]
        else:
            target = target.to(self.device, non_blocking=True)
        student_dev = student_mask.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            teacher = self.distillation.teacher(self.dmaf_network, data, teacher_mask.to(self.device)) \
                if distill else None
            output, features = self.network(data, modality_mask=student_dev, return_features=True)
            seg_loss = self.loss(output, target)
            gaps = self.distillation(features, teacher, target) if distill else {}
            weights = self.dtm.weights()
            loss = seg_loss + sum(self.distillation_weights[k] * weights[k] * v for k, v in gaps.items())
            if self.is_ddp:
                loss = loss + self._unused_encoder_anchor(student_mask)

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self.dtm.scale_encoder_gradients(self.dmaf_network.encoders)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.dtm.scale_encoder_gradients(self.dmaf_network.encoders)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

        self.dtm.record_gaps(gaps)
        low_res = -2 if isinstance(output, (list, tuple)) and len(output) > 1 else 0  # coarsest weighted DS output
        out = output[low_res] if isinstance(output, (list, tuple)) else output
        tgt = target[low_res] if isinstance(target, list) else target
        self.dtm.record_segmentation(per_sample_soft_dice_loss(out, tgt, self.label_manager.has_regions,
                                                               self.label_manager.ignore_label), student_dev)
        return {"loss": seg_loss.detach().cpu().numpy()}

    def _unused_encoder_anchor(self, student_mask: torch.Tensor) -> torch.Tensor | float:
        """DDP (without find_unused_parameters) needs a gradient for every parameter: encoders of
        modalities missing in the whole local batch get an exact zero one."""
        missing = torch.nonzero(~student_mask.any(0)).flatten().tolist()
        return sum((p.sum() * 0.0 for m in missing for p in self.dmaf_network.encoders[m].parameters()), 0.0)

    # ------------------------------------------------------------------ logging
    def _dmaf_log_keys(self) -> list[str]:
        return ([f"dmaf_weight_{n}" for n in LOSS_NAMES] + [f"dmaf_gap_{n}" for n in LOSS_NAMES]
                + [f"dmaf_grad_scale_{m}" for m in self.dmaf_dropout_config.channel_names])

    def _ensure_dmaf_log_keys(self) -> None:
        """Registers the DTM keys in nnU-Net's local logger (one value per epoch, like its own keys;
        NaN-padded for epochs logged before they existed, so progress.png keeps working)."""
        logged = self.logger.local_logger.my_fantastic_logging
        epochs = len(logged.get("train_losses", []))
        for key in self._dmaf_log_keys():
            logged.setdefault(key, [float("nan")] * epochs)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        used_weights, used_scales = self.dtm.weights(), self.dtm.scales()
        summary = self.dtm.end_epoch()
        for name in LOSS_NAMES:
            self.logger.log(f"dmaf_weight_{name}", used_weights[name], self.current_epoch)
            self.logger.log(f"dmaf_gap_{name}", summary["gaps"][name], self.current_epoch)
        for name, scale in used_scales.items():
            self.logger.log(f"dmaf_grad_scale_{name}", scale, self.current_epoch)
        self._dtm_epoch_report = (used_weights, used_scales, summary)

    def on_epoch_end(self):
        report = getattr(self, "_dtm_epoch_report", None)
        if report is None:
            return super().on_epoch_end()
        used_weights, used_scales, summary = report
        self._dtm_epoch_report = None
        fmt = lambda d: {k: round(float(v), 4) for k, v in d.items()}  # noqa: E731
        self.print_to_log_file(f"DMAF DTM: distillation gaps {fmt(summary['gaps'])}; loss weights "
                               f"{fmt(used_weights)} -> {fmt(summary['weights'])}; encoder gradient scales "
                               f"{fmt(used_scales)} -> {fmt(summary['scales'])}")
        super().on_epoch_end()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus 'dmaf_dtm_state' and 'dmaf_training_config' (re-saved atomically)."""
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing or not os.path.isfile(filename):
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False, mmap=True)
        checkpoint["dmaf_dtm_state"] = None if self.dtm is None else self.dtm.state_dict()
        checkpoint["dmaf_training_config"] = self.dmaf_dropout_config.to_dict()
        tmp = f"{filename}.dmaf_tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
        self._restore_dropout_config(checkpoint.get("dmaf_training_config"))
        if checkpoint.get("dmaf_dtm_state") is not None:
            self.dtm.load_state_dict(checkpoint["dmaf_dtm_state"])
        else:
            self.print_to_log_file("WARNING: checkpoint has no DTM state; DTM starts from scratch")
        self._ensure_dmaf_log_keys()

    def _restore_dropout_config(self, record: dict | None) -> None:
        """Resume consistency: without any configuration in the environment the checkpoint's is used;
        a different one is an error."""
        if record is None:
            return
        saved = ModalityDropoutConfig.from_dict(record)
        if self.dmaf_dropout_config.same_setup(saved):
            return
        if self.dmaf_dropout_config.mode == "complete":
            self.print_to_log_file(f"DMAF: using the modality dropout setup stored in the checkpoint: "
                                   f"{saved.describe()}")
            self.dmaf_dropout_config = saved
            return
        raise RuntimeError(f"The checkpoint was trained with {saved.describe()}, but the current environment gives "
                           f"{self.dmaf_dropout_config.describe()}. Set the same nnUNet_dmaf_missing_rates / "
                           f"availability table to continue, or unset both to reuse the checkpoint's setup.")


class nnUNetTrainerDMAF_tiny(nnUNetTrainerDMAF):
    """A few iterations only: for smoke tests and CPU demos, not for real training."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2


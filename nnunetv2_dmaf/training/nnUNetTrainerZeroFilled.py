"""nnUNetTrainerZeroFilled: nnU-Net's U-Net trained on incomplete data as a plain nnU-Net user would.

nnU-Net's default trainer (network, loss, optimizer, schedule, augmentation are nnU-Net's) plus the
plugin's handling of missing modalities, which every trainer of the plugin shares so that baselines
and DMAF-Net see exactly the same data:

* the missing-modality configuration (``nnUNet_dmaf_missing_rates``, ``modality_availability.csv``;
  :mod:`nnunetv2_dmaf.training.modality_dropout`); a bad value stops the trainer with ONE line
  naming it (exit status 2);
* the data pipeline: :class:`ChannelPresenceTransform` first (which channels hold data before
  augmentation), nnU-Net's transforms, :class:`ModalityDropoutTransform` last (every channel a case
  lacks or that is dropped is exactly zero; ``modality_mask`` [B, M] in every batch);
* validation under the configured missingness (table: each case's set; rates: a fixed seeded subset
  per case), so the pseudo-Dice and checkpoint_best reflect it;
* the setup stored in every checkpoint and checked on ``--c``;
* optional schedule / seed overrides from the environment (same for every trainer, for benchmarks):
  ``nnUNet_dmaf_num_epochs``, ``nnUNet_dmaf_iterations_per_epoch``,
  ``nnUNet_dmaf_val_iterations_per_epoch``, ``nnUNet_dmaf_seed``.

The network here is nnU-Net's own: a missing channel reaches it as zeros (baseline (a) of the quality
benchmark).
"""
from __future__ import annotations

import os
import random
import sys
from typing import Any, Mapping, NoReturn

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch._dynamo import OptimizedModule

from nnunetv2_dmaf.availability import AvailabilityTableError, unknown_case_rows
from nnunetv2_dmaf.training.case_rebalancing import rebalanced_case_probabilities
from nnunetv2_dmaf.training.channel_presence import ChannelPresenceTransform
from nnunetv2_dmaf.training.data_loader import DMAFDataLoader
from nnunetv2_dmaf.training.fusion_rebalancing import presence_frequencies
from nnunetv2_dmaf.training.modality_dropout import ModalityDropoutConfig, load_dropout_config
from nnunetv2_dmaf.user_errors import EXIT_USAGE_ERROR, UserError

ENV_NUM_EPOCHS = "nnUNet_dmaf_num_epochs"
ENV_ITERATIONS = "nnUNet_dmaf_iterations_per_epoch"
ENV_VAL_ITERATIONS = "nnUNet_dmaf_val_iterations_per_epoch"
ENV_SEED = "nnUNet_dmaf_seed"


class TrainerConfigurationError(ValueError):
    """A bad user setting for the trainer (environment variable, table); the message names it."""


def configuration_error_exit(error: BaseException) -> NoReturn:
    """Ends the training command with one line (no traceback): exit status 1 for a bad data file (a
    :class:`~nnunetv2_dmaf.user_errors.DataError`, e.g. a malformed or incomplete availability table),
    2 for a bad setting."""
    print(f"nnUNetv2_train: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(error.exit_code if isinstance(error, UserError) else EXIT_USAGE_ERROR)


def read_schedule_overrides(environ: Mapping[str, str]) -> dict[str, int]:
    """{'num_epochs' | 'num_iterations_per_epoch' | 'num_val_iterations_per_epoch' | 'seed': int} from
    the environment (only the variables that are set)."""
    out = {}
    for var, key, minimum in ((ENV_NUM_EPOCHS, "num_epochs", 1), (ENV_ITERATIONS, "num_iterations_per_epoch", 1),
                              (ENV_VAL_ITERATIONS, "num_val_iterations_per_epoch", 1), (ENV_SEED, "seed", 0)):
        value = environ.get(var, "").strip()
        if not value:
            continue
        try:
            number = int(value)
        except ValueError:
            raise TrainerConfigurationError(f"{var}={value!r} is not an integer") from None
        if number < minimum:
            raise TrainerConfigurationError(f"{var}={number} must be >= {minimum}")
        out[key] = number
    return out


class nnUNetTrainerZeroFilled(nnUNetTrainer):
    """nnU-Net's U-Net; channels a training case lacks (table) or drops (rates) are zero."""

    #: extra uniform per-modality drop probability on top of the configured rates (subclasses)
    extra_channel_drop_probability: float = 0.0
    #: > 0: training cases are drawn by the rarity of their modalities (case_rebalancing); 0: uniformly
    case_rebalancing_exponent: float = 0.0
    #: schedule attributes a subclass fixes (e.g. the _tiny smoke-test variants); they win over the environment
    fixed_schedule: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        try:
            self.dmaf_dropout_config: ModalityDropoutConfig = load_dropout_config(
                dataset_json, self.plans_manager.dataset_name)
            schedule = read_schedule_overrides(os.environ)
        except (ValueError, FileNotFoundError, AvailabilityTableError) as e:
            configuration_error_exit(e)
        self.dmaf_seed = schedule.pop("seed", None)
        for key, value in {**schedule, **self.fixed_schedule}.items():
            setattr(self, key, value)
        if self.dmaf_seed is not None:  # before initialize() builds the network
            random.seed(self.dmaf_seed)
            np.random.seed(self.dmaf_seed)
            torch.manual_seed(self.dmaf_seed)

    # ------------------------------------------------------------------ data pipeline
    def _extra_rates(self) -> np.ndarray | None:
        p = self.extra_channel_drop_probability
        return None if p <= 0 else np.full(len(self.dmaf_dropout_config.channel_names), p)

    def get_training_transforms(self, *args, **kwargs) -> BasicTransform:
        """ChannelPresenceTransform, nnU-Net's training transforms, ModalityDropoutTransform."""
        transforms = super().get_training_transforms(*args, **kwargs)
        return ComposeTransforms([ChannelPresenceTransform(), transforms,
                                  self.dmaf_dropout_config.training_transform(self._extra_rates())])

    def get_validation_transforms(self, *args, **kwargs) -> BasicTransform:
        """Validation sees the configured missingness, fixed per case."""
        transforms = super().get_validation_transforms(*args, **kwargs)
        return ComposeTransforms([ChannelPresenceTransform(), transforms,
                                  self.dmaf_dropout_config.validation_transform()])

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        config = self.dmaf_dropout_config
        try:
            config.check_cases(list(dataset_tr.identifiers) + list(dataset_val.identifiers))
        except ValueError as e:
            configuration_error_exit(e)
        if config.availability is not None:
            all_cases = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
            unknown = unknown_case_rows(config.table_path, config.availability, all_cases)
            if unknown:
                self.print_to_log_file(f"DMAF WARNING: {unknown} (ignored)")
        return dataset_tr, dataset_val

    def training_case_probabilities(self, case_ids: list[str]) -> np.ndarray | None:
        """Probability of drawing each training case (order of ``case_ids``), or None for nnU-Net's
        uniform draw: rebalanced by the rarest available modality when ``case_rebalancing_exponent``
        > 0 (:mod:`nnunetv2_dmaf.training.case_rebalancing`)."""
        config = self.dmaf_dropout_config
        try:
            probabilities = rebalanced_case_probabilities(config, case_ids, self.case_rebalancing_exponent)
        except ValueError as e:
            configuration_error_exit(e)
        if self.case_rebalancing_exponent > 0:
            before = presence_frequencies(config, case_ids)
            after = presence_frequencies(config, case_ids, probabilities)
            fmt = lambda v: {n: round(float(x), 3) for n, x in zip(config.channel_names, v)}  # noqa: E731
            self.print_to_log_file(f"DMAF training cases drawn by modality rarity (exponent "
                                   f"{self.case_rebalancing_exponent}): presence per draw {fmt(before)} -> {fmt(after)}")
        return probabilities

    def get_dataloaders(self):
        """nnU-Net's get_dataloaders (2.8) with DMAFDataLoader, which hands each sample's case id to the
        transforms and collates the modality masks."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        deep_supervision_scales = self._get_deep_supervision_scales()
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        regions = lm.foreground_regions if lm.has_regions else None
        tr_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=lm.foreground_labels, regions=regions, ignore_label=lm.ignore_label)
        val_transforms = self.get_validation_transforms(
            deep_supervision_scales, is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels,
            regions=regions, ignore_label=lm.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        common = dict(oversample_foreground_percent=self.oversample_foreground_percent, pad_sides=None,
                      probabilistic_oversampling=self.probabilistic_oversampling)
        dl_tr = DMAFDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size, lm,
                               transforms=tr_transforms,
                               sampling_probabilities=self.training_case_probabilities(list(dataset_tr.identifiers)),
                               **common)
        dl_val = DMAFDataLoader(dataset_val, self.batch_size, patch_size, patch_size, lm,
                                transforms=val_transforms, sampling_probabilities=None, **common)
        allowed_num_processes = get_allowed_n_proc_DA()
        if allowed_num_processes == 0:
            mt_gen_train, mt_gen_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin = self.device.type == "cuda"
            mt_gen_train = NonDetMultiThreadedAugmenter(dl_tr, None, allowed_num_processes,
                                                        max(6, allowed_num_processes // 2), None, pin, 0.002)
            mt_gen_val = NonDetMultiThreadedAugmenter(dl_val, None, max(1, allowed_num_processes // 2),
                                                      max(3, allowed_num_processes // 4), None, pin, 0.002)
        _ = next(mt_gen_train)
        _ = next(mt_gen_val)
        return mt_gen_train, mt_gen_val

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"DMAF {self.dmaf_dropout_config.describe()}")
        self.print_to_log_file(f"DMAF {self.dmaf_dropout_config.describe_validation()}")
        if self.extra_channel_drop_probability > 0:
            self.print_to_log_file(f"DMAF uniform channel dropout p={self.extra_channel_drop_probability} on top")
        if self.dmaf_seed is not None:
            self.print_to_log_file(f"DMAF seed {self.dmaf_seed} (${ENV_SEED})")

    # ------------------------------------------------------------------ checkpoints
    def extra_checkpoint_entries(self) -> dict[str, Any]:
        """Keys added to nnU-Net's checkpoint (subclasses extend)."""
        return {"dmaf_training_config": self.dmaf_dropout_config.to_dict()}

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net 2.8's save_checkpoint body plus :meth:`extra_checkpoint_entries` (one write)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        checkpoint = {
            "network_weights": mod.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            **self.extra_checkpoint_entries(),
        }
        torch.save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
        self.restore_extra_checkpoint_entries(checkpoint)

    def restore_extra_checkpoint_entries(self, checkpoint: Mapping[str, Any]) -> None:
        record = checkpoint.get("dmaf_training_config")
        if record is not None:
            self._restore_dropout_config(record)

    def _restore_dropout_config(self, record: Mapping[str, Any]) -> None:
        """Resume consistency: without any configuration in the environment the checkpoint's is used;
        a different one ends the command with one line naming what changed."""
        saved = ModalityDropoutConfig.from_dict(record)
        current = self.dmaf_dropout_config
        if current.same_setup(saved):
            return
        if current.mode == "complete":
            self.print_to_log_file(f"DMAF: using the modality setup stored in the checkpoint: {saved.describe()}")
            self.dmaf_dropout_config = saved
            return
        what = []
        if current.channel_names != saved.channel_names or not np.allclose(current.missing_rates, saved.missing_rates):
            what.append(f"missing rates {saved.rates_by_name()} in the checkpoint, {current.rates_by_name()} now")
        changed = current.changed_cases(saved)
        if (current.availability is None) != (saved.availability is None):
            what.append("an availability table " + ("was" if saved.availability is not None else "was not")
                        + " used by the checkpoint")
        elif changed:
            what.append(f"the availability table differs for {len(changed)} case(s): {', '.join(changed[:5])}"
                        + (" ..." if len(changed) > 5 else ""))
        configuration_error_exit(TrainerConfigurationError(
            "cannot continue: " + "; ".join(what) + ". Use the checkpoint's nnUNet_dmaf_missing_rates / availability "
            "table, or unset both to reuse the checkpoint's setup"))


#: the _tiny variants' schedule: 2 epochs of 4 iterations (smoke tests and CPU demos only)
TINY_SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 2}


class nnUNetTrainerZeroFilled_tiny(nnUNetTrainerZeroFilled):
    """A few iterations only: for smoke tests and CPU demos."""

    fixed_schedule = TINY_SCHEDULE

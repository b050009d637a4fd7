"""nnUNetTrainerDMAF: DMAF-Net as published (Lan et al. 2025) in nnU-Net's trainer.

On top of :class:`nnUNetTrainerZeroFilled` (the shared missing-modality configuration, data pipeline,
validation under missingness, checkpoint record), all from ONE forward pass per iteration:

* the network: :class:`DMAFNet` (per-modality encoders, shared uni-modal decoder, DMAF fusion, fusion
  decoder, distillation heads);
* the loss: nnU-Net's segmentation loss on the fused output, plus for every modality m present in
  the batch, weighted by DTM's ``w_m`` and averaged over those modalities,
  ``unimodal_weight * L_seg(z^m) + sum_k distillation_weights[k] * L^m_k`` with the CCA, MAA and
  prototype terms (:mod:`nnunetv2_dmaf.training.distillation`);
* DTM (:mod:`nnunetv2_dmaf.training.dtm`): per-modality loss weights from the distillation gaps and
  per-modality encoder gradient scales from the convergence speeds; state in checkpoints, values logged;
* optionally (``single_modality_fusion_probability`` > 0), rebalanced single-modality fusion
  (:mod:`nnunetv2_dmaf.training.fusion_rebalancing`): some samples are fused from one rare modality
  only, so that the fusion decoder learns to decode it alone.

Every hyperparameter, its default and its origin: docs/training_method.md. Ablation variants at the
end of this module switch single components off.
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnunetv2_dmaf.architecture.dmaf_net import DMAFFeatures, DMAFNet, build_dmaf_net_from_plans
from nnunetv2_dmaf.training.distillation import (LOSS_NAMES, CrossModalDistillation, DistillationSettings,
                                                 per_modality_mean)
from nnunetv2_dmaf.training.dtm import DynamicTrainingMonitor, per_sample_soft_dice_loss
from nnunetv2_dmaf.training.fusion_rebalancing import SingleModalityFusionSampler, presence_frequencies
from nnunetv2_dmaf.training.nnUNetTrainerZeroFilled import TINY_SCHEDULE, nnUNetTrainerZeroFilled


class MissingModalityMaskError(RuntimeError):
    """A training batch without ``modality_mask``: the data pipeline is not the plugin's."""


class nnUNetTrainerDMAF(nnUNetTrainerZeroFilled):
    """Trains DMAF-Net from nnU-Net plans with uni-modal, distillation and DTM losses."""

    #: DMAFNet options beyond the plans (see DMAFNet); class-level so that inference, which builds
    #: the network from the trainer class alone, rebuilds exactly the trained architecture.
    dmaf_network_kwargs: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        ### DMAF-Net method (docs/training_method.md); change in a subclass' __init__
        self.unimodal_weight = 1.0
        self.distillation_weights = {"relation_covariance": 0.1, "relation_attention": 0.1, "prototype": 0.1}
        self.distillation_settings = DistillationSettings()
        self.dtm_kwargs = dict(gap_momentum=0.8, shrinkage=50.0, weight_exponent=1.0, weight_bounds=(0.5, 2.0),
                               speed_momentum=0.8, significance=2.0, grad_alpha=1.0, min_grad_scale=0.5,
                               speed_floor=0.01, reweight_losses=True, modulate_gradients=True)
        self.single_modality_fusion_probability = 0.0
        self.distillation: CrossModalDistillation | None = None  # -> initialize
        self.dtm: DynamicTrainingMonitor | None = None  # -> initialize
        self.fusion_sampler: SingleModalityFusionSampler | None = None  # -> initialize

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
        self.distillation = CrossModalDistillation(self.distillation_settings, lm.num_segmentation_heads,
                                                   lm.has_regions, lm.has_regions and lm.ignore_label is not None)
        self.dtm = DynamicTrainingMonitor(self.dmaf_dropout_config.channel_names, device=self.device,
                                          **self.dtm_kwargs)
        self._build_fusion_sampler()
        if self.distillation_enabled and self.dmaf_network.cca_projection is None:
            raise ValueError(f"{type(self).__name__}: distillation weights {self.distillation_weights} need the "
                             f"network's distillation heads (dmaf_network_kwargs distillation_heads=False)")
        if self.dtm.modulate_gradients and self.dmaf_network.shared_encoder:
            raise ValueError(f"{type(self).__name__}: DTM's per-modality gradient scaling needs one encoder per "
                             f"modality (dmaf_network_kwargs shared_encoder=True; set dtm_kwargs "
                             f"modulate_gradients=False)")
        self._ensure_dmaf_log_keys()

    def _build_fusion_sampler(self) -> None:
        """The single-modality fusion draws modalities by inverse presence frequency of the modality
        setup in use: built in ``initialize`` and again when a checkpoint's setup replaces it."""
        self.fusion_sampler = SingleModalityFusionSampler(presence_frequencies(self.dmaf_dropout_config),
                                                          self.single_modality_fusion_probability)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"DMAF uni-modal weight {self.unimodal_weight} (decoder: "
                               f"{self.dmaf_network.unimodal_decoder is not None}), distillation weights "
                               f"{self.distillation_weights}, fusion {self.dmaf_network.fusions[0].mode}, "
                               f"DTM {self.dtm_kwargs}")
        if self.single_modality_fusion_probability > 0:
            weights = self.fusion_sampler.choice_weights
            self.print_to_log_file(
                f"DMAF single-modality fusion: p={self.single_modality_fusion_probability}, modality chosen "
                f"with weights {dict(zip(self.dmaf_dropout_config.channel_names, np.round(weights / weights.sum(), 3).tolist()))}")

    # ------------------------------------------------------------------ losses
    def batch_modality_mask(self, batch: dict) -> torch.Tensor:
        """bool [B, M] on the CPU, as the data pipeline produced it."""
        mask = batch.get("modality_mask")
        if mask is None:
            raise MissingModalityMaskError(
                "training batch has no 'modality_mask': nnUNetTrainerDMAF needs its own data pipeline "
                "(ChannelPresenceTransform ... ModalityDropoutTransform with DMAFDataLoader)")
        return mask.bool()

    def compute_losses(self, output, features: DMAFFeatures, target, present_modalities: torch.Tensor,
                       teacher_pairs: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its terms. features: restricted to the present pairs
        (:meth:`DMAFFeatures.present_pairs`); present_modalities: bool [M] (CPU), modalities in the
        batch; teacher_pairs: bool [P] (CPU), the rows of ``features`` whose sample's fused feature is
        a teacher (default: all). The distillation runs on every row, so that its heads take part in
        every step (DDP needs a gradient for every parameter), and averages over the teacher rows.

        Terms: 'segmentation' (fused output, scalar), per modality [M] (0 where absent):
        'unimodal' and each of LOSS_NAMES; for DTM 'pair_signal' [P] and, if there is a teacher row,
        'pair_gap' [P'] with 'pair_gap_modality' [P'] (the teacher rows)."""
        m_count = features.modality_mask.shape[1]
        pair_sample, pair_modality = features.pair_index[:, 0], features.pair_index[:, 1]
        pair_modality_host = features.pair_index_host[:, 1]
        terms: dict[str, torch.Tensor] = {"segmentation": self.loss(output, target)}
        per_modality = torch.zeros(m_count, device=output[0].device if isinstance(output, (list, tuple))
                                   else output.device)
        targets = target if isinstance(target, list) else [target]
        if features.unimodal_logits is not None:
            unimodal = torch.zeros_like(per_modality)
            for m in torch.nonzero(present_modalities).flatten().tolist():
                rows = torch.nonzero(pair_modality_host == m).flatten().to(pair_sample.device, non_blocking=True)
                logits = [u[rows] for u in features.unimodal_logits]
                tgt = [t[pair_sample[rows]] for t in targets]
                unimodal[m] = self.loss(logits if isinstance(output, (list, tuple)) else logits[0],
                                        tgt if isinstance(target, list) else tgt[0])
            terms["unimodal"] = unimodal
            per_modality = per_modality + self.unimodal_weight * unimodal
            low = -2 if len(features.unimodal_logits) > 1 else 0  # as many targets as outputs
            terms["pair_signal"] = per_sample_soft_dice_loss(
                features.unimodal_logits[low], targets[low][pair_sample],
                self.label_manager.has_regions, self.label_manager.ignore_label)
        if self.distillation_enabled:
            pair_terms = self.distillation(features, target)
            teacher_weights = None if teacher_pairs is None else \
                teacher_pairs.to(per_modality.device, non_blocking=True).to(per_modality.dtype)
            if teacher_pairs is None or bool(teacher_pairs.any()):
                gap, modality = sum(pair_terms.values()), pair_modality
                if teacher_pairs is not None:
                    rows = torch.nonzero(teacher_pairs).flatten().to(gap.device, non_blocking=True)
                    gap, modality = gap.index_select(0, rows), modality.index_select(0, rows)
                terms["pair_gap"], terms["pair_gap_modality"] = gap, modality
            for name, values in pair_terms.items():
                mean = per_modality_mean(values, pair_modality, m_count, teacher_weights)
                terms[name] = mean
                per_modality = per_modality + self.distillation_weights[name] * mean
        weights = self.dtm.weight_tensor(per_modality.device, per_modality.dtype)
        present = present_modalities.to(per_modality.device, non_blocking=True).to(per_modality.dtype)
        modality_loss = (weights * present * per_modality).sum() / present.sum().clamp_min(1)
        return terms["segmentation"] + modality_loss, terms

    # ------------------------------------------------------------------ training step
    def train_step(self, batch: dict) -> dict:
        modality_mask = self.batch_modality_mask(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [i.to(self.device, non_blocking=True) for i in target]
        else:
            target = target.to(self.device, non_blocking=True)
        present_modalities = modality_mask.any(0)
        fusion_mask, reduced = self.fusion_sampler(modality_mask)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output, all_pairs = self.network(data, modality_mask=fusion_mask, return_features=True)  # CPU mask
            features = all_pairs.present_pairs(modality_mask)
            # a sample fused from one modality has no teacher: its pairs get weight 0 in the distillation
            teacher_pairs = ~reduced[features.pair_index_host[:, 0]] if bool(reduced.any()) else None
            loss, terms = self.compute_losses(output, features, target, present_modalities, teacher_pairs)

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self.dtm.scale_encoder_gradients(self.dmaf_network.encoder)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.dtm.scale_encoder_gradients(self.dmaf_network.encoder)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

        gap, signal = terms.get("pair_gap"), terms.get("pair_signal")
        if gap is not None:  # without the uni-modal decoder the gap is also the convergence signal
            self.dtm.record(gap, gap if signal is None else None, terms["pair_gap_modality"])
        if signal is not None:
            self.dtm.record(None, signal, features.pair_index[:, 1])
        return {"loss": terms["segmentation"].detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step; the network uses the batch's modality mask (the configured
        missingness, fixed per case) for its mask-less call."""
        mask = batch.get("modality_mask")
        net = self.dmaf_network
        previous = net.inference_modality_mask
        net.inference_modality_mask = None if mask is None else mask.bool()  # CPU: no host-device sync
        try:
            return super().validation_step(batch)
        finally:
            net.inference_modality_mask = previous

    # ------------------------------------------------------------------ logging
    def _dmaf_log_keys(self) -> list[str]:
        names = self.dmaf_dropout_config.channel_names
        return [f"dmaf_weight_{m}" for m in names] + [f"dmaf_gap_{m}" for m in names] + \
            [f"dmaf_grad_scale_{m}" for m in names]

    def _ensure_dmaf_log_keys(self) -> None:
        """Registers the DTM keys in nnU-Net's local logger (NaN-padded for earlier epochs)."""
        logged = self.logger.local_logger.my_fantastic_logging
        epochs = len(logged.get("train_losses", []))
        for key in self._dmaf_log_keys():
            logged.setdefault(key, [float("nan")] * epochs)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        used_weights, used_scales = self.dtm.weights(), self.dtm.scales()
        summary = self.dtm.end_epoch()
        for name in self.dmaf_dropout_config.channel_names:
            self.logger.log(f"dmaf_weight_{name}", used_weights[name], self.current_epoch)
            self.logger.log(f"dmaf_gap_{name}", summary["gaps"][name], self.current_epoch)
            self.logger.log(f"dmaf_grad_scale_{name}", used_scales[name], self.current_epoch)
        self._dtm_epoch_report = (used_weights, used_scales, summary)

    def on_epoch_end(self):
        report = getattr(self, "_dtm_epoch_report", None)
        if report is not None:
            used_weights, used_scales, summary = report
            self._dtm_epoch_report = None
            fmt = lambda d: {k: round(float(v), 4) for k, v in d.items()}  # noqa: E731
            self.print_to_log_file(f"DMAF DTM: distillation gaps {fmt(summary['gaps'])}; loss weights "
                                   f"{fmt(used_weights)} -> {fmt(summary['weights'])}; encoder gradient scales "
                                   f"{fmt(used_scales)} -> {fmt(summary['scales'])}")
        super().on_epoch_end()

    # ------------------------------------------------------------------ checkpoints
    def extra_checkpoint_entries(self) -> dict:
        return {**super().extra_checkpoint_entries(),
                "dmaf_dtm_state": None if self.dtm is None else self.dtm.state_dict()}

    def restore_extra_checkpoint_entries(self, checkpoint) -> None:
        super().restore_extra_checkpoint_entries(checkpoint)  # may adopt the checkpoint's modality setup
        self._build_fusion_sampler()
        state = checkpoint.get("dmaf_dtm_state")
        if state is not None and state.get("version") == 2:
            self.dtm.load_state_dict(state)
        else:
            self.print_to_log_file("WARNING: checkpoint has no (current) DTM state; DTM starts from scratch")
        self._ensure_dmaf_log_keys()


class nnUNetTrainerDMAF_tiny(nnUNetTrainerDMAF):
    """A few iterations only: for smoke tests and CPU demos, not for real training."""

    fixed_schedule = TINY_SCHEDULE


# ---------------------------------------------------------------------- ablations (quality benchmark)
class nnUNetTrainerDMAF_noDistill(nnUNetTrainerDMAF):
    """Ablation: no relation/prototype distillation (DTM then reweights nothing; its gradient scales
    follow the uni-modal losses). The network has no distillation heads."""

    dmaf_network_kwargs = {"distillation_heads": False}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.distillation_weights = {k: 0.0 for k in LOSS_NAMES}


class nnUNetTrainerDMAF_noDTM(nnUNetTrainerDMAF):
    """Ablation: DTM off (loss weights and gradient scales stay 1)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dtm_kwargs = dict(self.dtm_kwargs, reweight_losses=False, modulate_gradients=False)


class nnUNetTrainerDMAF_noGapShrinkage(nnUNetTrainerDMAF):
    """DTM whose loss weights follow each modality's own mean distillation gap (shrinkage kappa = 0;
    only the EMA over epochs and the weight bounds guard against noise). With kappa = 50 a modality
    with n gap pairs per epoch keeps about n / (n + 50) of its lead over the mean: about 9 T2 pairs per
    epoch in the quality benchmark (25 iterations x batch 2) keep 15 %, about 90 at nnU-Net's 250
    iterations keep 64 % (docs/training_method.md section 4)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dtm_kwargs = dict(self.dtm_kwargs, shrinkage=0.0)


class nnUNetTrainerDMAF_noUniDecoder(nnUNetTrainerDMAF):
    """Ablation: no shared uni-modal decoder (and so no uni-modal losses)."""

    dmaf_network_kwargs = {"unimodal_decoder": False}


class nnUNetTrainerDMAF_meanFusion(nnUNetTrainerDMAF):
    """Ablation: fusion by the plain mean of the present modalities instead of DMAF attention maps."""

    dmaf_network_kwargs = {"fusion_mode": "mean"}


class nnUNetTrainerDMAF_sharedEncoder(nnUNetTrainerDMAF):
    """DMAF-Net with ONE encoder shared by the modalities (each modality still encoded on its own, then
    fused by DMAF): a rare modality's features come from weights that learn from every present channel
    of every case, not only from the cases that have it. DTM keeps its loss reweighting; its
    per-encoder gradient scaling has no encoder of its own to act on and is off
    (docs/training_method.md section 3d)."""

    dmaf_network_kwargs = {"shared_encoder": True}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dtm_kwargs = dict(self.dtm_kwargs, modulate_gradients=False)


class nnUNetTrainerDMAF_sharedEncoderModalityNorms(nnUNetTrainerDMAF_sharedEncoder):
    """The shared encoder with modality-specific normalisation: convolutions shared by the modalities,
    each norm layer's scale and shift per modality, so that the shared weights keep what every case
    teaches while the encoder can still tell T1ce from T1 (docs/training_method.md section 3d)."""

    dmaf_network_kwargs = {**nnUNetTrainerDMAF_sharedEncoder.dmaf_network_kwargs, "modality_norms": True}


class nnUNetTrainerDMAF_subsetSampling(nnUNetTrainerDMAF):
    """DMAF-Net that, like the channel-dropout baseline, also trains on random subsets of each case's
    available modalities: every available channel is dropped with probability 0.5, never all of them
    (the published imbalanced protocols list such within-availability masks per case)."""

    extra_channel_drop_probability = 0.5


class nnUNetTrainerDMAF_singleModalityFusion(nnUNetTrainerDMAF):
    """DMAF-Net whose fusion decoder also learns single rare modalities: half of the samples with >= 2
    present modalities are fused from one of them, chosen inversely to its presence frequency
    (:mod:`nnunetv2_dmaf.training.fusion_rebalancing`)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.single_modality_fusion_probability = 0.5


class nnUNetTrainerDMAF_singleModalityFusion_025(nnUNetTrainerDMAF_singleModalityFusion):
    """Single-modality fusion for a quarter instead of half of the samples with >= 2 present
    modalities: more full-fusion training for the multi-modal subsets, less for the rare one alone."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.single_modality_fusion_probability = 0.25


class nnUNetTrainerDMAF_singleModalityFusion_025_noDTM(nnUNetTrainerDMAF_singleModalityFusion_025,
                                                      nnUNetTrainerDMAF_noDTM):
    """The two changes that each gave the best 400-epoch rows of the quality benchmark, together:
    single-modality fusion for a quarter of the samples with >= 2 present modalities, and DTM off."""


class nnUNetTrainerDMAF_rebalanced(nnUNetTrainerDMAF_singleModalityFusion):
    """Single-modality fusion plus rebalanced case sampling: training cases are drawn in proportion to
    1 / the presence frequency of their rarest modality, so a rare modality's encoder learns from more
    draws (:mod:`nnunetv2_dmaf.training.case_rebalancing`)."""

    case_rebalancing_exponent = 1.0


class nnUNetTrainerDMAF_noCheckpointing(nnUNetTrainerDMAF):
    """DMAF-Net without activation checkpointing: about 15-20 % less compute per training step (CPU,
    BraTS-like plans), about 1.9x nnU-Net's activation memory instead of 1.0x. For a GPU with memory
    to spare; the plans of nnUNetv2_dmaf_plan_experiment assume checkpointing."""

    dmaf_network_kwargs = {"activation_checkpointing": False}

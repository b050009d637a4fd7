"""DMAF-Net (Lan et al. 2025, architecture.png): per-modality encoders, a SHARED uni-modal decoder,
DMAF fusion at every level, a fusion decoder, and the learned heads of the relation distillation.

Built from nnU-Net plans (see :func:`build_dmaf_net_from_plans`). Conventions:

* input ``x``: [B, M, *S] with one channel per modality, in dataset.json channel order;
* ``modality_mask``: bool [B, M], True = present. ``None`` (how nnU-Net's predictor calls the
  network) infers it from ``x``: a channel that is zero everywhere in a sample is missing. A sample
  whose channels are all zero (e.g. a sliding-window patch in the background) counts as complete.
* ``inference_modality_mask`` (bool [M], set with :meth:`DMAFNet.set_inference_modality_mask`, or
  [B, M] for one batch, as the trainer's validation step does) replaces the inference from zeros for
  calls without a mask.
* The M modality encoders are ONE dynamic-network-architectures encoder with modality-grouped
  convolutions (see grouped_conv.py): one kernel per layer for all modalities. Every encoder runs on
  every sample; a missing modality's features are discarded by the fusion (exactly 0 weight, no
  gradient) and by the losses. Nothing in forward depends on the mask's VALUES on the host, so
  forward makes no host-device synchronisation and torch.compile traces one graph for all masks.
  Skipping missing encoders would save little: at width 1/M the M encoders together cost 1/M of the
  FLOPs of nnU-Net's encoder. With ``shared_encoder`` one single-channel encoder (shared weights)
  encodes each modality separately instead (with ``modality_norms``: its norms per modality).
* Training memory: with ``activation_checkpointing`` (default) the full-resolution part of each
  level's fusion (weighted sum of the modality features) + projection and the shared uni-modal
  decoder are recomputed in backward instead of storing their activations (the attention maps'
  transformer works on at most token_grid^dims tokens per modality: its activations are kept).
* Output: as nnU-Net's U-Nets, the FUSION decoder's logits [B, K, *S], or a list of them (full
  resolution first) with deep supervision. ``return_features=True`` (training) also runs the shared
  uni-modal decoder on every (sample, modality) pair and the distillation heads, and returns a
  :class:`DMAFFeatures` (restrict it to the present pairs with :meth:`DMAFFeatures.present_pairs`);
  inference runs the fusion path only.
"""
from __future__ import annotations

import pydoc
from dataclasses import dataclass, field, replace
from typing import Any, Sequence, Type

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.checkpoint import checkpoint

from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU

from nnunetv2_dmaf.architecture.distillation_heads import CovarianceProjection, MaskedAttentionAlignment, level_tokens
from nnunetv2_dmaf.architecture.fusion import DMAFFusion
from nnunetv2_dmaf.architecture.grouped_conv import modality_grouped_conv
from nnunetv2_dmaf.architecture.modality_norm import modality_conditioned_norm
from nnunetv2_dmaf.user_errors import one_line


@dataclass
class DecoderSpec:
    """What dynamic_network_architectures' UNetDecoder reads from an encoder: the fused skips'
    widths and strides. The decoder then has the same widths as nnU-Net's plain U-Net."""
    output_channels: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    conv_op: Type[_ConvNd]
    conv_bias: bool
    norm_op: Type[nn.Module] | None
    norm_op_kwargs: dict | None
    dropout_op: Type[nn.Module] | None
    dropout_op_kwargs: dict | None
    nonlin: Type[nn.Module] | None
    nonlin_kwargs: dict | None


@dataclass
class DMAFFeatures:
    """Intermediate tensors of one training forward pass, for the losses. "Pairs" are (sample,
    modality) pairs: the network returns ALL B*M of them (row b*M + m), :meth:`present_pairs` keeps
    the P present ones.

    modality_features: per level l, e^m_l [B, M, C_l, *S_l] (entries of missing modalities unused).
    fused_features: per level, f_l [B, C_l, *S_l] (the DMAF output before the 1x1 projection).
    attention_maps: per level, Att_map [B, M, 1 (or C_l), *grid_l].
    modality_mask: bool [B, M] on the device. pair_index: long [N, 2] (sample, modality) of the rows,
        on the device; pair_index_host: the same on the CPU.
    unimodal_logits: shared decoder outputs of the pairs, [N, K, *S] per deep-supervision scale
        (full resolution first), or None without the uni-modal decoder.
    distillation_level: index of level L. student_features: e^m_L of the pairs [N, C_L, *S_L];
    teacher_features: f_L of the pairs' samples, detached [N, C_L, *S_L]; student_tokens /
    teacher_tokens: the same pooled to tokens [N, T, C_L];
    cca_projection: Linear_m(e^m_L) [N, C_L, N_L]; maa_output: [N, T, C_L] (both None without
    distillation heads).
    """
    modality_features: list[torch.Tensor] = field(default_factory=list)
    fused_features: list[torch.Tensor] = field(default_factory=list)
    attention_maps: list[torch.Tensor] = field(default_factory=list)
    modality_mask: torch.Tensor | None = None
    pair_index: torch.Tensor | None = None
    unimodal_logits: list[torch.Tensor] | None = None
    distillation_level: int = -1
    student_features: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    student_tokens: torch.Tensor | None = None
    teacher_tokens: torch.Tensor | None = None
    cca_projection: torch.Tensor | None = None
    maa_output: torch.Tensor | None = None
    pair_index_host: torch.Tensor | None = None

    def present_pairs(self, modality_mask_host: torch.Tensor) -> "DMAFFeatures":
        """The same features restricted to the present pairs (rows of ``modality_mask_host``, bool
        [B, M] on the CPU, in row-major order): P rows instead of B*M. The row indices are computed
        on the CPU, so this costs no host-device synchronisation."""
        rows_host = torch.nonzero(modality_mask_host.flatten(), as_tuple=False).flatten()
        device = self.pair_index.device
        rows = rows_host.to(device, non_blocking=True)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, rows)

        return replace(self, pair_index=pick(self.pair_index),
                       unimodal_logits=None if self.unimodal_logits is None else [pick(u) for u in self.unimodal_logits],
                       student_features=pick(self.student_features), teacher_features=pick(self.teacher_features),
                       student_tokens=pick(self.student_tokens), teacher_tokens=pick(self.teacher_tokens),
                       cca_projection=pick(self.cca_projection), maa_output=pick(self.maa_output),
                       pair_index_host=self.pair_index_host.index_select(0, rows_host))


def default_modality_width_factor(num_modalities: int) -> float:
    """1/M: the M encoders together hold about as many activations as one plans-width encoder (and
    1/M of its FLOPs), which leaves room in the training budget for the shared uni-modal decoder that
    runs once per present modality. Per-modality encoders of RFNet/PASSION are similarly narrow."""
    return 1.0 / num_modalities


def infer_modality_mask(x: torch.Tensor) -> torch.Tensor:
    """[B, M, *S] -> bool [B, M]: a channel that is zero everywhere is missing; a sample with every
    channel zero is treated as complete (there is nothing to tell its modalities apart)."""
    present = x.detach().flatten(2).abs().amax(-1) > 0
    all_missing = ~present.any(1, keepdim=True)
    return present | all_missing


class DMAFNet(nn.Module):
    """DMAF-Net for M modalities; arguments follow nnU-Net's PlainConvUNet / ResidualEncoderUNet.

    Args (beyond nnU-Net's):
        modality_width_factor: encoder width of each modality relative to the plans' features_per_stage
            (default 1/M, at least 8 channels; see :func:`default_modality_width_factor`). The
            shared uni-modal decoder and the DMAF fusion work at this width; the fused features are
            projected (1x1 conv, norm, nonlinearity) to the plans' widths for the fusion decoder.
        fusion_mode: "attention" (DMAF) or "mean" (ablation, see :class:`DMAFFusion`).
        fusion_num_layers, fusion_num_heads, fusion_token_grid, fusion_token_dim, fusion_mlp_ratio:
            see :class:`DMAFFusion` (defaults 4 layers, 4 heads, <= 4 cells per axis).
        fusion_per_channel_maps: one attention map per channel instead of one spatial map per modality.
        unimodal_decoder: build the shared uni-modal decoder (False: ablation).
        distillation_level: level L of the relation/prototype distillation (-1: bottleneck).
        distillation_grid: at most this many token cells per axis at level L (MAA / prototypes).
        distillation_heads: build the CCA projection and MAA heads (False: the no-distillation
            ablation, which would leave them without gradient, which DDP rejects).
        encoder_type: "plain" (PlainConvEncoder, n_conv_per_stage) or "residual" (ResidualEncoder,
            n_blocks_per_stage), matching the plans' network class.
        shared_encoder: one single-channel encoder applied to every modality (weights shared, each
            modality still encoded separately; ``[B, M, *S]`` runs as ``[B*M, 1, *S]``) instead of M
            modality-grouped encoders: every encoder weight then learns from every present channel of
            every case (our variant for rare modalities, docs/training_method.md section 3d). Same
            FLOPs and activations, 1/M of the encoder parameters.
        modality_norms: with ``shared_encoder``, every norm layer of the shared encoder has the affine
            parameters of the sample's modality (modality_norm.py): shared convolutions, modality-
            specific normalisation, so the encoder knows which modality it encodes (section 3d).
        activation_checkpointing: in training, recompute each level's fusion (weighted sum; the
            attention maps are kept) + projection and the uni-modal decoder in backward instead of
            storing their activations (the training step then holds about as much activation memory
            as nnU-Net's U-Net; see
            :meth:`compute_conv_feature_map_size`). Results are identical either way.
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int,
                 features_per_stage: int | Sequence[int], conv_op: Type[_ConvNd],
                 kernel_sizes: int | Sequence, strides: int | Sequence,
                 n_conv_per_stage_decoder: int | Sequence[int],
                 n_conv_per_stage: int | Sequence[int] | None = None,
                 n_blocks_per_stage: int | Sequence[int] | None = None,
                 conv_bias: bool = False, norm_op: Type[nn.Module] | None = None,
                 norm_op_kwargs: dict | None = None, dropout_op: Type[nn.Module] | None = None,
                 dropout_op_kwargs: dict | None = None, nonlin: Type[nn.Module] | None = None,
                 nonlin_kwargs: dict | None = None, deep_supervision: bool = False,
                 encoder_type: str = "plain", modality_width_factor: float | None = None,
                 fusion_mode: str = "attention", fusion_num_layers: int = 4, fusion_num_heads: int = 4,
                 fusion_token_grid: int = 4, fusion_token_dim: int | None = None, fusion_mlp_ratio: float = 2.0,
                 fusion_per_channel_maps: bool = False, unimodal_decoder: bool = True,
                 distillation_level: int = -1, distillation_grid: int = 8, distillation_heads: bool = True,
                 shared_encoder: bool = False, modality_norms: bool = False, activation_checkpointing: bool = True,
                 **unused_plans_kwargs: Any):
        super().__init__()
        if input_channels < 1:
            raise ValueError(f"DMAFNet needs at least one input modality, got input_channels={input_channels}")
        if isinstance(features_per_stage, int):
            features_per_stage = [features_per_stage] * n_stages
        if isinstance(kernel_sizes, int):
            kernel_sizes = [kernel_sizes] * n_stages
        if isinstance(strides, int):
            strides = [strides] * n_stages
        if not -n_stages <= distillation_level < n_stages:
            raise ValueError(f"distillation_level {distillation_level} does not exist with {n_stages} stages")
        self.num_modalities = input_channels
        self.num_classes = num_classes
        self.conv_op = conv_op
        self.spatial_dims = 3 if conv_op == nn.Conv3d else 2
        self.distillation_level = distillation_level % n_stages
        self.distillation_grid = distillation_grid

        width = default_modality_width_factor(input_channels) if modality_width_factor is None \
            else modality_width_factor
        if not 0 < width <= 4:
            raise ValueError(f"modality_width_factor must be in (0, 4], got {width}")
        self.modality_features_per_stage = [max(8, int(round(f * width))) for f in features_per_stage]

        # the M modality encoders: one encoder with modality-grouped convolutions (grouped_conv.py),
        # or one single-channel encoder that every modality passes through (shared_encoder)
        self.shared_encoder = shared_encoder
        if modality_norms and not shared_encoder:
            raise ValueError("modality_norms needs shared_encoder=True (the grouped encoders are modality-specific)")
        encoder_norm = modality_conditioned_norm(norm_op, input_channels) if modality_norms else norm_op
        encoder_inputs = 1 if shared_encoder else input_channels
        grouped = conv_op if shared_encoder else modality_grouped_conv(conv_op, input_channels)
        widths = [encoder_inputs * c for c in self.modality_features_per_stage]
        common = dict(conv_bias=conv_bias, norm_op=encoder_norm, norm_op_kwargs=norm_op_kwargs,
                      dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin,
                      nonlin_kwargs=nonlin_kwargs, return_skips=True)
        if encoder_type == "plain":
            if n_conv_per_stage is None:
                raise ValueError("encoder_type 'plain' needs n_conv_per_stage (from the plans)")
            self.encoder = PlainConvEncoder(encoder_inputs, n_stages, widths, grouped, kernel_sizes, strides,
                                            n_conv_per_stage, **common)
        elif encoder_type == "residual":
            if n_blocks_per_stage is None:
                raise ValueError("encoder_type 'residual' needs n_blocks_per_stage (from the plans)")
            self.encoder = ResidualEncoder(encoder_inputs, n_stages, widths, grouped, kernel_sizes, strides,
                                           n_blocks_per_stage, **common)
        else:
            raise ValueError(f"encoder_type must be 'plain' or 'residual', got {encoder_type!r}")
        self.activation_checkpointing = activation_checkpointing

        self.fusions = nn.ModuleList([
            DMAFFusion(input_channels, c, conv_op, fusion_num_layers, fusion_num_heads, fusion_token_grid,
                       fusion_token_dim, fusion_mlp_ratio, c if fusion_per_channel_maps else 1, fusion_mode)
            for c in self.modality_features_per_stage])
        self.fusion_projections = nn.ModuleList([
            ConvDropoutNormReLU(conv_op, c_mod, c_out, 1, 1, conv_bias, norm_op, norm_op_kwargs, None, None,
                                nonlin, nonlin_kwargs)
            for c_mod, c_out in zip(self.modality_features_per_stage, features_per_stage)])

        spec = dict(strides=self.encoder.strides, kernel_sizes=self.encoder.kernel_sizes, conv_op=conv_op,
                    conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
                    dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)
        self.decoder = UNetDecoder(DecoderSpec(list(features_per_stage), **spec), num_classes,
                                   n_conv_per_stage_decoder, deep_supervision)
        self.unimodal_decoder = UNetDecoder(DecoderSpec(list(self.modality_features_per_stage), **spec),
                                            num_classes, n_conv_per_stage_decoder, deep_supervision) \
            if unimodal_decoder else None
        c_l = self.modality_features_per_stage[self.distillation_level]
        self.cca_projection = CovarianceProjection(input_channels, c_l) if distillation_heads else None
        self.attention_alignment = MaskedAttentionAlignment(c_l, fusion_num_heads) if distillation_heads else None
        self.apply(InitWeights_He(1e-2))
        self.inference_modality_mask: torch.Tensor | None = None

    def set_inference_modality_mask(self, modality_mask: torch.Tensor | Sequence[bool] | None) -> None:
        """Fixes the mask ([M] bool, True = present) used when forward gets no mask; None resets to
        inferring it from all-zero channels."""
        if modality_mask is None:
            self.inference_modality_mask = None
            return
        mask = torch.as_tensor(modality_mask, dtype=torch.bool).flatten()
        if mask.numel() != self.num_modalities:
            raise ValueError(f"inference modality mask needs {self.num_modalities} entries, got {mask.numel()}")
        if not bool(mask.any()):
            raise ValueError("inference modality mask marks every modality as missing")
        self.inference_modality_mask = mask

    def check_inputs(self, x: torch.Tensor, modality_mask: torch.Tensor | None) -> torch.Tensor:
        """Validates x / modality_mask and returns the bool mask [B, M] to use, on x's device.

        Nothing here reads the mask's values on the host, except the check that every sample keeps a
        modality, which runs only on a CPU mask (as nnU-Net's data loader delivers it) and never
        under torch.compile: no host-device synchronisation, no graph break."""
        expected_ndim = 2 + self.spatial_dims
        if x.ndim != expected_ndim:
            raise ValueError(f"DMAFNet ({self.spatial_dims}D) expects input of shape [B, M, {'D, ' if self.spatial_dims == 3 else ''}H, W] "
                             f"({expected_ndim} dims), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_modalities:
            raise ValueError(f"DMAFNet was built for {self.num_modalities} modalities (the channels in the plans' "
                             f"dataset.json), but the input has {x.shape[1]} channels (shape {tuple(x.shape)})")
        if modality_mask is None and self.inference_modality_mask is not None:
            fixed = self.inference_modality_mask  # [M] for every sample, or [B, M]
            modality_mask = fixed.unsqueeze(0).expand(x.shape[0], -1) if fixed.ndim == 1 else fixed
        if modality_mask is None:
            return infer_modality_mask(x)
        if tuple(modality_mask.shape) != (x.shape[0], self.num_modalities):
            raise ValueError(f"modality_mask must have shape [B, M] = [{x.shape[0]}, {self.num_modalities}], "
                             f"got {tuple(modality_mask.shape)}")
        if modality_mask.device.type == "cpu" and not torch.compiler.is_compiling() \
                and not bool(modality_mask.bool().any(1).all()):
            raise ValueError("modality_mask marks every modality of a sample as missing; at least one must be present")
        return modality_mask.to(device=x.device, dtype=torch.bool, non_blocking=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All M modality encoders in one pass: [B, M, *S] -> per stage e_s [B, M, C_s, *S_s]."""
        if self.shared_encoder:  # [B*M, 1, *S] -> [B*M, C_s, *S_s]
            skips = self.encoder(x.flatten(0, 1).unsqueeze(1))
            return [f.unflatten(0, (x.shape[0], self.num_modalities)) for f in skips]
        return [f.unflatten(1, (self.num_modalities, -1)) for f in self.encoder(x)]

    def _checkpointed(self) -> bool:
        return self.activation_checkpointing and self.training and torch.is_grad_enabled()

    def fuse_level(self, level: int, features: torch.Tensor, mask: torch.Tensor, memo: dict | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DMAF at one level: e [B, M, C, *S], mask [B, M] -> (f [B, C, *S], Att_map [B, M, 1 or C,
        *grid], projected f [B, C_plans, *S]).

        In training with activation checkpointing only the full-resolution part (:meth:`fuse_and_project`)
        is recomputed in backward; the attention maps come from a few hundred tokens per level, whose
        activations are stored (recomputing them would re-dispatch the whole transformer). ``memo``:
        tensors derived from the mask, shared by the levels (see :meth:`DMAFFusion.missing_mask`)."""
        fusion = self.fusions[level]
        maps = fusion.attention_maps(features, mask, memo)
        missing = fusion.missing_mask(mask, memo)
        if self._checkpointed():
            fused, projected = checkpoint(self.fuse_and_project, level, features, maps, missing, use_reentrant=False)
        else:
            fused, projected = self.fuse_and_project(level, features, maps, missing)
        return fused, maps, projected

    def fuse_and_project(self, level: int, features: torch.Tensor, maps: torch.Tensor, missing: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-resolution part of :meth:`fuse_level`: (f, projected f) from e, Att_map and the
        missing-modality mask [B, M, 1, *1]."""
        fused = self.fusions[level].weighted_sum(features, maps, missing)
        return fused, self.fusion_projections[level](fused)

    def fuse(self, modality_features: list[torch.Tensor], mask: torch.Tensor
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Every level: (f_l, Att_map_l, projected f_l) lists (see :meth:`fuse_level`)."""
        memo: dict = {}
        outputs = [self.fuse_level(level, feats, mask, memo) for level, feats in enumerate(modality_features)]
        return [o[0] for o in outputs], [o[1] for o in outputs], [o[2] for o in outputs]

    def run_unimodal_decoder(self, pair_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Shared uni-modal decoder on (sample, modality) pairs: per level [N, C_l, *S_l] -> logits
        [N, K, *S] per deep-supervision scale."""
        if self._checkpointed():
            logits = checkpoint(self.unimodal_decoder, pair_features, use_reentrant=False)
        else:
            logits = self.unimodal_decoder(pair_features)
        return list(logits) if isinstance(logits, (list, tuple)) else [logits]

    def training_features(self, modality_features: list[torch.Tensor], fused: list[torch.Tensor],
                          maps: list[torch.Tensor], mask: torch.Tensor) -> DMAFFeatures:
        """Runs the shared uni-modal decoder and the distillation heads at L on all B*M pairs (row
        b*M + m); static shapes, whatever the mask."""
        b, m = mask.shape
        pairs = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(m), indexing="ij"), -1).flatten(0, 1)
        pair_features = [f.flatten(0, 1) for f in modality_features]  # [B*M, C_l, *S_l]
        unimodal = self.run_unimodal_decoder(pair_features) if self.unimodal_decoder is not None else None
        level = self.distillation_level
        e_l = pair_features[level]  # [B*M, C, *S]
        teacher = fused[level].detach()  # the sample's fused feature, repeated for its M pairs
        f_l = teacher.repeat_interleave(m, 0)
        student_tokens = level_tokens(e_l, self.distillation_grid)
        teacher_tokens = level_tokens(teacher, self.distillation_grid).repeat_interleave(m, 0)
        modality_ids = torch.arange(m, device=e_l.device).repeat(b)
        return DMAFFeatures(modality_features, fused, maps, mask, pairs.to(e_l.device, non_blocking=True), unimodal,
                            level, e_l, f_l, student_tokens, teacher_tokens,
                            None if self.cca_projection is None else self.cca_projection(e_l.flatten(2), modality_ids),
                            None if self.attention_alignment is None else
                            self.attention_alignment(student_tokens, teacher_tokens), pairs)

    def forward(self, x: torch.Tensor, modality_mask: torch.Tensor | None = None,
                return_features: bool = False):
        """
        Args:
            x: [B, M, *S] images, one channel per modality.
            modality_mask: optional bool [B, M], True = present (None: inferred from zero channels).
            return_features: training: also run the uni-modal decoder and distillation heads and
                return a :class:`DMAFFeatures`.
        Returns:
            fusion-decoder logits [B, K, *S] (list of scales with deep supervision), and the features
            if requested.
        """
        mask = self.check_inputs(x, modality_mask)
        modality_features = self.encode(x)
        fused, maps, projected = self.fuse(modality_features, mask)
        # training: the uni-modal decoder runs BEFORE the fusion decoder, so that backward (newest
        # nodes first) frees the fusion decoder's activations before it recomputes the uni-modal one
        features = self.training_features(modality_features, fused, maps, mask) if return_features else None
        output = self.decoder(projected)
        return (output, features) if return_features else output

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements one training sample needs at the peak, in the units of dynamic-network-
        architectures' U-Nets (nnU-Net's planner compares this with its reference budget; see
        nnunetv2_dmaf.experiment_planning).

        The modality encoders and the projections are held throughout. With activation checkpointing
        the fusion decoder's activations and, later in backward, the recomputed uni-modal decoder's
        (one pass over the M pairs of the sample) are not held at the same time, so the larger of
        the two counts, plus the uni-modal outputs (K channels per modality and scale). Without it
        both decoders and the full-resolution fusion maps count."""
        size = list(input_size)
        level_sizes = []
        for stride in self.encoder.strides:
            size = [i // j for i, j in zip(size, stride)]
            level_sizes.append(size)
        total = int(self.encoder.compute_conv_feature_map_size(input_size))
        if self.shared_encoder:  # runs once per modality
            total *= self.num_modalities
        total += sum(int(projection.compute_conv_feature_map_size(level_size))
                     for projection, level_size in zip(self.fusion_projections, level_sizes))
        fusion_decoder = int(self.decoder.compute_conv_feature_map_size(input_size))
        unimodal = 0 if self.unimodal_decoder is None else \
            self.num_modalities * int(self.unimodal_decoder.compute_conv_feature_map_size(input_size))
        if self.activation_checkpointing:
            total += max(fusion_decoder, unimodal)
            if self.unimodal_decoder is not None:
                scales = level_sizes[:-1] if self.unimodal_decoder.deep_supervision else level_sizes[:1]
                total += self.num_modalities * self.num_classes * sum(int(np.prod(s)) for s in scales)
        else:
            total += fusion_decoder + unimodal + sum(self.num_modalities * c * int(np.prod(s))
                                                     for c, s in zip(self.modality_features_per_stage, level_sizes))
        return np.int64(total)


class UnsupportedPlansError(ValueError):
    """The plans describe a network that DMAFNet cannot be built from (class, importable entries,
    arch_kwargs that do not fit together)."""


def build_dmaf_net_from_plans(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                              input_channels: int, output_channels: int, deep_supervision: bool = True,
                              **dmaf_kwargs: Any) -> DMAFNet:
    """Builds DMAFNet from a configuration's ``architecture`` entry of nnU-Net plans.

    Args:
        arch_class_name: the plans' network class (PlainConvUNet or ResidualEncoderUNet decide the
            encoder type).
        arch_kwargs / arch_kwargs_req_import: the plans' ``arch_kwargs`` (strings for classes are
            resolved as nnU-Net does).
        input_channels: M, number of modalities. output_channels: segmentation heads.
        dmaf_kwargs: DMAFNet-specific options (modality_width_factor, fusion_*, unimodal_decoder,
            distillation_*).
    """
    kwargs = dict(arch_kwargs)
    for key in arch_kwargs_req_import:
        if kwargs.get(key) is not None and isinstance(kwargs[key], str):
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise UnsupportedPlansError(f"plans entry {key}={kwargs[key]!r} could not be imported")
            kwargs[key] = located
    short_name = arch_class_name.split(".")[-1]
    if short_name == "PlainConvUNet":
        encoder_type = "plain"
    elif short_name == "ResidualEncoderUNet":
        encoder_type = "residual"
    else:
        raise UnsupportedPlansError(f"nnUNetTrainerDMAF supports plans with PlainConvUNet or ResidualEncoderUNet, "
                                    f"got network class {arch_class_name!r}")
    kwargs.update(dmaf_kwargs)
    try:
        return DMAFNet(input_channels, output_channels, deep_supervision=deep_supervision,
                       encoder_type=encoder_type, **kwargs)
    except (AssertionError, ValueError, TypeError) as error:  # entries that do not fit together
        raise UnsupportedPlansError(f"its {short_name} arch_kwargs do not describe a network DMAF-Net can be built "
                                    f"from ({type(error).__name__}: {one_line(error)})") from error

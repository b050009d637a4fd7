"""DTM (Dynamic Training Monitoring): per-modality loss reweighting from the distillation gaps and
per-modality encoder gradient scaling from the convergence speeds, robust to sampling noise.

Per iteration the trainer records, for every present (sample, modality) pair and without any device
synchronisation, two detached numbers: the distillation gap ``g`` (L_cov + L_att + L_proto of the
pair) and a convergence signal ``c`` (the pair's uni-modal soft-Dice loss; the gap without the
uni-modal decoder). At the end of every epoch :meth:`DynamicTrainingMonitor.end_epoch` sums the
per-modality counts, sums and (for the convergence signal) sums of squares over all DDP ranks (one ``all_reduce``) and updates, for
the next epoch:

* **loss weights** (towards lagging modalities): the epoch's mean gap of modality m is shrunk towards
  the mean over all pairs with ``shrinkage`` pseudo-samples, ``G_m = (n_m g_m + kappa g) / (n_m + kappa)``
  (a rare modality's noisy mean is not taken at face value), smoothed over epochs (EMA ``E_m``,
  momentum ``gap_momentum``), and ``w_m = clip((E_m / mean E) ** gamma, weight_bounds)``; modalities
  with a larger gap than average get more weight on their uni-modal and distillation losses;
* **gradient scales** (slow the fast): the convergence speed ``v_m = (c_m(e-1) - c_m(e)) / c_m(e-1)``
  (relative decrease of the mean signal between epochs) and its sampling variance from the per-epoch
  variances and counts are smoothed (EMA, momentum ``speed_momentum``). A modality is slowed only by
  the part of its lead over the other modalities' mean speed that exceeds ``significance`` standard
  errors: ``k_m = max(k_min, 1 - tanh(alpha * max(0, lead_m - z se_m) / max(|mean v|, speed_floor)))``.
  Modalities that behave the same therefore keep k = 1 up to rare, small excursions, whatever their
  availability; a truly faster modality is slowed. The trainer multiplies encoder m's gradients by
  ``k_m`` after backward, before gradient clipping.

Before the first epoch ends all weights and scales are 1; a modality without data in an epoch keeps
its state and gets weight/scale 1.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

_EPS = 1e-8
#: rows of the per-epoch accumulator [5, M] (the gaps need no variance: shrinkage uses counts)
_COUNT, _GAP_SUM, _SIG_SUM, _SIG_SQ, _SIG_COUNT = range(5)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over DDP ranks (in place, returned); identity without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class DynamicTrainingMonitor:
    """See the module docstring.

    Args:
        modality_names: the M modalities (encoders), in channel order.
        gap_momentum: EMA momentum of the shrunk gaps (per epoch).
        shrinkage: kappa, pseudo-samples pulling a modality's mean gap to the overall mean.
        weight_exponent: gamma. weight_bounds: (min, max) of each loss weight.
        speed_momentum: EMA momentum of the speeds (per epoch).
        significance: z, standard errors of lead that are ignored.
        grad_alpha: alpha. min_grad_scale: k_min. speed_floor: smallest speed scale (relative
            decrease per epoch) the lead is measured against.
        reweight_losses / modulate_gradients: switch either mechanism off (weights / scales stay 1).
        device: where the per-iteration accumulators live (the training device).
    """

    def __init__(self, modality_names: Sequence[str], gap_momentum: float = 0.8, shrinkage: float = 50.0,
                 weight_exponent: float = 1.0, weight_bounds: tuple[float, float] = (0.5, 2.0),
                 speed_momentum: float = 0.8, significance: float = 2.0, grad_alpha: float = 1.0,
                 min_grad_scale: float = 0.5, speed_floor: float = 0.01, reweight_losses: bool = True,
                 modulate_gradients: bool = True, device: torch.device | str = "cpu"):
        if not (0 <= gap_momentum < 1 and 0 <= speed_momentum < 1):
            raise ValueError("DTM momenta must be in [0, 1)")
        if shrinkage < 0 or weight_exponent < 0 or significance < 0 or grad_alpha < 0 or speed_floor <= 0:
            raise ValueError("DTM needs shrinkage, weight_exponent, significance, grad_alpha >= 0 and speed_floor > 0")
        if not 0 < min_grad_scale <= 1:
            raise ValueError(f"min_grad_scale must be in (0, 1], got {min_grad_scale}")
        if not 0 < weight_bounds[0] <= 1 <= weight_bounds[1]:
            raise ValueError(f"weight_bounds must satisfy 0 < min <= 1 <= max, got {weight_bounds}")
        self.modality_names = list(modality_names)
        self.gap_momentum = gap_momentum
        self.shrinkage = shrinkage
        self.weight_exponent = weight_exponent
        self.weight_bounds = tuple(weight_bounds)
        self.speed_momentum = speed_momentum
        self.significance = significance
        self.grad_alpha = grad_alpha
        self.min_grad_scale = min_grad_scale
        self.speed_floor = speed_floor
        self.reweight_losses = reweight_losses
        self.modulate_gradients = modulate_gradients
        self.device = torch.device(device)
        m = len(self.modality_names)
        self.epochs = 0
        self.gap_ema = np.full(m, np.nan)
        self.last_gaps = np.full(m, np.nan)
        self.loss_weights = np.ones(m)
        self.last_signal = np.full(m, np.nan)  # previous epoch's mean convergence signal
        self.last_signal_var = np.full(m, np.nan)  # its sampling variance (var / n)
        self.speed_ema = np.full(m, np.nan)
        self.speed_var = np.full(m, np.nan)
        self.grad_scales = np.ones(m)
        self.history: list[dict] = []
        self._reset_accumulators()

    # ---------------------------------------------------------------- per iteration
    def _reset_accumulators(self) -> None:
        self._acc = torch.zeros(5, len(self.modality_names), dtype=torch.float64, device=self.device)

    def record(self, gaps: torch.Tensor | None, signal: torch.Tensor | None, modality: torch.Tensor) -> None:
        """One iteration: gaps [P] and convergence signal [P] (either may be None) of the pairs whose
        modality ids are ``modality`` [P]."""
        idx = modality.to(self._acc.device).long()
        ones = torch.ones(idx.numel(), dtype=self._acc.dtype, device=self._acc.device)
        if gaps is not None:
            g = gaps.detach().to(self._acc)
            self._acc[_COUNT].index_add_(0, idx, ones)
            self._acc[_GAP_SUM].index_add_(0, idx, g)
        if signal is not None:
            c = signal.detach().to(self._acc)
            self._acc[_SIG_COUNT].index_add_(0, idx, ones)
            self._acc[_SIG_SUM].index_add_(0, idx, c)
            self._acc[_SIG_SQ].index_add_(0, idx, c * c)

    # ---------------------------------------------------------------- per epoch
    def end_epoch(self) -> dict[str, Any]:
        """Reduces the epoch's statistics over ranks, updates weights and scales; returns a summary."""
        stats = all_reduce_sum(self._acc.clone()).cpu().numpy()
        self._reset_accumulators()
        return self.update(stats)

    def update(self, stats: np.ndarray) -> dict[str, Any]:
        """Applies one epoch's accumulated statistics [5, M] (see ``record``)."""
        self._update_weights(stats[_COUNT], stats[_GAP_SUM])
        self._update_scales(stats[_SIG_COUNT], stats[_SIG_SUM], stats[_SIG_SQ])
        self.epochs += 1
        summary = self.summary()
        self.history.append(summary)
        return summary

    def _update_weights(self, n: np.ndarray, total: np.ndarray) -> None:
        has = n > 0
        if not has.any():
            return
        overall = total[has].sum() / n[has].sum()
        means = np.where(has, total / np.maximum(n, 1), np.nan)
        shrunk = (n * np.nan_to_num(means) + self.shrinkage * overall) / (n + self.shrinkage)
        for i in np.flatnonzero(has):
            self.last_gaps[i] = means[i]
            self.gap_ema[i] = shrunk[i] if np.isnan(self.gap_ema[i]) else \
                self.gap_momentum * self.gap_ema[i] + (1 - self.gap_momentum) * shrunk[i]
        known = ~np.isnan(self.gap_ema)
        weights = np.ones(len(n))
        if self.reweight_losses and known.sum() >= 2 and self.gap_ema[known].mean() > _EPS:
            ratio = np.maximum(self.gap_ema[known], 0) / self.gap_ema[known].mean()
            weights[known] = np.clip(ratio ** self.weight_exponent, *self.weight_bounds)
        self.loss_weights = weights

    def _update_scales(self, n: np.ndarray, total: np.ndarray, sq: np.ndarray) -> None:
        has = n > 1
        means = np.where(has, total / np.maximum(n, 1), np.nan)
        sample_var = np.where(has, np.maximum(sq / np.maximum(n, 1) - means ** 2, 0) * n / np.maximum(n - 1, 1),
                              np.nan)
        mean_var = sample_var / np.maximum(n, 1)  # variance of the epoch mean
        b = self.speed_momentum
        for i in np.flatnonzero(has):
            prev = self.last_signal[i]
            if not np.isnan(prev) and prev > _EPS:
                v = (prev - means[i]) / prev
                v_var = (self.last_signal_var[i] + mean_var[i]) / prev ** 2
                if np.isnan(self.speed_ema[i]):
                    self.speed_ema[i], self.speed_var[i] = v, v_var
                else:
                    self.speed_ema[i] = b * self.speed_ema[i] + (1 - b) * v
                    self.speed_var[i] = b * b * self.speed_var[i] + (1 - b) ** 2 * v_var
            self.last_signal[i], self.last_signal_var[i] = means[i], mean_var[i]
        self.grad_scales = self.scales_from_speeds(self.speed_ema, self.speed_var)

    def scales_from_speeds(self, speeds: np.ndarray, variances: np.ndarray) -> np.ndarray:
        """k [M] from smoothed speeds and their variances (NaN = unknown -> 1)."""
        scales = np.ones(len(speeds))
        known = np.flatnonzero(~np.isnan(speeds))
        if not self.modulate_gradients or len(known) < 2:
            return scales
        reference = max(abs(float(speeds[known].mean())), self.speed_floor)
        for i in known:
            others = [j for j in known if j != i]
            lead = speeds[i] - speeds[others].mean()
            se = np.sqrt(variances[i] + variances[others].mean() / len(others))
            excess = max(0.0, lead - self.significance * se)
            scales[i] = max(self.min_grad_scale, 1 - np.tanh(self.grad_alpha * excess / reference))
        return scales

    # ---------------------------------------------------------------- applying
    def weights(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.modality_names, self.loss_weights)}

    def scales(self) -> dict[str, float]:
        return {n: float(s) for n, s in zip(self.modality_names, self.grad_scales)}

    def weight_tensor(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Loss weights [M] as a tensor (host -> device copy, no sync)."""
        return torch.as_tensor(self.loss_weights, dtype=dtype).to(device, non_blocking=True)

    def scale_encoder_gradients(self, encoder: nn.Module) -> None:
        """Multiplies the gradients of modality m's part of ``encoder`` by k_m (call after backward,
        before clipping). ``encoder`` holds the M modality encoders as modality groups (DMAFNet's
        grouped encoder): dimension 0 of every parameter is M equal blocks, block m = modality m.
        Nothing happens with ``modulate_gradients`` off, whatever scales a checkpoint restored."""
        if not self.modulate_gradients or all(scale == 1.0 for scale in self.grad_scales):
            return
        m = len(self.grad_scales)
        scales: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # one host -> device copy each
        for name, p in encoder.named_parameters():
            if p.grad is None:
                continue
            if p.shape[0] % m:
                raise ValueError(f"encoder parameter {name} {tuple(p.shape)} does not split into {m} modality groups")
            key = (p.grad.device, p.grad.dtype)
            if key not in scales:
                scales[key] = torch.as_tensor(np.asarray(self.grad_scales), dtype=p.grad.dtype).to(
                    p.grad.device, non_blocking=True)[:, None]
            p.grad.view(m, -1).mul_(scales[key])

    def summary(self) -> dict[str, Any]:
        """Current state for logging: weights, last gaps, gradient scales, smoothed speeds."""
        return {"epoch": self.epochs, "weights": self.weights(), "scales": self.scales(),
                "gaps": {n: float(g) for n, g in zip(self.modality_names, self.last_gaps)},
                "speeds": {n: float(v) for n, v in zip(self.modality_names, self.speed_ema)}}

    # ---------------------------------------------------------------- checkpointing
    _STATE_ARRAYS = ("gap_ema", "last_gaps", "loss_weights", "last_signal", "last_signal_var", "speed_ema",
                     "speed_var", "grad_scales")

    def state_dict(self) -> dict[str, Any]:
        return {"version": 2, "modality_names": self.modality_names, "epochs": self.epochs,
                "history": list(self.history), **{k: getattr(self, k).tolist() for k in self._STATE_ARRAYS}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 2:
            raise ValueError(f"DTM state version {state.get('version')} is not supported (expected 2)")
        if list(state["modality_names"]) != self.modality_names:
            raise ValueError(f"DTM state is for modalities {state['modality_names']}, this trainer has "
                             f"{self.modality_names}")
        self.epochs = int(state["epochs"])
        for key in self._STATE_ARRAYS:
            setattr(self, key, np.asarray(state[key], dtype=np.float64))
        self.history = list(state.get("history", []))
        self._reset_accumulators()


def per_sample_soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, has_regions: bool,
                              ignore_label: int | None = None) -> torch.Tensor:
    """1 - mean foreground soft Dice per sample, detached (DTM's convergence signal).

    logits [B, K, *S]; target: label map [B, 1, *S] (softmax outputs, class 0 = background) or region
    map [B, R(+1 ignore channel), *S] (sigmoid outputs). Returns [B].
    """
    with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()
        if has_regions:
            prob = torch.sigmoid(logits)
            ref = target[:, :prob.shape[1]].float()
            valid = (1 - target[:, -1:].float()) if ignore_label is not None else torch.ones_like(ref[:, :1])
        else:
            prob = torch.softmax(logits, 1)[:, 1:]
            labels = target[:, 0].long()
            valid = (labels != ignore_label).float()[:, None] if ignore_label is not None \
                else torch.ones_like(prob[:, :1])
            ref = torch.stack([(labels == c) for c in range(1, logits.shape[1])], 1).float()
        axes = tuple(range(2, prob.ndim))
        intersection = (prob * ref * valid).sum(axes)
        denominator = ((prob + ref) * valid).sum(axes)
        dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
        return 1 - dice.mean(1)

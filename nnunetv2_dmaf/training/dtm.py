"""DTM (Dynamic Training Monitoring): distillation-loss reweighting and per-modality gradient scaling.

Per iteration the trainer records, without any device synchronisation:

* each distillation gap (the loss value, detached);
* a per-sample segmentation loss together with the sample's (student) modality mask.

At the end of every epoch :meth:`DynamicTrainingMonitor.end_epoch` sums these statistics over all
DDP ranks (one ``all_reduce`` when ``torch.distributed`` is initialised, so every rank derives the
same weights and scales) and updates, for the next epoch:

* **loss weights** -- gap EMA ``E_k <- b_g E_k + (1 - b_g) G_k``; trend ``rho_k = G_k / E_k`` (this
  epoch's mean gap relative to its running average, > 1 = the gap grows; both offset by a small
  ``gap_floor`` so gaps near 0 count as steady); weights
  ``w = K softmax(rho / T)`` clipped to ``weight_bounds`` (all 1 while the gaps are steady);
* **gradient scales** -- per modality m, ``L_m`` = mean segmentation loss of the samples that had m;
  EMA ``S_m``; convergence speed ``v_m = relu(S_m - L_m) / S_m``; ratio ``r_m = v_m / mean(v)``;
  scale ``k_m = max(k_min, 1 - tanh(alpha relu(r_m - 1)))`` (OGM-GE's coefficient: modalities
  converging faster than average are slowed down, the others keep 1). The trainer multiplies the
  gradients of encoder m by ``k_m`` after backward, before gradient clipping.

Before the first epoch ends all weights and scales are 1. A statistic without data in an epoch (no
distillation, a modality never present) leaves its state unchanged and its weight/scale neutral.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

_EPS = 1e-8


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over DDP ranks (in place, returned); identity without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class DynamicTrainingMonitor:
    """Tracks distillation gaps and per-modality convergence; see the module docstring.

    Args:
        loss_names: the K distillation losses.
        modality_names: the M modalities (encoders), in channel order.
        gap_momentum: b_g, EMA momentum of the gaps (per epoch).
        weight_temperature: T of the softmax over gap trends.
        weight_bounds: (min, max) of each loss weight.
        gap_floor: added to gap and EMA in the trend ratio (gaps far below it count as steady).
        speed_momentum: EMA momentum of the per-modality losses (per epoch).
        grad_alpha: alpha of the OGM-GE coefficient.
        min_grad_scale: k_min, lower bound of a gradient scale.
        reweight_losses / modulate_gradients: switch either mechanism off (weights / scales stay 1).
        device: where the per-iteration accumulators live (the training device).
    """

    def __init__(self, loss_names: Sequence[str], modality_names: Sequence[str], gap_momentum: float = 0.9,
                 weight_temperature: float = 1.0, weight_bounds: tuple[float, float] = (0.5, 2.0),
                 gap_floor: float = 1e-4, speed_momentum: float = 0.9, grad_alpha: float = 0.5,
                 min_grad_scale: float = 0.1,
                 reweight_losses: bool = True, modulate_gradients: bool = True,
                 device: torch.device | str = "cpu"):
        if not (0 <= gap_momentum < 1 and 0 <= speed_momentum < 1):
            raise ValueError("DTM momenta must be in [0, 1)")
        if gap_floor <= 0 or weight_temperature <= 0 or grad_alpha < 0 or not 0 < min_grad_scale <= 1:
            raise ValueError("DTM needs gap_floor > 0, weight_temperature > 0, grad_alpha >= 0 and "
                             "min_grad_scale in (0, 1]")
        if not 0 < weight_bounds[0] <= 1 <= weight_bounds[1]:
            raise ValueError(f"weight_bounds must satisfy 0 < min <= 1 <= max, got {weight_bounds}")
        self.loss_names = list(loss_names)
        self.modality_names = list(modality_names)
        self.gap_momentum = gap_momentum
        self.weight_temperature = weight_temperature
        self.weight_bounds = tuple(weight_bounds)
        self.gap_floor = gap_floor
        self.speed_momentum = speed_momentum
        self.grad_alpha = grad_alpha
        self.min_grad_scale = min_grad_scale
        self.reweight_losses = reweight_losses
        self.modulate_gradients = modulate_gradients
        self.device = torch.device(device)

        k, m = len(self.loss_names), len(self.modality_names)
        self.epochs = 0
        self.gap_ema = np.full(k, np.nan)
        self.last_gaps = np.full(k, np.nan)
        self.loss_weights = np.ones(k)
        self.modality_loss_ema = np.full(m, np.nan)
        self.last_modality_losses = np.full(m, np.nan)
        self.speeds = np.full(m, np.nan)
        self.grad_scales = np.ones(m)
        self.history: list[dict] = []
        self._reset_accumulators()

    # ---------------------------------------------------------------- per iteration
    def _reset_accumulators(self) -> None:
        k, m = len(self.loss_names), len(self.modality_names)
        self._acc = torch.zeros(2 * k + 2 * m, dtype=torch.float64, device=self.device)

    def record_gaps(self, gaps: Mapping[str, torch.Tensor | float]) -> None:
        """Adds one iteration's distillation losses (any subset of ``loss_names``)."""
        k = len(self.loss_names)
        for name, value in gaps.items():
            i = self.loss_names.index(name)
            self._acc[i] += torch.as_tensor(value).detach().to(self._acc)
            self._acc[k + i] += 1

    def record_segmentation(self, per_sample_loss: torch.Tensor, modality_mask: torch.Tensor) -> None:
        """per_sample_loss [B], modality_mask bool [B, M] (the modalities each sample was trained with)."""
        k, m = len(self.loss_names), len(self.modality_names)
        mask = modality_mask.detach().to(self._acc)
        self._acc[2 * k:2 * k + m] += (per_sample_loss.detach().to(self._acc)[:, None] * mask).sum(0)
        self._acc[2 * k + m:] += mask.sum(0)

    # ---------------------------------------------------------------- per epoch
    def end_epoch(self) -> dict[str, Any]:
        """Reduces the epoch's statistics over ranks, updates weights and scales; returns a summary."""
        k, m = len(self.loss_names), len(self.modality_names)
        stats = all_reduce_sum(self._acc.clone()).cpu().numpy()
        self._reset_accumulators()
        gap_sum, gap_count = stats[:k], stats[k:2 * k]
        loss_sum, loss_count = stats[2 * k:2 * k + m], stats[2 * k + m:]
        gaps = np.where(gap_count > 0, gap_sum / np.maximum(gap_count, 1), np.nan)
        modality_losses = np.where(loss_count > 0, loss_sum / np.maximum(loss_count, 1), np.nan)
        self._update_weights(gaps)
        self._update_scales(modality_losses)
        self.epochs += 1
        summary = self.summary()
        self.history.append(summary)
        return summary

    def _update_weights(self, gaps: np.ndarray) -> None:
        trend = np.ones(len(gaps))
        for i, gap in enumerate(gaps):
            if np.isnan(gap):
                continue
            gap = max(float(gap), 0.0)  # losses are >= 0; clip float noise
            if not np.isnan(self.gap_ema[i]):
                trend[i] = (gap + self.gap_floor) / (self.gap_ema[i] + self.gap_floor)
                self.gap_ema[i] = self.gap_momentum * self.gap_ema[i] + (1 - self.gap_momentum) * gap
            else:
                self.gap_ema[i] = gap
            self.last_gaps[i] = gap
        if self.reweight_losses and len(trend):
            logits = trend / self.weight_temperature
            softmax = np.exp(logits - logits.max())
            softmax /= softmax.sum()
            self.loss_weights = np.clip(len(trend) * softmax, *self.weight_bounds)

    def _update_scales(self, losses: np.ndarray) -> None:
        speeds = np.full(len(losses), np.nan)
        for i, loss in enumerate(losses):
            if np.isnan(loss):
                continue
            if not np.isnan(self.modality_loss_ema[i]):
                speeds[i] = max(0.0, self.modality_loss_ema[i] - loss) / max(self.modality_loss_ema[i], _EPS)
                self.modality_loss_ema[i] = self.speed_momentum * self.modality_loss_ema[i] + \
                    (1 - self.speed_momentum) * loss
            else:
                self.modality_loss_ema[i] = loss
            self.last_modality_losses[i] = loss
        self.speeds = speeds
        scales = np.ones(len(losses))
        valid = ~np.isnan(speeds)
        if self.modulate_gradients and valid.any() and speeds[valid].mean() > _EPS:
            ratio = speeds[valid] / speeds[valid].mean()
            scales[valid] = np.maximum(self.min_grad_scale,
                                       1 - np.tanh(self.grad_alpha * np.maximum(ratio - 1, 0)))
        self.grad_scales = scales

    # ---------------------------------------------------------------- applying
    def weights(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.loss_names, self.loss_weights)}

    def scales(self) -> dict[str, float]:
        return {n: float(s) for n, s in zip(self.modality_names, self.grad_scales)}

    def scale_encoder_gradients(self, encoders: Sequence[nn.Module]) -> None:
        """Multiplies the gradients of ``encoders[m]`` by k_m (call after backward, before clipping)."""
        if len(encoders) != len(self.grad_scales):
            raise ValueError(f"{len(encoders)} encoders but {len(self.grad_scales)} gradient scales")
        for encoder, scale in zip(encoders, self.grad_scales):
            if scale != 1.0:
                grads = [p.grad for p in encoder.parameters() if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, float(scale))

    def summary(self) -> dict[str, Any]:
        """Current state for logging: weights, last gaps, gradient scales, per-modality speeds."""
        return {"epoch": self.epochs, "weights": self.weights(), "scales": self.scales(),
                "gaps": {n: float(g) for n, g in zip(self.loss_names, self.last_gaps)},
                "speeds": {n: float(v) for n, v in zip(self.modality_names, self.speeds)}}

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "loss_names": self.loss_names, "modality_names": self.modality_names,
                "epochs": self.epochs, "gap_ema": self.gap_ema.tolist(), "last_gaps": self.last_gaps.tolist(),
                "loss_weights": self.loss_weights.tolist(), "modality_loss_ema": self.modality_loss_ema.tolist(),
                "last_modality_losses": self.last_modality_losses.tolist(), "speeds": self.speeds.tolist(),
                "grad_scales": self.grad_scales.tolist(), "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["loss_names"]) != self.loss_names or list(state["modality_names"]) != self.modality_names:
            raise ValueError(f"DTM state is for losses {state['loss_names']} / modalities {state['modality_names']}, "
                             f"this trainer has {self.loss_names} / {self.modality_names}")
        self.epochs = int(state["epochs"])
        for key in ("gap_ema", "last_gaps", "loss_weights", "modality_loss_ema", "last_modality_losses",
                    "speeds", "grad_scales"):
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


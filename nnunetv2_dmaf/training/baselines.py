"""Baselines for the robustness benchmark: nnU-Net's own network trained with channel dropout."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def random_channel_keep_mask(batch_size: int, num_channels: int, drop_probability: float,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [B, M], True = keep; each channel dropped with ``drop_probability``, never all of a sample
    (an all-dropped row keeps one channel chosen uniformly)."""
    keep = torch.rand(batch_size, num_channels, generator=generator) >= drop_probability
    empty = ~keep.any(1)
    if empty.any():
        rescue = torch.randint(num_channels, (int(empty.sum()),), generator=generator)
        keep[empty.nonzero().flatten(), rescue] = True
    return keep


class nnUNetTrainerChannelDropout(nnUNetTrainer):
    """nnU-Net's default trainer and U-Net; each training sample's channels are zeroed independently
    with probability ``channel_drop_probability`` (0.5, uniform over modalities), never all. The
    plain random modality dropout that missing-modality papers compare against."""

    channel_drop_probability: float = 0.5

    def train_step(self, batch: dict) -> dict:
        data = batch["data"]
        keep = random_channel_keep_mask(data.shape[0], data.shape[1], self.channel_drop_probability)
        batch = dict(batch, data=data * keep.view(*keep.shape, *([1] * (data.ndim - 2))).to(data.dtype))
        return super().train_step(batch)

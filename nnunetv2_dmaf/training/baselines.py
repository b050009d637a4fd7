"""Baseline for the quality benchmark: nnU-Net's U-Net with uniform random channel dropout."""
from __future__ import annotations

from nnunetv2_dmaf.training.nnUNetTrainerZeroFilled import nnUNetTrainerZeroFilled


class nnUNetTrainerChannelDropout(nnUNetTrainerZeroFilled):
    """nnUNetTrainerZeroFilled (the configured table/rates apply) plus uniform random channel dropout:
    each training sample additionally drops each of its available channels with probability
    ``extra_channel_drop_probability`` (0.5), never all of them (the plain random modality dropout
    that missing-modality papers compare against). Validation is as in nnUNetTrainerZeroFilled."""

    extra_channel_drop_probability: float = 0.5

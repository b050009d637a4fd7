"""The channel-dropout baseline trainer's mask sampling."""
import torch

from nnunetv2_dmaf.training.baselines import random_channel_keep_mask


def test_keep_mask_never_empty_and_follows_rate():
    generator = torch.Generator().manual_seed(0)
    keep = random_channel_keep_mask(20000, 4, 0.5, generator)
    assert keep.any(1).all()
    # P(keep) = 0.5 + P(all dropped) / 4 = 0.5 + 0.0625 / 4
    assert abs(keep.float().mean().item() - (0.5 + 0.0625 / 4)) < 0.01


def test_keep_mask_extremes():
    assert random_channel_keep_mask(5, 3, 0.0).all()
    keep = random_channel_keep_mask(1000, 3, 1.0)
    assert (keep.sum(1) == 1).all()

"""ChannelPresenceTransform: which channels of a training sample hold data, read BEFORE augmentation.

A user who zero-fills a missing modality gives nnU-Net an all-zero channel. nnU-Net's augmentation
(Gaussian noise, brightness, gamma, ...) makes such a channel non-zero in a fraction of the samples,
so the presence must be read from the sample as it comes from the data loader, before any
augmentation. Put this transform FIRST in the pipeline; :class:`ModalityDropoutTransform` (last)
combines it with the availability table and the missing rates.
"""
from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

#: data-dict key written by :class:`ChannelPresenceTransform`: bool [M], True = channel holds data
DATA_PRESENT_KEY = "data_present_mask"


def channels_with_data(image: torch.Tensor) -> torch.Tensor:
    """image [M, *S] -> bool [M]: channels that are not zero everywhere. A sample whose channels are
    all zero (a background patch) counts as complete: there is nothing to tell its modalities apart."""
    present = image.detach().flatten(1).abs().amax(1) > 0
    return present if bool(present.any()) else torch.ones_like(present)


class ChannelPresenceTransform(BasicTransform):
    """Writes ``data_present_mask`` (bool [M]) from ``image`` [M, *S]; the image is unchanged."""

    def apply(self, data_dict: dict, **params) -> dict:
        data_dict[DATA_PRESENT_KEY] = channels_with_data(data_dict["image"])
        return data_dict

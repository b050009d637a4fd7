"""Convolutions split into independent modality groups, so that ONE dynamic-network-architectures
encoder holds the M per-modality encoders of DMAF-Net.

``modality_grouped_conv(nn.Conv3d, M)`` is a subclass of ``nn.Conv3d`` that always uses ``groups=M``.
Given to PlainConvEncoder / ResidualEncoder as ``conv_op`` with input_channels = M and every width
multiplied by M, it builds M encoders that never mix: group m of every convolution reads only the
channels of group m of the previous one, instance norms and nonlinearities act per channel, and the
channels of modality m are block m (``[B, M*C, *S]`` -> ``view(B, M, C, *S)``). Weights, He
initialisation (fan-in per group) and outputs equal those of M separate encoders; one kernel per layer
replaces M (fewer launches, no per-modality Python loop, a graph torch.compile traces once).

The subclass is created once per (conv class, M) and is a real subclass, so dynamic-network-
architectures' ``convert_conv_op_to_dim`` / ``get_matching_*`` helpers (``issubclass`` checks) work.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Type

from torch.nn.modules.conv import _ConvNd


@lru_cache(maxsize=None)
def modality_grouped_conv(conv_op: Type[_ConvNd], groups: int) -> Type[_ConvNd]:
    """``conv_op`` with ``groups`` fixed (channels in and out must be multiples of ``groups``)."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")

    def __init__(self, in_channels: int, out_channels: int, *args, **kwargs):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__} needs channel counts divisible by {groups}, "
                             f"got {in_channels} -> {out_channels}")
        kwargs["groups"] = groups
        conv_op.__init__(self, in_channels, out_channels, *args, **kwargs)

    return type(f"ModalityGrouped{conv_op.__name__}x{groups}", (conv_op,),
                {"__init__": __init__, "__module__": __name__, "modality_groups": groups})

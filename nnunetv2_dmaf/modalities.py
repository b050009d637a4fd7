"""Channel (modality) names, user channel specifications and modality subsets.

Channels are identified by their index in dataset.json's ``channel_names`` (the order nnU-Net feeds
them to the network). A modality mask is a tuple of bools, True = present.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Sequence

ModalityMask = tuple[bool, ...]


def channel_names_from_dataset_json(dataset_json: dict) -> list[str]:
    """Channel names in network order (dataset.json ``channel_names``, or legacy ``modality``)."""
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not names:
        raise ValueError("dataset.json has no 'channel_names' entry")
    return [str(names[k]) for k in sorted(names, key=int)]


def channel_index_by_name(channel_names: Sequence[str]) -> dict[str, int]:
    """Case-insensitive (stripped) name -> channel index; names shared by several channels are left
    out, so looking them up fails like an unknown name."""
    keys = [str(name).strip().lower() for name in channel_names]
    return {k: i for i, k in enumerate(keys) if keys.count(k) == 1}


def parse_channels(spec: Iterable[str], names: Sequence[str]) -> list[int]:
    """Maps user channel specifications (names, case-insensitive, or indices) to sorted indices.

    Raises ValueError naming the unknown entry and the valid choices.
    """
    lookup = channel_index_by_name(names)
    indices: set[int] = set()
    for item in spec:
        key = str(item).strip()
        if key.lower() in lookup:
            indices.add(lookup[key.lower()])
        elif key.isdigit() and int(key) < len(names):
            indices.add(int(key))
        else:
            choices = ", ".join(f"{i}={n}" for i, n in enumerate(names))
            raise ValueError(f"unknown channel {key!r}; valid channels (index=name): {choices}")
    return sorted(indices)


def mask_from_missing(num_channels: int, missing: Iterable[int]) -> ModalityMask:
    """Modality mask with the given channel indices marked missing."""
    missing = set(missing)
    return tuple(c not in missing for c in range(num_channels))


def all_modality_subsets(num_channels: int) -> list[ModalityMask]:
    """All 2^M - 1 non-empty subsets as masks: fewest modalities first, then by channel order
    (for M=4: T1, T1ce, T2, FLAIR, T1+T1ce, ..., T1+T1ce+T2+FLAIR)."""
    subsets = []
    for size in range(1, num_channels + 1):
        for present in itertools.combinations(range(num_channels), size):
            subsets.append(tuple(c in present for c in range(num_channels)))
    return subsets


def subset_name(mask: Sequence[bool], names: Sequence[str]) -> str:
    """'T1+T2' for the mask (True, False, True, False) and names (T1, T1ce, T2, FLAIR)."""
    return "+".join(n for n, present in zip(names, mask) if present)

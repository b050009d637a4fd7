"""The evaluated regions of a dataset, from its dataset.json ``labels``.

As nnU-Net: if any label entry is a list of several labels, the dataset is region-based and every
non-background entry is one region (BraTS: whole tumour (1,2,3), tumour core (2,3), enhancing (3));
otherwise every foreground label is its own region. ``ignore`` is not a region.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    name: str
    labels: tuple[int, ...]

    def mask(self, segmentation: np.ndarray) -> np.ndarray:
        """Boolean mask of the voxels whose label belongs to the region."""
        return np.isin(segmentation, self.labels)


def regions_from_dataset_json(dataset_json: dict) -> list[Region]:
    """Regions in dataset.json order (see module docstring)."""
    labels = {k: v for k, v in dataset_json["labels"].items() if k != "ignore"}
    regions = []
    for name, value in labels.items():
        values = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
        if all(v == 0 for v in values):
            continue  # background
        regions.append(Region(name, values))
    if not regions:
        raise ValueError("dataset.json 'labels' has no foreground label")
    return regions


def ignore_label_from_dataset_json(dataset_json: dict) -> int | None:
    value = dataset_json["labels"].get("ignore")
    return None if value is None else int(value)

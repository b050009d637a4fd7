"""The evaluated regions of a dataset, from its dataset.json ``labels``.

As nnU-Net: if any label entry is a list of several labels, the dataset is region-based and every
non-background entry is one region (BraTS: whole tumour (1,2,3), tumour core (2,3), enhancing (3));
otherwise every foreground label is its own region. ``ignore`` is not a region. ``--regions myops``
replaces them by the MyoPS regions (:data:`paper_conventions.MYOPS_REGIONS`). A region with
``min_predicted_voxels`` > 0 is a post-processed copy: a prediction with fewer voxels counts as empty
(the papers' ET convention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnunetv2_dmaf.evaluation.paper_conventions import MYOPS_REGIONS


@dataclass(frozen=True)
class Region:
    name: str
    labels: tuple[int, ...]
    min_predicted_voxels: int = 0

    def mask(self, segmentation: np.ndarray) -> np.ndarray:
        """Boolean mask of the voxels whose label belongs to the region."""
        return np.isin(segmentation, self.labels)

    def predicted_mask(self, segmentation: np.ndarray) -> np.ndarray:
        """:meth:`mask`, emptied if it has fewer than ``min_predicted_voxels`` voxels."""
        mask = self.mask(segmentation)
        if self.min_predicted_voxels and int(mask.sum()) < self.min_predicted_voxels:
            mask[:] = False
        return mask


def postprocessed_region(region: Region, min_voxels: int) -> Region:
    """The region scored with predictions under ``min_voxels`` voxels counted as empty."""
    return Region(f"{region.name} (post-processed)", region.labels, min_voxels)


def find_region(regions: Sequence[Region], names: Sequence[str]) -> Region | None:
    """The first region whose name (case-insensitive) is one of ``names``."""
    wanted = [n.strip().lower() for n in names]
    return next((r for r in regions if r.name.strip().lower() in wanted), None)


def myops_regions() -> list[Region]:
    """LV blood pool, RV blood pool, myocardium (normal + edema + scar), edema+scar, scar."""
    return [Region(name, labels) for name, labels in MYOPS_REGIONS]


def dataset_label_values(dataset_json: dict) -> set[int]:
    """Every label value dataset.json defines (background, labels, region members, ignore)."""
    values = set()
    for value in dataset_json["labels"].values():
        values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return values | {0}


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

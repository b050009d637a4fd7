"""Conventions of the published incomplete-modality papers (RFNet, PASSION, DMAF-Net) and their tables.

* Modality order of the published masks: BraTS ``[flair, t1ce, t1, t2]``, MyoPS ``[C0, DE, T2]``;
  dataset channels are matched BY NAME through :data:`MODALITY_ALIASES` (case-insensitive), so
  ``T1ce``/``T1c``/``t1gd`` (MSD) all mean t1ce, ``FLAIR``/``T2f`` mean flair, and so on.
* Subset order of their per-subset tables: the mask ids 0..2^M-2 of the published split tables
  (``mask_id`` column; RFNet's ``masks`` list), e.g. BraTS: T2, T1ce, T1, FLAIR, T1ce+T2, ...,
  all four; MyoPS: T2, DE, C0, DE+T2, C0+DE, C0+T2, all three.
* ET post-processing: an enhancing-tumour prediction under :data:`ET_POSTPROCESS_VOXELS` voxels
  counts as empty (RFNet's convention, relabelled to necrosis, so only ET changes).
* MyoPS regions (nnU-Net labels of ``nnUNetv2_dmaf_convert_myops``): LV blood pool (2), RV blood pool
  (3), myocardium = normal + edema + scar (1, 4, 5), edema+scar (4, 5), scar (5).
"""
from __future__ import annotations

from typing import Sequence

from nnunetv2_dmaf.modalities import ModalityMask

#: mask order of the published BraTS tables
BRATS_TABLE_MODALITIES: tuple[str, ...] = ("flair", "t1ce", "t1", "t2")
#: mask order of the published MyoPS 2020 long-tail tables
MYOPS_TABLE_MODALITIES: tuple[str, ...] = ("c0", "de", "t2")
#: dataset.json channel names (lower case) accepted for a table modality
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2f"), "t1ce": ("t1ce", "t1c", "t1gd"), "t1": ("t1", "t1n", "t1w"), "t2": ("t2", "t2w"),
    "c0": ("c0", "bssfp"), "de": ("de", "lge")}
#: mask id -> mask (in the table's modality order), as in the published tables' ``mask_id`` column
PAPER_MASKS: dict[tuple[str, ...], tuple[tuple[bool, ...], ...]] = {
    BRATS_TABLE_MODALITIES: (
        (False, False, False, True), (False, True, False, False), (False, False, True, False),
        (True, False, False, False), (False, True, False, True), (False, True, True, False),
        (True, False, True, False), (False, False, True, True), (True, False, False, True),
        (True, True, False, False), (True, True, True, False), (True, False, True, True),
        (True, True, False, True), (False, True, True, True), (True, True, True, True)),
    MYOPS_TABLE_MODALITIES: (
        (False, False, True), (False, True, False), (True, False, False), (False, True, True),
        (True, True, False), (True, False, True), (True, True, True)),
}
ET_POSTPROCESS_VOXELS = 500
#: region names (lower case) recognised as the enhancing tumour
ET_REGION_NAMES: tuple[str, ...] = ("enhancing tumor", "enhancing tumour", "enhancing", "et")
#: (name, nnU-Net labels) of the MyoPS evaluation regions
MYOPS_REGIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("LV blood pool", (2,)), ("RV blood pool", (3,)), ("myocardium", (1, 4, 5)), ("edema+scar", (4, 5)),
    ("scar", (5,)))


def table_modality_index(channel_names: Sequence[str], table_modalities: Sequence[str]) -> list[int] | None:
    """For each dataset channel the index of its modality in ``table_modalities`` (by name through
    :data:`MODALITY_ALIASES`), or None if the channels are not exactly those modalities."""
    modality_of = {alias: m for m in table_modalities for alias in MODALITY_ALIASES.get(m, (m,))}
    mapped = [modality_of.get(str(n).strip().lower()) for n in channel_names]
    if None in mapped or sorted(mapped) != sorted(table_modalities):
        return None
    return [list(table_modalities).index(m) for m in mapped]


def paper_subset_order(channel_names: Sequence[str]) -> list[ModalityMask] | None:
    """The published papers' subset order as masks in the dataset's channel order, or None when the
    channels are not those of a published protocol."""
    for modalities, masks in PAPER_MASKS.items():
        index = table_modality_index(channel_names, modalities)
        if index is not None:
            return [tuple(mask[i] for i in index) for mask in masks]
    return None

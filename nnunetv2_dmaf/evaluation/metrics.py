"""Dice and HD95 for binary masks, with the BraTS conventions for empty masks.

* Dice: 2|P∩R| / (|P|+|R|); both empty -> 1 (BraTS rule), exactly one empty -> 0.
* HD95 (mm): 95th percentile (numpy's linear interpolation) of the symmetric surface distances,
  i.e. of the pooled distances from every surface voxel of P to the surface of R and from every
  surface voxel of R to the surface of P. Surface voxels: mask voxels with a 6-neighbour (face
  connectivity) outside the mask or outside the image. Distances use the voxel spacing (Euclidean
  distance transform). Both empty -> 0; exactly one empty -> a penalty: ``nnUNetv2_dmaf_evaluate_subsets``
  passes each case's image diagonal in mm (:func:`image_diagonal_mm`; 373.13 mm for the 240x240x155
  1 mm BraTS geometry); :func:`hd95`'s own default is :data:`BRATS_HD95_PENALTY_MM`, the BraTS
  challenge constant. medpy 0.5.2's ``hd95`` pools both directions the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

#: sqrt(240^2 + 240^2 + 155^2) = 373.1287 mm: BraTS' HD95 for a region empty in exactly one mask
BRATS_HD95_PENALTY_MM = 373.13


def _check(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    return prediction, reference


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    prediction, reference = _check(prediction, reference)
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image diagonal in mm (shape and spacing in the same axis order)."""
    return float(np.sqrt(np.sum((np.asarray(shape, float) * np.asarray(spacing, float)) ** 2)))


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask (voxels with a face neighbour outside the mask or the image)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_to_union(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crops both masks to their joint bounding box plus one voxel (distances are unchanged: every
    surface voxel lies inside, and the margin keeps inner borders from counting as image border)."""
    coords = np.argwhere(prediction | reference)
    low = np.maximum(coords.min(0) - 1, 0)
    high = np.minimum(coords.max(0) + 2, prediction.shape)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    return prediction[box], reference[box]


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
         empty_penalty: float = BRATS_HD95_PENALTY_MM) -> float:
    """95th percentile symmetric surface distance in mm (see module docstring).

    Args:
        spacing: voxel size per array axis (nnU-Net's ``properties['spacing']`` order).
        empty_penalty: value returned when exactly one mask is empty.
    """
    prediction, reference = _check(prediction, reference)
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {prediction.ndim}D mask")
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_prediction and not has_reference:
        return 0.0
    if has_prediction != has_reference:
        return float(empty_penalty)
    keep = [axis for axis, size in enumerate(prediction.shape) if size > 1] or [0]  # 2D data: [1, X, Y]
    spacing = [float(spacing[axis]) for axis in keep]
    prediction = prediction.reshape([prediction.shape[a] for a in keep])
    reference = reference.reshape([reference.shape[a] for a in keep])
    prediction, reference = _crop_to_union(prediction, reference)
    surface_p, surface_r = surface(prediction), surface(reference)
    to_reference = ndimage.distance_transform_edt(~surface_r, sampling=spacing)[surface_p]
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_r]
    return float(np.percentile(np.concatenate([to_reference, to_prediction]), 95))

"""BraTS-like benchmark cases built from real brain anatomy (the quality benchmark's data).

Anatomy: the MNI ICBM152 2009 (nonlinear symmetric, 1 mm) T1 template and its grey/white-matter
probability maps, read from the files the ``nilearn`` wheel ships in ``nilearn/datasets/data/``
(``pip install ".[benchmark]"``; nilearn itself is never imported). The T1 template is skull-stripped:
the brain is where it is nonzero; CSF = brain - GM - WM.

Per case (all random draws from ``numpy.random.SeedSequence([seed, case_index])``, so a case depends
only on the dataset seed and its index):

* geometry: random affine (rotation +-8 deg, scale 0.92-1.08 per axis, shift +-3 mm) plus a smooth
  random displacement field (control points every ~32 mm, std 3 mm), resampled onto an isotropic
  grid of ``spacing`` mm covering the brain (the template maps are low-pass filtered first);
* a tumour in white matter: an irregular ellipsoid (radii 20-32 mm, smooth boundary noise) of edema
  (label 1, confined to GM/WM, it does not replace CSF), inside it a core (45-65 % of the radius) that
  is an enhancing rim (label 3, at least 5 mm and 1.5 voxels thick) around necrosis (label 2); every fourth case
  (``case_index % 4 == 3``) has no enhancing tumour (the whole core is label 2);
* images: tissue-class mixtures (partial volume from the probability maps) with the mean intensities
  of ``TISSUE_INTENSITIES`` (+-4 % per case and class), a smooth multiplicative bias field per channel
  (std 12 % in log space), a random global scale per channel, Gaussian noise (3-6 % of the scale);
  zero outside the brain, as in skull-stripped BraTS.

Each modality carries information the others lack: the enhancing rim differs from edema only in T1ce;
edema extent is clear in FLAIR and T2 (faint in T1/T1ce); necrosis is dark in T1/T1ce and close to the
rest of the tumour in T2/FLAIR; CSF is bright in T2 and dark in FLAIR and T1.

Arrays are in the template's voxel order (x, y, z) (RAS); labels and channels follow the BraTS
converter: channels T1, T1ce, T2, FLAIR; labels 1 edema, 2 necrosis / non-enhancing core,
3 enhancing; regions WT (1, 2, 3), TC (2, 3), ET (3).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunetv2_dmaf.channel_files import channel_file_name
from nnunetv2_dmaf.dataset_conversion.case_conversion import write_dataset_json
from nnunetv2_dmaf.dataset_conversion.convert_brats import CHANNEL_NAMES, LABELS, REGIONS_CLASS_ORDER
from nnunetv2_dmaf.dataset_conversion.output_folders import staged_folder

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "edema", "necrosis", "enhancing")
#: mean intensity (relative to the channel's scale) per channel (CHANNEL_NAMES) and tissue (TISSUES)
TISSUE_INTENSITIES: dict[str, tuple[float, ...]] = {
    #         csf   gm    wm    edema necro enhancing
    "T1":    (0.30, 0.62, 0.95, 0.88, 0.35, 0.86),  # rim iso to edema; necrosis dark; edema faint
    "T1ce":  (0.30, 0.62, 0.95, 0.88, 0.35, 1.60),  # the only channel with the enhancing rim
    "T2":    (1.60, 0.90, 0.62, 1.30, 1.38, 1.15),  # CSF and whole tumour bright
    "FLAIR": (0.22, 0.85, 0.68, 1.45, 1.15, 1.28),  # CSF dark, whole tumour bright
}
EDEMA, NECROSIS, ENHANCING = 1, 2, 3
NO_ENHANCING_EVERY = 4  # case_index % 4 == 3: no enhancing tumour
MARGIN_MM = 6.0


class TemplateNotFoundError(FileNotFoundError):
    """The nilearn package (benchmark extra) or its MNI template files are not installed."""


def template_folder() -> Path:
    """``nilearn/datasets/data`` of the installed nilearn wheel, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateNotFoundError("the MNI ICBM152 templates come with nilearn: pip install \".[benchmark]\"")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [f for f in TEMPLATE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise TemplateNotFoundError(f"{folder}: MNI template file(s) not found: {', '.join(missing)}")
    return folder


@dataclass(frozen=True)
class Anatomy:
    """Template probability maps, low-pass filtered for ``spacing``; all [X, Y, Z] float32 on the 1 mm grid."""
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    bbox_min: np.ndarray  # [3] first brain voxel (1 mm template voxels)
    bbox_max: np.ndarray  # [3] last brain voxel


@functools.lru_cache(maxsize=2)
def load_anatomy(spacing: float) -> Anatomy:
    """Reads the templates (1 mm isotropic) and smooths them with sigma = 0.4 * spacing mm (anti-aliasing)."""
    import nibabel as nib
    folder = template_folder()
    maps = {}
    for key, name in TEMPLATE_FILES.items():
        image = nib.load(str(folder / name))
        if not np.allclose(image.header.get_zooms()[:3], 1.0):
            raise ValueError(f"{folder / name}: expected 1 mm voxels, got {image.header.get_zooms()}")
        maps[key] = np.asarray(image.dataobj, dtype=np.float32)
    brain = (maps["t1"] > 0).astype(np.float32)
    gm = np.clip(maps["gm"] / 255.0, 0, 1) * brain
    wm = np.clip(maps["wm"] / 255.0, 0, 1) * brain
    voxels = np.argwhere(brain > 0)
    sigma = 0.4 * spacing
    return Anatomy(*(ndimage.gaussian_filter(m, sigma) for m in (brain, gm, wm)),
                   bbox_min=voxels.min(0), bbox_max=voxels.max(0))


def output_shape(spacing: float) -> tuple[int, int, int]:
    """Grid of the generated cases: the template's brain bounding box plus 6 mm, at ``spacing`` mm."""
    anatomy = load_anatomy(spacing)
    extent = anatomy.bbox_max - anatomy.bbox_min + 1 + 2 * MARGIN_MM
    return tuple(int(np.ceil(e / spacing)) for e in extent)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], control_mm: float, spacing: float,
                  std: float) -> np.ndarray:
    """Random smooth field [*shape]: normal control points every ``control_mm``, cubic upsampling."""
    control = tuple(max(2, int(round(s * spacing / control_mm)) + 1) for s in shape)
    coarse = rng.normal(0.0, std, control)
    return ndimage.zoom(coarse, [s / c for s, c in zip(shape, control)], order=3, mode="nearest")[
        tuple(slice(0, s) for s in shape)].astype(np.float32)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix from angles (radians) about x, y, z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _deformed_anatomy(anatomy: Anatomy, shape: tuple[int, int, int], spacing: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain, GM, WM probabilities [*shape] after a random affine + smooth deformation."""
    center = (anatomy.bbox_min + anatomy.bbox_max) / 2.0
    grid = np.stack(np.meshgrid(*[(np.arange(s) - (s - 1) / 2.0) * spacing for s in shape], indexing="ij"))
    matrix = _rotation(np.deg2rad(rng.uniform(-8, 8, 3))) @ np.diag(1.0 / rng.uniform(0.92, 1.08, 3))
    source = np.einsum("ij,j...->i...", matrix, grid)
    source += (center + rng.uniform(-3, 3, 3))[:, None, None, None]
    for axis in range(3):
        source[axis] += _smooth_field(rng, shape, 32.0, spacing, 3.0)
    return tuple(ndimage.map_coordinates(m, source, order=1, mode="constant", cval=0.0).astype(np.float32)
                 for m in (anatomy.brain, anatomy.gm, anatomy.wm))


def _tumour_labels(brain: np.ndarray, csf: np.ndarray, wm: np.ndarray, spacing: float,
                   rng: np.random.Generator, with_enhancing: bool) -> np.ndarray:
    """Labels [*shape] uint8: edema 1, necrosis 2, enhancing 3, around a centre in white matter."""
    shape = brain.shape
    inside = ndimage.distance_transform_edt(brain > 0.5) * spacing
    candidates = np.argwhere((wm > 0.6) & (inside > 20.0))
    if len(candidates) == 0:  # coarse grids: the deepest white-matter voxel
        candidates = np.argwhere((wm > 0.5) & (inside >= inside[wm > 0.5].max()))
    center = candidates[rng.integers(len(candidates))] * spacing
    radii = rng.uniform(20.0, 32.0, 3)
    grid = np.stack(np.meshgrid(*[np.arange(s) * spacing for s in shape], indexing="ij"))
    local = np.einsum("ij,j...->i...", _rotation(rng.uniform(0, np.pi, 3)).T, grid - center[:, None, None, None])
    distance = np.sqrt(sum((local[i] / radii[i]) ** 2 for i in range(3)))
    distance *= 1.0 + _smooth_field(rng, shape, 24.0, spacing, 0.12)  # irregular boundary
    core_fraction = rng.uniform(0.45, 0.65)
    rim_mm = max(5.0, 1.5 * spacing, core_fraction * radii.mean() * rng.uniform(0.35, 0.55))
    necrosis_fraction = max(0.0, core_fraction - rim_mm / radii.mean())
    in_brain = brain > 0.5
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(distance < 1.0) & in_brain & (csf < 0.5)] = EDEMA
    core = (distance < core_fraction) & in_brain
    labels[core] = ENHANCING if with_enhancing else NECROSIS
    labels[core & (distance < necrosis_fraction)] = NECROSIS
    return labels


def make_case(spacing: float = 3.0, seed: int = 0, case_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One case: images [4, X, Y, Z] float32 (T1, T1ce, T2, FLAIR), labels [X, Y, Z] uint8.

    Depends only on (spacing, seed, case_index); the shape is ``output_shape(spacing)``.
    """
    anatomy = load_anatomy(spacing)
    shape = output_shape(spacing)
    rng = np.random.default_rng(np.random.SeedSequence([seed, case_index]))
    brain, gm, wm = _deformed_anatomy(anatomy, shape, spacing, rng)
    tissue_sum = np.maximum(gm + wm, brain)
    fractions = np.stack([np.clip(brain - gm - wm, 0, None), gm, wm]) / np.maximum(tissue_sum, 1e-6)
    labels = _tumour_labels(brain, fractions[0], fractions[2], spacing, rng,
                            with_enhancing=case_index % NO_ENHANCING_EVERY != NO_ENHANCING_EVERY - 1)
    # partial volume at the tumour boundaries: one-hot tumour classes smoothed by half a voxel
    tumour = np.stack([ndimage.gaussian_filter((labels == k).astype(np.float32), 0.5)
                       for k in (EDEMA, NECROSIS, ENHANCING)])
    composition = np.concatenate([fractions * (1.0 - tumour.sum(0)), tumour])  # [6, *shape] over TISSUES
    in_brain = brain > 0.5
    images = np.zeros((len(CHANNEL_NAMES),) + shape, dtype=np.float32)
    for c, name in enumerate(CHANNEL_NAMES):
        means = np.asarray(TISSUE_INTENSITIES[name]) * (1.0 + rng.normal(0.0, 0.04, len(TISSUES)))
        scale = rng.uniform(300.0, 700.0)
        image = np.tensordot(means, composition, axes=1) * scale
        image *= np.exp(_smooth_field(rng, shape, 60.0, spacing, 0.12))
        image += rng.normal(0.0, rng.uniform(0.03, 0.06) * scale, shape)
        images[c] = np.where(in_brain, np.clip(image, 1e-3, None), 0.0)
    labels[~in_brain] = 0
    return images, labels


def _write_nifti(array: np.ndarray, path: Path, spacing: float) -> None:
    """[X, Y, Z] array -> NIfTI with isotropic ``spacing`` (SimpleITK wants [Z, Y, X])."""
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing((spacing,) * 3)
    sitk.WriteImage(image, str(path), useCompression=True)


def case_ids(dataset_name: str, num_training: int, num_test: int) -> tuple[list[str], list[str]]:
    """Training and test case ids: ``<name>_000`` ... (test cases continue the numbering)."""
    ids = [f"{dataset_name}_{i:03d}" for i in range(num_training + num_test)]
    return ids[:num_training], ids[num_training:]


def generate_dataset(raw_root: str | os.PathLike, dataset_id: int, dataset_name: str, num_training: int,
                     num_test: int, spacing: float = 3.0, seed: int = 0, overwrite: bool = False) -> Path:
    """Writes ``raw_root/DatasetXXX_Name`` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json), all or
    nothing. Case ``<name>_NNN`` is ``make_case(spacing, seed, NNN)``. Returns the dataset folder."""
    if num_training < 2 or num_test < 0:
        raise ValueError(f"need >= 2 training and >= 0 test cases, got {num_training} and {num_test}")
    if not 1.0 <= spacing <= 12.0:
        raise ValueError(f"spacing must be within 1-12 mm, got {spacing}")
    target = Path(raw_root) / f"Dataset{dataset_id:03d}_{dataset_name}"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    train, test = case_ids(dataset_name, num_training, num_test)
    with staged_folder(target, overwrite) as staging:
        for split, ids in (("Tr", train), ("Ts", test)):
            (staging / f"images{split}").mkdir()
            (staging / f"labels{split}").mkdir()
            for case_id in ids:
                images, labels = make_case(spacing, seed, int(case_id.rsplit("_", 1)[1]))
                for c in range(len(CHANNEL_NAMES)):
                    _write_nifti(images[c], staging / f"images{split}" / channel_file_name(case_id, c, ".nii.gz"), spacing)
                _write_nifti(labels, staging / f"labels{split}" / f"{case_id}.nii.gz", spacing)
        write_dataset_json(staging, CHANNEL_NAMES, LABELS, num_training, REGIONS_CLASS_ORDER,
                           dataset_name=target.name,
                           description=f"BraTS-like cases from the MNI ICBM152 2009 anatomy "
                                       f"(nnunetv2_dmaf.anatomical_phantom, seed {seed}, {spacing:g} mm)")
    return target

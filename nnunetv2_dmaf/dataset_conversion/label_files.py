"""Label images: value checks, remapping to nnU-Net's consecutive labels (and back), writing with
the image geometry, and whole label folders converted all or nothing."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import SimpleITK as sitk

from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError, ConversionUsageError, format_list
from nnunetv2_dmaf.dataset_conversion.image_files import (DEFAULT_GEOMETRY_TOLERANCE, HasGeometry,
                                                          check_same_geometry, read_image)
from nnunetv2_dmaf.dataset_conversion.output_folders import staged_files
from nnunetv2_dmaf.dataset_conversion.parallel_tasks import run_tasks


def label_values(image: sitk.Image, path: Path, allowed: Iterable[int]) -> np.ndarray:
    """Voxel array of a label image after checking every value is one of ``allowed``."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"{path}: label image has {image.GetNumberOfComponentsPerPixel()} components, "
                              f"expected 1")
    array = sitk.GetArrayFromImage(image)
    allowed = sorted(set(int(a) for a in allowed))
    values = np.unique(array)
    bad = [v for v in values.tolist() if not (float(v).is_integer() and int(v) in allowed)]
    if bad:
        shown = ", ".join(f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in bad[:10])
        raise ConversionError(f"{path}: unexpected label values {shown}; expected only {allowed}")
    return array


def remap_labels(array: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """uint8 (uint16 if a target value exceeds 255) array with ``mapping[v]`` for every voxel value
    ``v`` (all values must be keys)."""
    out = np.zeros(array.shape, dtype=label_dtype(mapping.values()))
    for src, dst in mapping.items():
        out[array == src] = dst
    return out


def label_dtype(values: Iterable[int]) -> type:
    """uint8 if every value fits, else uint16 (MyoPS' 2221)."""
    return np.uint8 if max(values) <= 255 else np.uint16


def write_label(array: np.ndarray, geometry_from: sitk.Image, dst: Path) -> None:
    """Writes ``array`` (uint8, or uint16 if a value exceeds 255) with the geometry (spacing, origin,
    direction) of ``geometry_from``."""
    dtype = label_dtype([int(array.max(initial=0))])
    image = sitk.GetImageFromArray(array.astype(dtype, copy=False))
    image.CopyInformation(geometry_from)
    sitk.WriteImage(image, str(dst), True)


def convert_label_file(src: Path, dst: Path, mapping: Mapping[int, int],
                       reference: HasGeometry | None = None, reference_path: Path | None = None,
                       tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> None:
    """Reads a label file, checks values (keys of ``mapping``) and geometry, writes remapped uint8."""
    image = read_image(src)
    if reference is not None:
        check_same_geometry(image, src, reference, reference_path, tolerance)
    write_label(remap_labels(label_values(image, src, mapping.keys()), mapping), image, dst)


def check_label_folders(input_folder: Path, output_folder: Path) -> None:
    """The path checks of :func:`convert_label_folder` (ConversionUsageError naming the folder), for
    commands that read something from ``input_folder`` before converting it."""
    if not input_folder.is_dir():
        raise ConversionUsageError(f"input folder not found: {input_folder}")
    if output_folder.resolve() == input_folder.resolve():
        raise ConversionUsageError("the output folder must differ from the input folder (inputs are never "
                                   "overwritten)")
    if output_folder.exists() and not output_folder.is_dir():
        raise ConversionUsageError(f"output {output_folder} exists and is not a folder")
    if not output_folder.parent.is_dir():
        raise ConversionUsageError(f"the folder of the output, {output_folder.parent}, does not exist")


def convert_label_folder(input_folder: Path, output_folder: Path, mapping: Mapping[int, int],
                         overwrite: bool = False, num_processes: int = 1) -> list[Path]:
    """Writes every ``*.nii.gz``/``*.nii`` of ``input_folder`` with ``mapping`` applied (same name and
    geometry; values other than the mapping's keys are an error naming the file) into
    ``output_folder``, all files or none; returns the written files. Inputs are never modified."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    check_label_folders(input_folder, output_folder)
    files = sorted(p for p in input_folder.iterdir() if p.is_file() and p.name.lower().endswith((".nii.gz", ".nii")))
    if not files:
        raise ConversionError(f"no .nii.gz/.nii files in {input_folder}")
    existing = [output_folder / f.name for f in files if (output_folder / f.name).exists()]
    if existing and not overwrite:
        raise ConversionError(f"{len(existing)} output file(s) exist; pass --overwrite to replace them:"
                              f"{format_list(existing)}")
    with staged_files(output_folder) as staging:
        run_tasks(convert_label_file, [(f, staging / f.name, mapping) for f in files], num_processes)
    return [output_folder / f.name for f in files]

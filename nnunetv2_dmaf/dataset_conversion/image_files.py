"""Validated image reading (missing, truncated or unreadable files raise ConversionError naming them),
geometry checks between the channels of a case, and image copies."""
from __future__ import annotations

import gzip
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Protocol, Sequence

import nibabel
import numpy as np
import SimpleITK as sitk

from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError


FILE_ENDING = ".nii.gz"
#: absolute tolerance (mm for the origin, unitless for direction cosines) between channels/labels
DEFAULT_GEOMETRY_TOLERANCE = 1e-4


class HasGeometry(Protocol):
    """What the geometry checks read: a SimpleITK image or ImageFileReader."""
    def GetSize(self) -> tuple: ...
    def GetSpacing(self) -> tuple: ...
    def GetOrigin(self) -> tuple: ...
    def GetDirection(self) -> tuple: ...


def check_nifti_complete(path: Path) -> None:
    """Raises if a NIfTI file has an unreadable header, broken gzip data or too few data bytes
    (SimpleITK silently reads truncated files)."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    try:
        with warnings.catch_warnings():  # nibabel's header-quirk warnings are noise here
            warnings.simplefilter("ignore")
            header = nibabel.load(str(path)).header
        expected = int(header.get_data_offset()) + \
            int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
    except Exception as e:  # nibabel raises various types for garbage input
        raise ConversionError(f"cannot read {path}: not a valid NIfTI file ({type(e).__name__}: {e})") from None
    if name.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    size += len(chunk)
        except (OSError, EOFError, zlib.error) as e:
            raise ConversionError(f"cannot read {path}: corrupt or truncated gzip data ({e})") from None
    else:
        size = path.stat().st_size
    if size < expected:
        raise ConversionError(f"cannot read {path}: truncated NIfTI file ({size} bytes, expected {expected})")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ConversionError(f"missing file: {path}")


def read_header(path: Path) -> sitk.ImageFileReader:
    """Geometry of a complete, readable image without loading its voxels."""
    _require_file(path)
    check_nifti_complete(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ConversionError(f"cannot read {path}: {_sitk_message(e)}") from None
    return reader


def read_image(path: Path) -> sitk.Image:
    """The image at ``path``; ConversionError naming it if missing, truncated or unreadable."""
    _require_file(path)
    check_nifti_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ConversionError(f"cannot read {path}: {_sitk_message(e)}") from None


def _sitk_message(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else "unreadable image"


def check_same_geometry(image: HasGeometry, path: Path, reference: HasGeometry, reference_path: Path,
                        tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> None:
    """Same size; spacing equal as strictly as nnU-Net requires (np.allclose defaults); origin and
    direction equal within ``tolerance`` (absolute) + 1e-5 (relative)."""
    problems = []
    if tuple(image.GetSize()) != tuple(reference.GetSize()):
        problems.append(f"size {image.GetSize()} vs {reference.GetSize()}")
    else:
        checks = (("spacing", image.GetSpacing(), reference.GetSpacing(), 1e-8),
                  ("origin", image.GetOrigin(), reference.GetOrigin(), tolerance),
                  ("direction", image.GetDirection(), reference.GetDirection(), tolerance))
        for what, a, b, atol in checks:
            if not np.allclose(a, b, rtol=1e-5, atol=atol):
                problems.append(f"{what} {_fmt(a)} vs {_fmt(b)}")
    if problems:
        raise ConversionError(f"{path}: geometry differs from {reference_path}: {'; '.join(problems)}")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def copy_image(src: Path, dst: Path) -> None:
    """Writes an image already validated by ``read_header`` as ``dst`` (.nii.gz): a byte copy for
    .nii.gz sources (data, dtype and header unchanged), otherwise a SimpleITK read/write."""
    if src.name.lower().endswith(".nii.gz"):
        shutil.copyfile(src, dst)
    else:
        sitk.WriteImage(read_image(src), str(dst), True)

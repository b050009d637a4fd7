"""Is an image or prediction file complete? Checks that catch what image readers silently accept.

SimpleITK reads a truncated ``.nii.gz`` or ``.nii`` without complaint: the missing voxels come back
as zeros. :func:`image_file_problem` therefore checks, before a file is read:

* gzip files (any ``*.gz``): the whole compressed stream decompresses (no truncated/corrupt data);
* NIfTI (``.nii``/``.nii.gz``): the header is valid and the data bytes it announces are all there;
  floating-point data hold no NaN/infinite voxels (SimpleITK reads NaN as 0 without a word).

:func:`output_file_problem` checks the files nnU-Net's export writes (segmentation, ``.npz``,
``.pkl``) so that ``--continue_prediction`` never takes a cut-off file for a finished case.
"""
from __future__ import annotations

import gzip
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from nnunetv2_dmaf.user_errors import one_line

#: file endings of nnU-Net's image readers (used to recognise channel files with a wrong ending)
IMAGE_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".png", ".bmp",
                      ".tif", ".tiff", ".jpg", ".jpeg")
_CHUNK = 1 << 22


def image_file_ending(name: str) -> str | None:
    """The image file ending of ``name`` (longest match, case-insensitive), or None."""
    lower = name.lower()
    matches = [e for e in IMAGE_FILE_ENDINGS if lower.endswith(e)]
    return max(matches, key=len) if matches else None


def _decompressed_size(path: Path) -> int:
    size = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            size += len(chunk)
    return size


def _load_nifti(path: Path):
    import nibabel  # only NIfTI files need it

    with warnings.catch_warnings():  # nibabel's header-quirk warnings are noise here
        warnings.simplefilter("ignore")
        return nibabel.load(str(path))


def _nifti_expected_size(header) -> int:
    """Bytes a NIfTI file must hold (data offset + voxels x item size), from its header."""
    shape = header.get_data_shape()
    return int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize


def _nifti_non_finite(image) -> int:
    """Number of NaN/infinite voxels of a floating-point NIfTI image (0 for integer data)."""
    if image.header.get_data_dtype().kind != "f":
        return 0
    data = np.asanyarray(image.dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete image file (one line), or None if no problem is found.

    Other formats are left to their reader (SimpleITK raises for truncated .mha and .nrrd files)."""
    path = Path(path)
    name = path.name.lower()
    try:
        size = path.stat().st_size
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    if name.endswith(".gz"):
        try:
            size = _decompressed_size(path)
        except (OSError, EOFError, zlib.error) as error:
            return f"corrupt or truncated gzip data ({one_line(error)})"
    if name.endswith((".nii", ".nii.gz")):
        try:
            image = _load_nifti(path)
            expected = _nifti_expected_size(image.header)
        except Exception as error:  # nibabel raises many types for garbage input
            return f"not a valid NIfTI file ({type(error).__name__}: {one_line(error, 200)})"
        if size < expected:
            return f"truncated NIfTI file ({size} data bytes, the header announces {expected})"
        non_finite = _nifti_non_finite(image)
        if non_finite:
            return f"{non_finite} voxel(s) are NaN or infinite"
    return None


def zip_archive_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete zip archive (``.npz``, torch checkpoints), or None; reads every
    member once to check its CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        return f"not a complete zip archive ({error})"
    return None if bad is None else f"corrupt member {bad} in the zip archive"


def output_file_problem(path: str | os.PathLike) -> str | None:
    """Why an existing prediction output is incomplete (one line), or None.

    Segmentations are checked as by :func:`image_file_problem`; ``.npz`` must be a readable zip
    archive with intact members; ``.pkl`` must end with pickle's STOP opcode (a cut-off pickle does not).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".npz"):
        return zip_archive_problem(path)
    if name.endswith(".pkl"):
        try:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                last = f.read(1)
        except OSError as error:
            return f"empty or unreadable pickle ({error.strerror})"
        return None if last == b"." else "truncated pickle (no STOP opcode at the end)"
    return image_file_problem(path)

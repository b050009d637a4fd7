"""Finding prediction cases in a folder and loading them with absent (missing) channels.

nnU-Net's naming: one file per channel, ``CASE_XXXX<file_ending>`` with XXXX the 4-digit channel
index from dataset.json. Here a case may lack some channel files: those channels are missing and
are filled with zeros (same geometry as the present channels). Every file is verified before use:
problems that make a case unusable (channel index out of range, a truncated/corrupt/empty file,
non-finite voxels, an image of the wrong dimensionality for the model, shape/spacing/origin/direction
differing between the case's files, a file that cannot be read as an image, a file with several
channels) raise :class:`CaseInputError` naming the case and the file, so that a caller can report it
and go on with the other cases. Files in the folder that belong to no case (no ``_XXXX`` suffix)
are :class:`StrayFileError` s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np

from nnunetv2_dmaf.channel_files import CASE_FILE_PATTERN
from nnunetv2_dmaf.inference.file_integrity import image_file_ending, image_file_problem
from nnunetv2_dmaf.modalities import ModalityMask
from nnunetv2_dmaf.user_errors import one_line

#: absolute tolerances for comparing the geometry of a case's channel files
SPACING_TOLERANCE = 1e-4
GEOMETRY_TOLERANCE = 1e-3


class CaseInputError(Exception):
    """Unusable input for one case; ``str()`` names the case and the offending file."""

    def __init__(self, case_id: str, file: str | Path | None, reason: str):
        self.case_id, self.file, self.reason = case_id, None if file is None else str(file), reason
        where = f"case {case_id!r}" + (f", file {self.file}" if self.file else "")
        super().__init__(f"{where}: {reason}")


class StrayFileError(CaseInputError):
    """A file of the input folder that is no channel file of any case (reported, never predicted);
    ``case_id`` is the file name's stem, ``str()`` names only the file."""

    def __init__(self, file: str | Path, stem: str, reason: str):
        super().__init__(stem, file, reason)
        Exception.__init__(self, f"file {file}: {reason}")


@dataclass
class CaseFiles:
    """The channel files found for one case: channel index -> path."""
    case_id: str
    files: dict[int, Path] = field(default_factory=dict)


@dataclass
class LoadedCase:
    """A case ready for nnU-Net preprocessing.

    data: [M, *S] float32 in the reader's axis order, zeros for missing channels.
    properties: the reader's properties of the first present channel (geometry for export).
    mask: True = channel present. files: the files actually used.
    """
    case_id: str
    data: np.ndarray
    properties: dict
    mask: ModalityMask
    files: dict[int, Path]


def discover_cases(folder: str | Path, file_ending: str) -> tuple[list[CaseFiles], list[CaseInputError]]:
    """Groups ``CASE_XXXX<file_ending>`` files of ``folder`` by case id (sorted).

    Non-image and hidden files are ignored, as by nnU-Net. Errors: :class:`StrayFileError` for files
    with the right ending but without a ``_XXXX`` channel suffix; :class:`CaseInputError` for a
    ``CASE_XXXX`` file with another image ending (e.g. ``.nii`` for a ``.nii.gz`` model): its case is
    left out of the returned cases (the channel would otherwise silently count as missing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist or is not a folder")
    cases: dict[str, CaseFiles] = {}
    errors: list[CaseInputError] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue  # hidden files (.DS_Store, editors' temporaries) and folders
        if not path.name.endswith(file_ending):
            other = image_file_ending(path.name)
            match = CASE_FILE_PATTERN.fullmatch(path.name[:-len(other)]) if other else None
            if match is not None:
                errors.append(CaseInputError(match["case"], path, f"file ending {other} but the model reads "
                                                                  f"{file_ending} files; convert it (the channel "
                                                                  f"would otherwise silently count as missing)"))
            continue
        stem = path.name[:-len(file_ending)]
        match = CASE_FILE_PATTERN.fullmatch(stem)
        if match is None:
            errors.append(StrayFileError(path, stem, f"not a channel file: the name does not follow nnU-Net's "
                                                     f"CASE_XXXX{file_ending} naming (XXXX = 4-digit channel index); "
                                                     f"ignored"))
            continue
        case = cases.setdefault(match["case"], CaseFiles(match["case"]))
        case.files[int(match["channel"])] = path
    failed = {e.case_id for e in errors if not isinstance(e, StrayFileError)}
    return [cases[k] for k in sorted(cases) if k not in failed], errors


def _geometry_mismatch(reference: dict, properties: dict) -> str | None:
    """Names the first geometry entry (spacing, origin, direction, affine...) that differs."""
    if not np.allclose(np.asarray(reference["spacing"], float), np.asarray(properties["spacing"], float),
                       rtol=0, atol=SPACING_TOLERANCE):
        return (f"spacing {tuple(float(v) for v in properties['spacing'])} differs from "
                f"{tuple(float(v) for v in reference['spacing'])}")
    for key, ref_stuff in reference.items():  # reader specific, e.g. sitk_stuff, nibabel_stuff
        if not key.endswith("_stuff") or not isinstance(ref_stuff, dict):
            continue
        for name, ref_value in ref_stuff.items():
            value = properties.get(key, {}).get(name)
            try:
                a, b = np.asarray(ref_value, float), np.asarray(value, float)
            except (TypeError, ValueError):
                continue
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=GEOMETRY_TOLERANCE):
                return f"{name} {np.round(b, 4).tolist()} differs from {np.round(a, 4).tolist()}"
    return None


def image_dimensionality(shape: Sequence[int]) -> int:
    """2 or 3: spatial axes with more than one voxel of a reader's [C, *S] array (at least 2); a
    single-slice volume counts as 2D, as nnU-Net reads 2D files as [C, 1, Y, X]."""
    return max(2, sum(1 for s in shape[1:] if s > 1))


def dimensionality_problem(shape: Sequence[int], allowed_dims: Collection[int], what: str) -> str | None:
    """One line if an image of reader shape [C, *S] has a dimensionality not in ``allowed_dims``."""
    dims = image_dimensionality(shape)
    if dims in allowed_dims:
        return None
    return (f"{dims}D image (shape {tuple(int(s) for s in shape[1:])}) but {what} needs "
            f"{' or '.join(f'{d}D' for d in sorted(allowed_dims))} images")


def load_case(case: CaseFiles, channel_names: Sequence[str], reader_writer,
              declared_missing: Iterable[int] = (), allowed_dims: Collection[int] | None = None,
              model_description: str = "the model") -> LoadedCase:
    """Verifies and reads the present channel files of ``case`` and zero-fills the missing channels.

    Args:
        channel_names: the model's channels (dataset.json order); M = len(channel_names).
        reader_writer: an nnU-Net image reader/writer instance (plans' ``image_reader_writer``).
        declared_missing: channel indices to treat as missing even if their file exists.
        allowed_dims: image dimensionalities the model accepts ({3} for a 3D configuration, see
            ``DMAFPredictor.allowed_image_dims``); None skips that check.
        model_description: names the model in the dimensionality message.
    Raises:
        CaseInputError: naming the case and file (see module docstring).
    """
    num_channels = len(channel_names)
    for index, path in sorted(case.files.items()):
        if index >= num_channels:
            valid = ", ".join(f"{i:04d}={n}" for i, n in enumerate(channel_names))
            raise CaseInputError(case.case_id, path, f"channel index {index:04d} does not exist: the model has "
                                                     f"{num_channels} channels ({valid})")
    declared_missing = set(declared_missing)
    used = {i: p for i, p in sorted(case.files.items()) if i not in declared_missing}
    if not used:
        ignored = ", ".join(p.name for p in case.files.values())
        raise CaseInputError(case.case_id, None, "no channel left to predict from: every channel is absent or "
                                                 f"declared missing (files found: {ignored or 'none'})")
    data: np.ndarray | None = None
    reference_properties: dict = {}
    reference_file: Path | None = None
    for index, path in used.items():
        problem = image_file_problem(path)
        if problem is not None:
            raise CaseInputError(case.case_id, path, problem)
        try:
            image, properties = reader_writer.read_images([str(path)])
        except Exception as error:  # any reader failure means "not an image we can use"
            raise CaseInputError(case.case_id, path, f"could not be read as an image ({one_line(error)})") from error
        if image.shape[0] != 1:
            raise CaseInputError(case.case_id, path, f"holds {image.shape[0]} channels; nnU-Net expects one "
                                                     f"channel per file (CASE_XXXX naming)")
        if allowed_dims is not None:
            problem = dimensionality_problem(image.shape, allowed_dims, model_description)
            if problem is not None:
                raise CaseInputError(case.case_id, path, problem)
        non_finite = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        if non_finite:
            raise CaseInputError(case.case_id, path, f"{non_finite} voxel(s) are NaN or infinite")
        if data is None:
            data = np.zeros((num_channels,) + image.shape[1:], dtype=np.float32)
            reference_properties, reference_file = properties, path
        elif image.shape[1:] != data.shape[1:]:
            raise CaseInputError(case.case_id, path, f"shape {image.shape[1:]} differs from {data.shape[1:]} of "
                                                     f"{reference_file.name}; all channels of a case must share "
                                                     f"shape, spacing and origin")
        else:
            mismatch = _geometry_mismatch(reference_properties, properties)
            if mismatch is not None:
                raise CaseInputError(case.case_id, path, f"{mismatch} of {reference_file.name}; all channels of a "
                                                         f"case must share shape, spacing and origin")
        data[index] = image[0]
    mask = tuple(i in used for i in range(num_channels))
    return LoadedCase(case.case_id, data, reference_properties, mask, used)

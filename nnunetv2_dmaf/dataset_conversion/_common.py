"""Helpers shared by the conversion scripts: the error type, staged (all-or-nothing) output folders,
validated NIfTI reading, geometry checks, label remapping, dataset.json and the common CLI options.
"""
from __future__ import annotations

import argparse
import gzip
import multiprocessing
import os
import re
import shutil
import sys
import uuid
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import nibabel
import numpy as np
import SimpleITK as sitk

from nnunetv2_dmaf.atomic_files import PARTIAL_MARKER, partial_outputs
from nnunetv2_dmaf.user_errors import DataError, UsageError

FILE_ENDING = ".nii.gz"
#: absolute tolerance (mm for the origin, unitless for direction cosines) between channels/labels
DEFAULT_GEOMETRY_TOLERANCE = 1e-4
DEFAULT_NUM_PROCESSES = max(1, min(4, os.cpu_count() or 1))
_MAX_LISTED = 20


class ConversionError(DataError, ValueError):
    """Invalid input (missing, corrupt or inconsistent file) or refused output; names the file/case
    (exit status 1 through :func:`nnunetv2_dmaf.user_errors.run_main`)."""


class ConversionUsageError(UsageError, ConversionError):
    """A bad option value (dataset id, name, ...); exit status 2."""


def format_list(items: Iterable[object], limit: int = _MAX_LISTED) -> str:
    """`` a, b, c`` (one line; at most ``limit`` shown, then ``... and N more``)."""
    items = [str(i) for i in items]
    shown = items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])
    return " " + ", ".join(shown)


# ----------------------------------------------------------------------------------------- output
def output_root(path: str | os.PathLike | None, option: str = "--output-root") -> Path:
    """``path`` if given, else ``$nnUNet_raw`` (via ``nnunetv2.paths``)."""
    if path is not None:
        return Path(path)
    from nnunetv2.paths import nnUNet_raw
    if not nnUNet_raw:
        raise ConversionUsageError(f"nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass {option}")
    return Path(os.fspath(nnUNet_raw))


def dataset_folder(root: Path, dataset_id: int, name: str) -> Path:
    """``root/DatasetNNN_name`` after validating id and name."""
    if not 1 <= dataset_id <= 999:
        raise ConversionUsageError(f"dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConversionUsageError(f"invalid dataset name {name!r} (use letters, digits, '_', '-', '.')")
    return root / f"Dataset{dataset_id:03d}_{name}"


def check_output_target(target: Path, overwrite: bool) -> None:
    """Refuses an existing ``target`` (unless ``overwrite``) and a dataset id used by another name."""
    if target.exists() and not target.is_dir():
        raise ConversionError(f"output {target} exists and is not a folder")
    if target.exists() and not overwrite:
        raise ConversionError(f"output {target} already exists; pass --overwrite to replace it")
    prefix = target.name.split("_", 1)[0] + "_"  # "Dataset520_"
    if target.parent.is_dir():
        others = sorted(p.name for p in target.parent.iterdir() if p.name.startswith(prefix) and p != target)
        if others:
            raise ConversionError(f"dataset id {prefix[len('Dataset'):-1]} is already used by {', '.join(others)} in "
                                  f"{target.parent}; choose another id with -d")


def remove_leftovers(target: Path) -> list[Path]:
    """Deletes hidden ``.<target name>.partial-*`` outputs that a killed earlier run (SIGKILL, power
    loss) left next to ``target``, saying so on stderr; returns them. (Ctrl-C and SIGTERM never leave
    any: the staging folder is removed on the way out.)"""
    prefix = f".{target.name}{PARTIAL_MARKER}"
    leftovers = [p for p in partial_outputs(target.parent) if p.name.startswith(prefix)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        print(f"note: removed {path}, left over from an interrupted earlier run", file=sys.stderr)
    return leftovers


@contextmanager
def staged_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a new empty folder next to ``target``; when the block succeeds it becomes ``target``
    (replacing an existing one only if ``overwrite``), when it fails or is interrupted it is deleted.
    Leftovers of killed earlier runs for the same ``target`` are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = target.parent / f".{target.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}"
    try:  # mkdir inside: a signal right after it must still remove the folder
        staging.mkdir()
        yield staging
        if target.exists():
            if not overwrite:
                raise ConversionError(f"output {target} appeared during the conversion; not replacing it")
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def staged_files(folder: Path) -> Iterator[Path]:
    """Yields a new empty folder next to ``folder``; when the block succeeds its files are moved into
    ``folder`` (created if needed, same-named files replaced), when it fails it is deleted."""
    if not folder.exists():
        with staged_folder(folder) as staging:
            yield staging
        return
    remove_leftovers(folder)
    staging = folder.parent / f".{folder.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------- reading
class _HasGeometry(Protocol):
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


def check_same_geometry(image: _HasGeometry, path: Path, reference: _HasGeometry, reference_path: Path,
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


# --------------------------------------------------------------------------------------- writing
def copy_image(src: Path, dst: Path) -> None:
    """Writes an image already validated by ``read_header`` as ``dst`` (.nii.gz): a byte copy for
    .nii.gz sources (data, dtype and header unchanged), otherwise a SimpleITK read/write."""
    if src.name.lower().endswith(".nii.gz"):
        shutil.copyfile(src, dst)
    else:
        sitk.WriteImage(read_image(src), str(dst), True)


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
                       reference: _HasGeometry | None = None, reference_path: Path | None = None,
                       tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> None:
    """Reads a label file, checks values (keys of ``mapping``) and geometry, writes remapped uint8."""
    image = read_image(src)
    if reference is not None:
        check_same_geometry(image, src, reference, reference_path, tolerance)
    write_label(remap_labels(label_values(image, src, mapping.keys()), mapping), image, dst)


def convert_label_folder(input_folder: Path, output_folder: Path, mapping: Mapping[int, int],
                         overwrite: bool = False, num_processes: int = 1) -> list[Path]:
    """Writes every ``*.nii.gz``/``*.nii`` of ``input_folder`` with ``mapping`` applied (same name and
    geometry; values other than the mapping's keys are an error naming the file) into
    ``output_folder``, all files or none; returns the written files. Inputs are never modified."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise ConversionUsageError(f"input folder not found: {input_folder}")
    if output_folder.resolve() == input_folder.resolve():
        raise ConversionUsageError("the output folder must differ from the input folder (inputs are never "
                                   "overwritten)")
    if output_folder.exists() and not output_folder.is_dir():
        raise ConversionUsageError(f"output {output_folder} exists and is not a folder")
    if not output_folder.parent.is_dir():
        raise ConversionUsageError(f"the folder of the output, {output_folder.parent}, does not exist")
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


# ---------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class CaseFiles:
    """Source files of one case: images in nnU-Net channel order, optional label."""
    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None


def convert_case(case: CaseFiles, images_dir: Path, labels_dir: Path | None, label_mapping: Mapping[int, int],
                 tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> None:
    """Writes ``images_dir/<case>_<XXXX>.nii.gz`` (+ ``labels_dir/<case>.nii.gz``) after checking
    that all channels and the label are readable and share the first channel's geometry."""
    reference = read_header(case.images[0])
    for path in case.images[1:]:
        check_same_geometry(read_header(path), path, reference, case.images[0], tolerance)
    for channel, path in enumerate(case.images):
        copy_image(path, images_dir / f"{case.case_id}_{channel:04d}{FILE_ENDING}")
    if case.label is not None and labels_dir is not None:
        convert_label_file(case.label, labels_dir / f"{case.case_id}{FILE_ENDING}", label_mapping,
                           reference, case.images[0], tolerance)


def convert_case_slices(case: CaseFiles, images_dir: Path, labels_dir: Path | None, label_mapping: Mapping[int, int],
                        tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> None:
    """As :func:`convert_case`, but every slice K along the last image axis (z) becomes its own case
    ``<case>_slice_K``: a one-slice 3D image with the volume's spacing and direction and the slice's
    origin (nnU-Net's ``2d`` configuration trains on these; the slices stack back into the volume)."""
    reference = read_header(case.images[0])
    for path in case.images[1:]:
        check_same_geometry(read_header(path), path, reference, case.images[0], tolerance)
    if len(reference.GetSize()) != 3:
        raise ConversionError(f"{case.images[0]}: expected a 3D image to cut into slices, got size "
                              f"{tuple(reference.GetSize())}")
    num_slices = int(reference.GetSize()[2])
    for channel, path in enumerate(case.images):
        image = read_image(path)
        for k in range(num_slices):
            sitk.WriteImage(image[:, :, k:k + 1], str(images_dir / f"{slice_case_id(case.case_id, k)}_"
                                                                     f"{channel:04d}{FILE_ENDING}"), True)
    if case.label is not None and labels_dir is not None:
        image = read_image(case.label)
        check_same_geometry(image, case.label, reference, case.images[0], tolerance)
        array = remap_labels(label_values(image, case.label, label_mapping.keys()), label_mapping)
        for k in range(num_slices):
            write_label(array[k:k + 1], image[:, :, k:k + 1], labels_dir / f"{slice_case_id(case.case_id, k)}"
                                                                             f"{FILE_ENDING}")


def slice_case_id(case_id: str, index: int) -> str:
    """``myops_training_101`` , 2 -> ``myops_training_101_slice_2`` (the published protocol's names)."""
    return f"{case_id}_slice_{index}"


def missing_files(cases: Iterable[CaseFiles]) -> list[Path]:
    return [p for c in cases for p in (*c.images, *([c.label] if c.label else [])) if not p.is_file()]


def run_tasks(function: Callable[..., object], tasks: Sequence[tuple], num_processes: int) -> None:
    """Calls ``function(*task)`` for every task, in worker processes if ``num_processes > 1``;
    re-raises the first error (in task order) after cancelling pending tasks."""
    if num_processes <= 1 or len(tasks) <= 1:
        for task in tasks:
            function(*task)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(num_processes, len(tasks)), mp_context=context) as pool:
        futures = [pool.submit(function, *task) for task in tasks]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def write_dataset_json(folder: Path, channel_names: Sequence[str], labels: Mapping[str, int | tuple[int, ...]],
                       num_training: int, regions_class_order: Sequence[int] | None, **metadata: object) -> None:
    """dataset.json via nnU-Net's own ``generate_dataset_json`` (channel index = position)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(str(folder), {i: name for i, name in enumerate(channel_names)}, dict(labels),
                          num_training, FILE_ENDING,
                          regions_class_order=tuple(regions_class_order) if regions_class_order else None,
                          converted_by="nnunetv2_dmaf dataset_conversion", **metadata)


def write_dataset(target: Path, train: Sequence[CaseFiles], test: Sequence[CaseFiles],
                  label_mapping: Mapping[int, int], geometry_tolerance: float, num_processes: int,
                  overwrite: bool, channel_names: Sequence[str], labels: Mapping[str, int | tuple[int, ...]],
                  regions_class_order: Sequence[int] | None, converter: Callable[..., None] = convert_case,
                  **metadata: object) -> Path:
    """Converts ``train`` (images + labels -> imagesTr/labelsTr) and ``test`` (images -> imagesTs)
    into ``target`` with its dataset.json, all or nothing (staged folder renamed at the end), each case
    with ``converter`` (:func:`convert_case` or :func:`convert_case_slices`).
    Every expected file is checked to exist before anything is written."""
    missing = missing_files([*train, *test])
    if missing:
        raise ConversionError(f"{len(missing)} expected file(s) missing:{format_list(missing)}")
    with staged_folder(target, overwrite) as staging:
        images_tr, labels_tr, images_ts = staging / "imagesTr", staging / "labelsTr", staging / "imagesTs"
        for folder in (images_tr, labels_tr, *([images_ts] if test else [])):
            folder.mkdir()
        tasks = [(case, images_tr, labels_tr, label_mapping, geometry_tolerance) for case in train]
        tasks += [(case, images_ts, None, label_mapping, geometry_tolerance) for case in test]
        run_tasks(converter, tasks, num_processes)
        num_training = sum(1 for p in labels_tr.iterdir() if p.name.endswith(FILE_ENDING))
        write_dataset_json(staging, channel_names, labels, num_training, regions_class_order,
                           dataset_name=target.name, **metadata)
    return target


# -------------------------------------------------------------------------------------------- CLI
def add_output_arguments(parser: argparse.ArgumentParser, default_id: int | None, default_name: str | None,
                         id_help: str | None = None, name_help: str | None = None) -> None:
    """-d/--dataset-id, -n/--name, --output-root, --overwrite, -np, --geometry-tolerance
    (``*_help``: how the default is shown, for defaults that depend on other options)."""
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id,
                        help=f"nnU-Net dataset id (default: {id_help or default_id})")
    parser.add_argument("-n", "--name", default=default_name,
                        help="dataset name, the output folder is DatasetNNN_NAME "
                             f"(default: {name_help or default_name})")
    parser.add_argument("--output-root", default=None,
                        help="folder in which DatasetNNN_NAME is created (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DatasetNNN_NAME folder")
    add_processes_argument(parser)
    parser.add_argument("--geometry-tolerance", type=float, default=DEFAULT_GEOMETRY_TOLERANCE,
                        help="absolute tolerance for origin/direction differences between the channels and "
                             f"the label of a case (default: {DEFAULT_GEOMETRY_TOLERANCE}); sizes must match "
                             "exactly and spacings as strictly as nnU-Net requires")


def add_processes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-np", "--num-processes", type=int, default=DEFAULT_NUM_PROCESSES,
                        help=f"worker processes (default: {DEFAULT_NUM_PROCESSES})")

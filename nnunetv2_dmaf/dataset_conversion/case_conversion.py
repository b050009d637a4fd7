"""Whole cases and datasets: one case's channels (+ label) into nnU-Net's ``imagesTr``/``labelsTr``/
``imagesTs`` layout (as volumes or as one case per slice), and the dataset folder with its dataset.json."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import SimpleITK as sitk

from nnunetv2_dmaf.channel_files import channel_file_name
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError, format_list
from nnunetv2_dmaf.dataset_conversion.image_files import (DEFAULT_GEOMETRY_TOLERANCE, FILE_ENDING, check_same_geometry,
                                                          copy_image, read_header, read_image)
from nnunetv2_dmaf.dataset_conversion.label_files import convert_label_file, label_values, remap_labels, write_label
from nnunetv2_dmaf.dataset_conversion.output_folders import staged_folder
from nnunetv2_dmaf.dataset_conversion.parallel_tasks import run_tasks


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
        copy_image(path, images_dir / channel_file_name(case.case_id, channel, FILE_ENDING))
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
            sitk.WriteImage(image[:, :, k:k + 1],
                            str(images_dir / channel_file_name(slice_case_id(case.case_id, k), channel, FILE_ENDING)),
                            True)
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

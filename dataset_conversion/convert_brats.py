"""BraTS 2018 / 2020 / 2021 -> nnU-Net v2 raw ``DatasetNNN_BraTSYYYY``, and nnU-Net predictions back
to BraTS labels for submission.

Input layouts (``-i`` is the folder holding the case folders; case ids are kept as nnU-Net case ids):

* 2018: ``HGG/`` and ``LGG/`` with ``Brats18_2013_0_1/Brats18_2013_0_1_{flair,t1,t1ce,t2,seg}.nii.gz``
  (case folders directly inside ``-i`` are found too, e.g. the validation data);
* 2020: ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_{...}.nii.gz``; the
  segmentation of case 355 is misnamed ``W39_1998.09.19_Segm.nii`` and is used as such;
* 2021: ``BraTS2021_00000/BraTS2021_00000_{...}.nii.gz``.

``.nii`` is accepted wherever ``.nii.gz`` is expected. ``--validation-input`` folders (no ``seg``)
are converted to ``imagesTs``.

Output, following nnU-Net's own Dataset137_BraTS21 conversion: channels ``_0000`` T1, ``_0001`` T1ce,
``_0002`` T2, ``_0003`` FLAIR (image files copied byte for byte); labels (uint8, geometry kept)
2 edema -> 1, 1 necrosis/non-enhancing core -> 2, 4 enhancing tumour -> 3; regions whole tumor
(1, 2, 3), tumor core (2, 3), enhancing tumor (3), ``regions_class_order`` (1, 2, 3). Default dataset
ids 518 / 520 / 521 (nnU-Net's own scripts use 042 for 2018 and 137 for 2021).
``main_to_submission`` applies the exact inverse (1 -> 2, 2 -> 1, 3 -> 4) to a folder of predictions.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset_conversion._common import (DEFAULT_GEOMETRY_TOLERANCE, CaseFiles,
                                        ConversionError, add_output_arguments, add_processes_argument,
                                        check_output_target, convert_label_file, dataset_folder,
                                        format_list, output_root, remap_labels, run_cli,
                                        run_tasks, staged_files, write_dataset)

#: (file suffix, nnU-Net channel name) in nnU-Net channel order
CHANNELS: tuple[tuple[str, str], ...] = (("t1", "T1"), ("t1ce", "T1ce"), ("t2", "T2"), ("flair", "FLAIR"))
CHANNEL_NAMES: tuple[str, ...] = tuple(name for _, name in CHANNELS)
LABELS: dict[str, int | tuple[int, ...]] = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3),
                                             "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER: tuple[int, ...] = (1, 2, 3)
#: BraTS label -> nnU-Net label (as nnunetv2/dataset_conversion/Dataset137_BraTS21.py)
BRATS_TO_NNUNET: dict[int, int] = {0: 0, 2: 1, 1: 2, 4: 3}
NNUNET_TO_BRATS: dict[int, int] = {v: k for k, v in BRATS_TO_NNUNET.items()}
#: published files whose names break the pattern: (case id, file suffix) -> actual file names
KNOWN_MISNAMED: dict[tuple[str, str], tuple[str, ...]] = {
    ("BraTS20_Training_355", "seg"): ("W39_1998.09.19_Segm.nii",),
}
GRADE_FOLDERS = ("HGG", "LGG")


@dataclass(frozen=True)
class BratsRelease:
    year: int
    case_prefix: str  # case folders start with this (compared case-insensitively)
    default_id: int
    default_name: str
    reference: str


RELEASES: dict[int, BratsRelease] = {
    2018: BratsRelease(2018, "Brats18_", 518, "BraTS2018", "https://www.med.upenn.edu/sbia/brats2018.html"),
    2020: BratsRelease(2020, "BraTS20_", 520, "BraTS2020", "https://www.med.upenn.edu/cbica/brats2020/"),
    2021: BratsRelease(2021, "BraTS2021_", 521, "BraTS2021",
                       "https://www.synapse.org/#!Synapse:syn25829067/wiki/610863"),
}


def brats_to_nnunet_labels(array: np.ndarray) -> np.ndarray:
    """BraTS labels 0/1/2/4 -> nnU-Net labels 0/1/2/3 (uint8)."""
    return remap_labels(array, BRATS_TO_NNUNET)


def nnunet_to_brats_labels(array: np.ndarray) -> np.ndarray:
    """nnU-Net labels 0/1/2/3 -> BraTS labels 0/1/2/4 (uint8); inverse of ``brats_to_nnunet_labels``."""
    return remap_labels(array, NNUNET_TO_BRATS)


# ------------------------------------------------------------------------------------ discovery
def _case_file(case_dir: Path, case_id: str, suffix: str) -> Path:
    """The case's file for ``suffix`` (.nii.gz, .nii, known misnamed file); the .nii.gz path if none exists."""
    candidates = [case_dir / f"{case_id}_{suffix}.nii.gz", case_dir / f"{case_id}_{suffix}.nii",
                  *(case_dir / name for name in KNOWN_MISNAMED.get((case_id, suffix), ()))]
    return next((c for c in candidates if c.is_file()), candidates[0])


def find_cases(folder: Path, year: int, with_label: bool) -> list[CaseFiles]:
    """Case folders of a BraTS ``year`` in ``folder`` (and its HGG/LGG subfolders), sorted by id."""
    release = RELEASES[year]
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"input folder not found: {folder}")
    roots = [folder, *(folder / g for g in GRADE_FOLDERS if (folder / g).is_dir())]
    case_dirs = [p for root in roots for p in root.iterdir()
                 if p.is_dir() and p.name.lower().startswith(release.case_prefix.lower())]
    if not case_dirs:
        seen = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise ConversionError(f"no BraTS {year} case folders ({release.case_prefix}...) in {folder}"
                              f"{' or its HGG/LGG subfolders' if year == 2018 else ''}; subfolders found:"
                              f"{format_list(seen) if seen else ' none'}")
    by_id: dict[str, Path] = {}
    for case_dir in case_dirs:
        if case_dir.name in by_id:
            raise ConversionError(f"case {case_dir.name} found twice: {by_id[case_dir.name]} and {case_dir}")
        by_id[case_dir.name] = case_dir
    return [CaseFiles(case_id, tuple(_case_file(d, case_id, suffix) for suffix, _ in CHANNELS),
                      _case_file(d, case_id, "seg") if with_label else None)
            for case_id, d in sorted(by_id.items())]


# ----------------------------------------------------------------------------------- conversion
def convert_brats(input_folder: Path, year: int, dataset_id: int | None = None, name: str | None = None,
                  output_root_folder: Path | None = None, validation_folder: Path | None = None,
                  overwrite: bool = False, num_processes: int = 1,
                  geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> Path:
    """Converts a BraTS training folder (and optionally a validation folder to imagesTs); returns the
    dataset folder. Writes nothing unless every case converts (raises ConversionError otherwise)."""
    if year not in RELEASES:
        raise ConversionError(f"unsupported BraTS year {year}; supported: {sorted(RELEASES)}")
    release = RELEASES[year]
    target = dataset_folder(output_root(output_root_folder), release.default_id if dataset_id is None else dataset_id,
                            name or release.default_name)
    check_output_target(target, overwrite)
    train = find_cases(Path(input_folder), year, with_label=True)
    test = find_cases(Path(validation_folder), year, with_label=False) if validation_folder else []
    return write_dataset(
        target, train, test, BRATS_TO_NNUNET, geometry_tolerance, num_processes, overwrite, CHANNEL_NAMES, LABELS,
        REGIONS_CLASS_ORDER, reference=release.reference, license=f"see {release.reference}",
        description=f"BraTS {year} converted by nnunetv2_dmaf; labels: 1 edema (BraTS 2), 2 necrosis/"
                    f"non-enhancing tumour core (BraTS 1), 3 enhancing tumour (BraTS 4)")


def convert_predictions_to_brats(input_folder: Path, output_folder: Path, overwrite: bool = False,
                                 num_processes: int = 1) -> list[Path]:
    """Writes every ``*.nii.gz``/``*.nii`` of ``input_folder`` (nnU-Net labels 0-3) with BraTS labels
    (0/1/2/4, uint8, same name and geometry) into ``output_folder``; returns the written files."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise ConversionError(f"input folder not found: {input_folder}")
    if output_folder.resolve() == input_folder.resolve():
        raise ConversionError("the output folder must differ from the input folder (inputs are never overwritten)")
    if output_folder.exists() and not output_folder.is_dir():
        raise ConversionError(f"output {output_folder} exists and is not a folder")
    files = sorted(p for p in input_folder.iterdir() if p.is_file() and p.name.lower().endswith((".nii.gz", ".nii")))
    if not files:
        raise ConversionError(f"no .nii.gz/.nii files in {input_folder}")
    existing = [output_folder / f.name for f in files if (output_folder / f.name).exists()]
    if existing and not overwrite:
        raise ConversionError(f"{len(existing)} output file(s) exist; pass --overwrite to replace them:"
                              f"{format_list(existing)}")
    with staged_files(output_folder) as staging:
        run_tasks(convert_label_file, [(f, staging / f.name, NNUNET_TO_BRATS) for f in files], num_processes)
    return [output_folder / f.name for f in files]


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_convert_brats``: BraTS 2018/2020/2021 -> nnU-Net raw."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_dmaf_convert_brats",
        description="Converts BraTS 2018 (HGG/LGG), 2020 or 2021 training data (and optionally validation data) "
                    "to nnU-Net raw format: channels T1, T1ce, T2, FLAIR; labels 2->1 (edema), 1->2 (necrosis), "
                    "4->3 (enhancing) with regions WT/TC/ET. Case ids are kept.",
        epilog="Example: nnUNetv2_dmaf_convert_brats -y 2020 -i MICCAI_BraTS2020_TrainingData "
               "--validation-input MICCAI_BraTS2020_ValidationData  (-> $nnUNet_raw/Dataset520_BraTS2020)")
    parser.add_argument("-i", "--input", required=True, type=Path,
                        help="folder with the training case folders (2018: the folder with HGG/ and LGG/)")
    parser.add_argument("-y", "--year", required=True, type=int, choices=sorted(RELEASES), help="BraTS release")
    parser.add_argument("--validation-input", type=Path, default=None,
                        help="optional folder with case folders without segmentation, converted to imagesTs")
    add_output_arguments(parser, None, None, ", ".join(f"{r.default_id} for {y}" for y, r in RELEASES.items()),
                         ", ".join(f"{r.default_name} for {y}" for y, r in RELEASES.items()))
    args = parser.parse_args(argv)
    target = run_cli(convert_brats, args.input, args.year, args.dataset_id, args.name, args.output_root,
                     args.validation_input, args.overwrite, args.num_processes, args.geometry_tolerance)
    print(f"wrote {target}")


def main_to_submission(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_brats_to_submission``: nnU-Net predictions (0/1/2/3) -> BraTS labels (0/1/2/4)."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_dmaf_brats_to_submission",
        description="Converts nnU-Net BraTS predictions (labels 0/1/2/3 as written by nnUNetv2_predict) back to "
                    "the BraTS convention (1 -> 2 edema, 2 -> 1 necrosis, 3 -> 4 enhancing) for submission. "
                    "Files keep their names and geometry; inputs are never modified.",
        epilog="Example: nnUNetv2_dmaf_brats_to_submission -i predictions -o submission")
    parser.add_argument("-i", "--input", required=True, type=Path, help="folder with predicted .nii.gz files")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder (must differ from -i)")
    parser.add_argument("--overwrite", action="store_true", help="replace same-named files in the output folder")
    add_processes_argument(parser)
    args = parser.parse_args(argv)
    written = run_cli(convert_predictions_to_brats, args.input, args.output, args.overwrite, args.num_processes)
    print(f"wrote {len(written)} file(s) to {args.output}")


if __name__ == "__main__":
    main()

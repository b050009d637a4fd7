"""BraTS 2018 / 2020 / 2021 / 2023 / 2024 -> nnU-Net v2 raw ``DatasetNNN_BraTS...``, and nnU-Net
predictions back to BraTS labels for submission.

Input layouts (``-i`` is the folder holding the case folders; case ids are kept as nnU-Net case ids):

* 2018: ``HGG/`` and ``LGG/`` with ``Brats18_2013_0_1/Brats18_2013_0_1_{flair,t1,t1ce,t2,seg}.nii.gz``
  (case folders directly inside ``-i`` are found too, e.g. the validation data);
* 2020: ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_{...}.nii.gz``; the
  segmentation of case 355 is misnamed ``W39_1998.09.19_Segm.nii`` and is used as such;
* 2021: ``BraTS2021_00000/BraTS2021_00000_{...}.nii.gz``;
* 2023 and 2024 (tasks GLI, MEN, MET, PED, SSA; ``--task``, detected from the folder names if omitted):
  ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (training and validation
  folders). Labels 1 NCR, 2 ED, 3 ET. BraTS 2024 GLI's post-treatment label 4 (resection cavity) is
  not one of the three regions and is refused (error naming the file).

``.nii`` is accepted wherever ``.nii.gz`` is expected. ``--validation-input`` folders (no ``seg``)
are converted to ``imagesTs``.

Output, following nnU-Net's own Dataset137_BraTS21 conversion: channels ``_0000`` T1 (t1n), ``_0001``
T1ce (t1c), ``_0002`` T2 (t2w), ``_0003`` FLAIR (t2f) (image files copied byte for byte); labels
(uint8, geometry kept) edema -> 1, necrosis/non-enhancing core -> 2, enhancing tumour -> 3, i.e.
2/1/4 -> 1/2/3 for 2018-2021 and 2/1/3 -> 1/2/3 for 2023+; regions whole tumor (1, 2, 3), tumor core
(2, 3), enhancing tumor (3), ``regions_class_order`` (1, 2, 3), the same for every release. Default
dataset ids 518 / 520 / 521, 540-544 (2023 GLI, MEN, MET, PED, SSA), 550-554 (2024) (nnU-Net's own
scripts use 042 for 2018 and 137 for 2021). ``main_to_submission`` applies the exact inverse of a
release's mapping (``-y``) to a folder of predictions.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.dataset_conversion.case_conversion import CaseFiles, write_dataset
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError, ConversionUsageError, format_list
from nnunetv2_dmaf.dataset_conversion.converter_options import add_output_arguments, add_processes_argument
from nnunetv2_dmaf.dataset_conversion.image_files import DEFAULT_GEOMETRY_TOLERANCE
from nnunetv2_dmaf.dataset_conversion.label_files import check_label_folders, convert_label_folder, remap_labels
from nnunetv2_dmaf.dataset_conversion.output_folders import check_output_target, dataset_folder, output_root
from nnunetv2_dmaf.user_errors import one_line, run_main

#: (file suffix, nnU-Net channel name) in nnU-Net channel order
CHANNELS: tuple[tuple[str, str], ...] = (("t1", "T1"), ("t1ce", "T1ce"), ("t2", "T2"), ("flair", "FLAIR"))
CHANNEL_NAMES: tuple[str, ...] = tuple(name for _, name in CHANNELS)
#: file suffixes of the 2023+ releases, in the same channel order (t1n = T1, t1c = T1ce, t2w = T2, t2f = FLAIR)
CHANNEL_SUFFIXES_2023: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
LABELS: dict[str, int | tuple[int, ...]] = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3),
                                             "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER: tuple[int, ...] = (1, 2, 3)
#: BraTS label -> nnU-Net label (as nnunetv2/dataset_conversion/Dataset137_BraTS21.py)
BRATS_TO_NNUNET: dict[int, int] = {0: 0, 2: 1, 1: 2, 4: 3}
NNUNET_TO_BRATS: dict[int, int] = {v: k for k, v in BRATS_TO_NNUNET.items()}
#: BraTS 2023+ label (1 NCR, 2 ED, 3 ET) -> nnU-Net label
BRATS2023_TO_NNUNET: dict[int, int] = {0: 0, 2: 1, 1: 2, 3: 3}
NNUNET_TO_BRATS2023: dict[int, int] = {v: k for k, v in BRATS2023_TO_NNUNET.items()}
#: published files whose names break the pattern: (case id, file suffix) -> actual file names
KNOWN_MISNAMED: dict[tuple[str, str], tuple[str, ...]] = {
    ("BraTS20_Training_355", "seg"): ("W39_1998.09.19_Segm.nii",),
}
GRADE_FOLDERS = ("HGG", "LGG")
TASKS_2023: tuple[str, ...] = ("GLI", "MEN", "MET", "PED", "SSA")


@dataclass(frozen=True)
class BratsRelease:
    year: int
    case_prefix: str  # case folders start with this (compared case-insensitively)
    default_id: int
    default_name: str
    reference: str
    suffixes: tuple[str, ...] = tuple(suffix for suffix, _ in CHANNELS)  # per channel, nnU-Net order
    separator: str = "_"  # between case id and file suffix
    label_mapping: tuple[tuple[int, int], ...] = tuple(BRATS_TO_NNUNET.items())
    task: str | None = None

    @property
    def to_nnunet(self) -> dict[int, int]:
        return dict(self.label_mapping)

    @property
    def to_brats(self) -> dict[int, int]:
        return {v: k for k, v in self.label_mapping}

    @property
    def label_description(self) -> str:
        return ", ".join(f"{src} -> {dst}" for src, dst in self.label_mapping if src)


RELEASES: dict[int, BratsRelease] = {
    2018: BratsRelease(2018, "Brats18_", 518, "BraTS2018", "https://www.med.upenn.edu/sbia/brats2018.html"),
    2020: BratsRelease(2020, "BraTS20_", 520, "BraTS2020", "https://www.med.upenn.edu/cbica/brats2020/"),
    2021: BratsRelease(2021, "BraTS2021_", 521, "BraTS2021",
                       "https://www.synapse.org/#!Synapse:syn25829067/wiki/610863"),
}
_RELEASE_2023_REFERENCES = {2023: "https://www.synapse.org/#!Synapse:syn51156910/wiki/621282",
                            2024: "https://www.synapse.org/#!Synapse:syn53708249/wiki/626323"}
#: (year, task) -> release of the 2023+ challenges
TASK_RELEASES: dict[tuple[int, str], BratsRelease] = {
    (year, task): BratsRelease(year, f"BraTS-{task}-", base + i, f"BraTS{year}{task}", reference,
                               CHANNEL_SUFFIXES_2023, "-", tuple(BRATS2023_TO_NNUNET.items()), task)
    for year, base in ((2023, 540), (2024, 550)) for reference in (_RELEASE_2023_REFERENCES[year],)
    for i, task in enumerate(TASKS_2023)}
YEARS: tuple[int, ...] = (*RELEASES, *sorted({y for y, _ in TASK_RELEASES}))


def release_for(year: int, task: str | None, folder: Path | None = None) -> BratsRelease:
    """The release of ``year`` (and ``task`` for 2023+; detected from ``folder``'s case folders if None)."""
    if year in RELEASES:
        if task is not None:
            raise ConversionUsageError(f"--task applies to BraTS 2023/2024 only, not {year}")
        return RELEASES[year]
    if year not in {y for y, _ in TASK_RELEASES}:
        raise ConversionUsageError(f"unsupported BraTS year {year}; supported: {list(YEARS)}")
    if task is None and folder is not None and folder.is_dir():
        found = sorted({t for p in folder.iterdir() if p.is_dir() for t in TASKS_2023
                        if p.name.upper().startswith(f"BRATS-{t}-")})
        if len(found) > 1:
            raise ConversionUsageError(f"{folder} holds case folders of several tasks ({', '.join(found)}); "
                                       f"choose one with --task")
        task = found[0] if found else None
    if task is None:
        raise ConversionError(f"no BraTS {year} case folders (BraTS-<TASK>-...) in {folder}; give --task "
                              f"({', '.join(TASKS_2023)}) and the folder holding the case folders")
    if task.upper() not in TASKS_2023:
        raise ConversionUsageError(f"unknown BraTS task {task!r}; choose from {', '.join(TASKS_2023)}")
    return TASK_RELEASES[(year, task.upper())]


def brats_to_nnunet_labels(array: np.ndarray) -> np.ndarray:
    """BraTS labels 0/1/2/4 -> nnU-Net labels 0/1/2/3 (uint8)."""
    return remap_labels(array, BRATS_TO_NNUNET)


def nnunet_to_brats_labels(array: np.ndarray) -> np.ndarray:
    """nnU-Net labels 0/1/2/3 -> BraTS labels 0/1/2/4 (uint8); inverse of ``brats_to_nnunet_labels``."""
    return remap_labels(array, NNUNET_TO_BRATS)


# ------------------------------------------------------------------------------------ discovery
def _case_file(case_dir: Path, case_id: str, suffix: str, separator: str = "_") -> Path:
    """The case's file for ``suffix`` (.nii.gz, .nii, known misnamed file); the .nii.gz path if none exists."""
    candidates = [case_dir / f"{case_id}{separator}{suffix}.nii.gz", case_dir / f"{case_id}{separator}{suffix}.nii",
                  *(case_dir / name for name in KNOWN_MISNAMED.get((case_id, suffix), ()))]
    return next((c for c in candidates if c.is_file()), candidates[0])


def find_cases(folder: Path, release: BratsRelease | int, with_label: bool) -> list[CaseFiles]:
    """Case folders of a BraTS release in ``folder`` (and its HGG/LGG subfolders), sorted by id."""
    release = RELEASES[release] if isinstance(release, int) else release
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionUsageError(f"input folder not found: {folder}")
    roots = [folder, *(folder / g for g in GRADE_FOLDERS if (folder / g).is_dir())]
    case_dirs = [p for root in roots for p in root.iterdir()
                 if p.is_dir() and p.name.lower().startswith(release.case_prefix.lower())]
    if not case_dirs:
        seen = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise ConversionError(f"no BraTS {release.year} case folders ({release.case_prefix}...) in {folder}"
                              f"{' or its HGG/LGG subfolders' if release.year == 2018 else ''}; subfolders found:"
                              f"{format_list(seen) if seen else ' none'}")
    by_id: dict[str, Path] = {}
    for case_dir in case_dirs:
        if case_dir.name in by_id:
            raise ConversionError(f"case {case_dir.name} found twice: {by_id[case_dir.name]} and {case_dir}")
        by_id[case_dir.name] = case_dir
    sep = release.separator
    return [CaseFiles(case_id, tuple(_case_file(d, case_id, suffix, sep) for suffix in release.suffixes),
                      _case_file(d, case_id, "seg", sep) if with_label else None)
            for case_id, d in sorted(by_id.items())]


# ----------------------------------------------------------------------------------- conversion
def convert_brats(input_folder: Path, year: int, dataset_id: int | None = None, name: str | None = None,
                  output_root_folder: Path | None = None, validation_folder: Path | None = None,
                  overwrite: bool = False, num_processes: int = 1,
                  geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE, task: str | None = None) -> Path:
    """Converts a BraTS training folder (and optionally a validation folder to imagesTs); returns the
    dataset folder. Writes nothing unless every case converts (raises ConversionError otherwise)."""
    release = release_for(year, task, Path(input_folder))
    target = dataset_folder(output_root(output_root_folder), release.default_id if dataset_id is None else dataset_id,
                            name or release.default_name)
    check_output_target(target, overwrite)
    train = find_cases(Path(input_folder), release, with_label=True)
    test = find_cases(Path(validation_folder), release, with_label=False) if validation_folder else []
    what = f"BraTS {year}" + (f" {release.task}" if release.task else "")
    return write_dataset(
        target, train, test, release.to_nnunet, geometry_tolerance, num_processes, overwrite, CHANNEL_NAMES, LABELS,
        REGIONS_CLASS_ORDER, reference=release.reference, license=f"see {release.reference}",
        description=f"{what} converted by nnunetv2_dmaf; BraTS labels -> nnU-Net labels: {release.label_description} "
                    f"(1 edema, 2 necrosis/non-enhancing tumour core, 3 enhancing tumour)")


def submission_labels(year: int) -> dict[int, int]:
    """nnU-Net label -> BraTS label of release ``year`` (0/1/2/4 up to 2021, 0/1/2/3 from 2023)."""
    return NNUNET_TO_BRATS if year in RELEASES else NNUNET_TO_BRATS2023


#: the label part of the dataset.json description that :func:`convert_brats` writes
_RECORDED_LABELS = re.compile(r"BraTS labels -> nnU-Net labels: (\d+ -> \d+(?:, \d+ -> \d+)*)")


def recorded_submission_labels(prediction_folder: Path) -> dict[int, int] | None:
    """nnU-Net label -> BraTS label of the dataset whose predictions ``prediction_folder`` holds, read
    from the dataset.json that nnUNetv2_predict / nnUNetv2_dmaf_predict write beside the predictions
    (its description, as :func:`convert_brats` wrote it); None if there is no such file or it does
    not say (a dataset not converted by this plugin). ConversionError if the file is not readable JSON."""
    path = prediction_folder / "dataset.json"
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConversionError(f"{path}: not a readable JSON file ({one_line(error)})") from None
    description = content.get("description") if isinstance(content, dict) else None
    match = _RECORDED_LABELS.search(str(description))
    if match is None:
        return None
    pairs = (pair.split(" -> ") for pair in match.group(1).split(", "))
    return {0: 0, **{int(nnunet): int(brats) for brats, nnunet in pairs}}


def convert_predictions_to_brats(input_folder: Path, output_folder: Path, overwrite: bool = False,
                                 num_processes: int = 1, year: int = 2020) -> list[Path]:
    """Writes every ``*.nii.gz``/``*.nii`` of ``input_folder`` (nnU-Net labels 0-3) with the BraTS labels
    of ``year`` (:func:`submission_labels`; uint8, same name and geometry) into ``output_folder``;
    returns the written files."""
    return convert_label_folder(input_folder, output_folder, submission_labels(year), overwrite, num_processes)


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_convert_brats``: BraTS 2018-2024 -> nnU-Net raw."""
    run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> None:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_convert_brats",
        description="Converts BraTS 2018 (HGG/LGG), 2020, 2021 or 2023/2024 (GLI, MEN, MET, PED, SSA) training data "
                    "(and optionally validation data) to nnU-Net raw format: channels T1, T1ce, T2, FLAIR (2023+: "
                    "t1n, t1c, t2w, t2f); labels edema -> 1, necrosis -> 2, enhancing -> 3 (2018-2021: 2/1/4, "
                    "2023+: 2/1/3) with regions WT/TC/ET. Case ids are kept.",
        epilog="Example: nnUNetv2_dmaf_convert_brats -y 2020 -i MICCAI_BraTS2020_TrainingData "
               "--validation-input MICCAI_BraTS2020_ValidationData  (-> $nnUNet_raw/Dataset520_BraTS2020); "
               "nnUNetv2_dmaf_convert_brats -y 2023 -i ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData "
               "(-> Dataset540_BraTS2023GLI)")
    parser.add_argument("-i", "--input", required=True, type=Path,
                        help="folder with the training case folders (2018: the folder with HGG/ and LGG/)")
    parser.add_argument("-y", "--year", required=True, type=int, choices=YEARS, help="BraTS release")
    parser.add_argument("--task", default=None, type=str.upper, choices=TASKS_2023,
                        help="2023/2024 challenge task (default: detected from the case folder names)")
    parser.add_argument("--validation-input", type=Path, default=None,
                        help="optional folder with case folders without segmentation, converted to imagesTs")
    add_output_arguments(parser, None, None, ", ".join(f"{r.default_id} for {y}" for y, r in RELEASES.items())
                         + "; 540-544 for 2023 GLI/MEN/MET/PED/SSA, 550-554 for 2024",
                         ", ".join(f"{r.default_name} for {y}" for y, r in RELEASES.items()) + ", BraTS2023GLI, ...")
    args = parser.parse_args(argv)
    target = convert_brats(args.input, args.year, args.dataset_id, args.name, args.output_root, args.validation_input,
                           args.overwrite, args.num_processes, args.geometry_tolerance, args.task)
    print(f"wrote {target}")


def main_to_submission(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_brats_to_submission``: nnU-Net predictions (0/1/2/3) -> BraTS labels."""
    run_main(_main_to_submission, argv)


def _main_to_submission(argv: Sequence[str] | None) -> None:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_brats_to_submission",
        description="Converts nnU-Net BraTS predictions (labels 0/1/2/3 as written by nnUNetv2_predict) back to "
                    "the BraTS convention: up to 2021 1 -> 2 edema, 2 -> 1 necrosis, 3 -> 4 enhancing; 2023+ "
                    "(-y 2023/2024) 1 -> 2 ED, 2 -> 1 NCR, 3 -> 3 ET. Files keep their names and geometry; inputs "
                    "are never modified.",
        epilog="Example: nnUNetv2_dmaf_brats_to_submission -i predictions -o submission  (predictions of "
               "nnUNetv2_predict, with its dataset.json; otherwise add -y 2021 or -y 2023)")
    parser.add_argument("-i", "--input", required=True, type=Path, help="folder with predicted .nii.gz files")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder (must differ from -i)")
    parser.add_argument("-y", "--year", type=int, choices=YEARS, default=None,
                        help="BraTS release whose labels to write (default: the release of the dataset.json that "
                             "nnUNetv2_predict wrote into -i, if nnUNetv2_dmaf_convert_brats converted it; "
                             "required otherwise)")
    parser.add_argument("--overwrite", action="store_true", help="replace same-named files in the output folder")
    add_processes_argument(parser)
    args = parser.parse_args(argv)
    check_label_folders(args.input, args.output)
    recorded = recorded_submission_labels(args.input)
    year = args.year
    if year is None:
        if recorded is None:
            raise ConversionUsageError(f"give the BraTS release with -y: {args.input / 'dataset.json'} does not say "
                                       f"which labels the dataset had (2018-2021 write 1/2/4, 2023+ 1/2/3)")
        year = next((y for y in YEARS if submission_labels(y) == recorded), None)
        if year is None:
            raise ConversionUsageError(f"{args.input / 'dataset.json'}: labels {recorded} are neither BraTS "
                                       f"2018-2021's nor 2023+'s; give -y")
        print(f"BraTS labels of {args.input / 'dataset.json'}: "
              f"{', '.join(f'{k} -> {v}' for k, v in recorded.items() if k)}")
    elif recorded is not None and recorded != submission_labels(year):
        raise ConversionUsageError(f"-y {year} writes enhancing tumour as {submission_labels(year)[3]}, but "
                                   f"{args.input / 'dataset.json'} is of a dataset converted with enhancing tumour "
                                   f"{recorded.get(3)}; leave -y out to use the dataset's labels")
    written = convert_predictions_to_brats(args.input, args.output, args.overwrite, args.num_processes, year)
    print(f"wrote {len(written)} file(s) to {args.output}")


if __name__ == "__main__":
    main()

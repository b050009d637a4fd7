"""MyoPS 2020 -> nnU-Net v2 raw ``Dataset530_MyoPS2020``.

Input (``-i``, the unpacked challenge data): ``train25/myops_training_101_{C0,DE,T2}.nii.gz``,
``train25_myops_gd/myops_training_101_gd.nii.gz`` and, if present, ``test20/myops_test_201_{C0,DE,T2}.nii.gz``
(converted to imagesTs). Other locations: ``--train-images``, ``--train-labels``, ``--test-images``.
Case ids are kept (``myops_training_101``).

Channels: ``_0000`` C0 (bSSFP), ``_0001`` DE (LGE), ``_0002`` T2. The three channels and the label
of a case must have the same size, spacing, origin and direction (error naming the file otherwise).

Labels (uint8, geometry kept), MyoPS -> nnU-Net:
0 -> 0 background, 200 -> 1 normal myocardium, 500 -> 2 LV blood pool, 600 -> 3 RV blood pool,
1220 -> 4 edema, 2221 -> 5 scar. Any other value is an error naming the file.

Regions (default), so that the MyoPS targets are trained directly (its evaluation scores scar and
edema+scar): LV blood pool (2), RV blood pool (3), myocardium (1, 4, 5), edema+scar (4, 5),
scar (5); ``regions_class_order`` (2, 3, 1, 4, 5): later regions overwrite earlier ones, so a
prediction converts back to labels 1-5 (myocardium, then edema inside it, then scar inside that).
``--no-regions``: plain labels 1-5 (softmax training) instead.

``--slices`` (the published 2D-slice protocol of PASSION / DMAF-Net): every slice K (along z) of a
volume becomes the case ``myops_training_1XX_slice_K`` (one-slice image, spacing and direction kept,
origin of the slice), default ``Dataset531_MyoPS2020Slices``; train with nnU-Net's ``2d``
configuration, apply the published 80 / 22 slice lists and long-tail tables with
``nnUNetv2_dmaf_apply_protocol``. ``nnUNetv2_dmaf_myops_to_submission`` maps predictions back to the
MyoPS label values.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.dataset_conversion.case_conversion import CaseFiles, convert_case, convert_case_slices, write_dataset
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError, ConversionUsageError
from nnunetv2_dmaf.dataset_conversion.converter_options import add_output_arguments, add_processes_argument
from nnunetv2_dmaf.dataset_conversion.image_files import DEFAULT_GEOMETRY_TOLERANCE
from nnunetv2_dmaf.dataset_conversion.label_files import convert_label_folder, remap_labels
from nnunetv2_dmaf.dataset_conversion.output_folders import check_output_target, dataset_folder, output_root
from nnunetv2_dmaf.user_errors import run_main

CHANNEL_NAMES: tuple[str, ...] = ("C0", "DE", "T2")
#: MyoPS label -> nnU-Net label
MYOPS_TO_NNUNET: dict[int, int] = {0: 0, 200: 1, 500: 2, 600: 3, 1220: 4, 2221: 5}
NNUNET_TO_MYOPS: dict[int, int] = {v: k for k, v in MYOPS_TO_NNUNET.items()}
REGION_LABELS: dict[str, int | tuple[int, ...]] = {
    "background": 0, "LV blood pool": (2,), "RV blood pool": (3,), "myocardium": (1, 4, 5),
    "edema+scar": (4, 5), "scar": (5,)}
REGIONS_CLASS_ORDER: tuple[int, ...] = (2, 3, 1, 4, 5)
PLAIN_LABELS: dict[str, int] = {"background": 0, "normal myocardium": 1, "LV blood pool": 2, "RV blood pool": 3,
                                "edema": 4, "scar": 5}
DEFAULT_ID, DEFAULT_NAME = 530, "MyoPS2020"
SLICES_ID, SLICES_NAME = 531, "MyoPS2020Slices"
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES = "train25", "train25_myops_gd", "test20"
REFERENCE = "https://zmiclab.github.io/zxh/0/myops20/"

_IMAGE_PATTERN = re.compile(r"^(?P<case>.+)_(?:C0|DE|T2)\.nii(?:\.gz)?$")
_LABEL_PATTERN = re.compile(r"^(?P<case>.+)_gd\.nii(?:\.gz)?$")


def nnunet_to_myops_labels(array: np.ndarray) -> np.ndarray:
    """nnU-Net labels 0-5 -> MyoPS labels (uint16); inverse of the conversion."""
    return remap_labels(array, NNUNET_TO_MYOPS)


def convert_predictions_to_myops(input_folder: Path, output_folder: Path, overwrite: bool = False,
                                 num_processes: int = 1) -> list[Path]:
    """nnU-Net predictions (labels 0-5, as nnUNetv2_predict writes them for this dataset, region-based
    or not) -> MyoPS label values 0/200/500/600/1220/2221 (uint16), same names and geometry."""
    return convert_label_folder(input_folder, output_folder, NNUNET_TO_MYOPS, overwrite, num_processes)


def _case_file(folder: Path, case_id: str, suffix: str) -> Path:
    candidates = [folder / f"{case_id}_{suffix}.nii.gz", folder / f"{case_id}_{suffix}.nii"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _case_ids(folder: Path, pattern: re.Pattern) -> set[str]:
    if not folder.is_dir():
        raise ConversionUsageError(f"input folder not found: {folder}")
    return {m["case"] for f in folder.iterdir() if f.is_file() and (m := pattern.match(f.name))}


def find_cases(images_folder: Path, labels_folder: Path | None) -> list[CaseFiles]:
    """Cases named by any image (``<case>_{C0,DE,T2}``) or label (``<case>_gd``) file, sorted by id."""
    case_ids = _case_ids(images_folder, _IMAGE_PATTERN)
    if labels_folder is not None:
        case_ids |= _case_ids(labels_folder, _LABEL_PATTERN)
    if not case_ids:
        raise ConversionError(f"no MyoPS images (<case>_C0.nii.gz, <case>_DE.nii.gz, <case>_T2.nii.gz) in "
                              f"{images_folder}")
    return [CaseFiles(c, tuple(_case_file(images_folder, c, ch) for ch in CHANNEL_NAMES),
                      _case_file(labels_folder, c, "gd") if labels_folder is not None else None)
            for c in sorted(case_ids)]


def convert_myops2020(input_folder: Path | None = None, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME,
                      output_root_folder: Path | None = None, train_images: Path | None = None,
                      train_labels: Path | None = None, test_images: Path | None = None, use_regions: bool = True,
                      overwrite: bool = False, num_processes: int = 1,
                      geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE, slices: bool = False) -> Path:
    """Converts MyoPS 2020 training (and test, if found) data; returns the dataset folder. Writes
    nothing unless every case converts (raises ConversionError otherwise)."""
    base = Path(input_folder) if input_folder is not None else None
    if base is None and (train_images is None or train_labels is None):
        raise ConversionUsageError("give the MyoPS folder (-i) or both --train-images and --train-labels")
    train_images = Path(train_images) if train_images else base / TRAIN_IMAGES
    train_labels = Path(train_labels) if train_labels else base / TRAIN_LABELS
    if test_images is None and base is not None and (base / TEST_IMAGES).is_dir():
        test_images = base / TEST_IMAGES
    target = dataset_folder(output_root(output_root_folder), dataset_id, name)
    check_output_target(target, overwrite)
    train = find_cases(train_images, train_labels)
    test = find_cases(Path(test_images), None) if test_images is not None else []
    return write_dataset(
        target, train, test, MYOPS_TO_NNUNET, geometry_tolerance, num_processes, overwrite, CHANNEL_NAMES,
        REGION_LABELS if use_regions else PLAIN_LABELS, REGIONS_CLASS_ORDER if use_regions else None,
        converter=convert_case_slices if slices else convert_case, reference=REFERENCE, license=f"see {REFERENCE}",
        description="MyoPS 2020 converted by nnunetv2_dmaf; labels: 1 normal myocardium (200), 2 LV blood "
                    "pool (500), 3 RV blood pool (600), 4 edema (1220), 5 scar (2221)"
                    + ("; one case per slice (<case>_slice_K)" if slices else ""))


def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_convert_myops``: MyoPS 2020 -> nnU-Net raw."""
    run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> None:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_convert_myops",
        description="Converts MyoPS 2020 (C0, DE, T2; labels 200/500/600/1220/2221) to nnU-Net raw format: "
                    "channels C0, DE, T2; labels 200->1 myocardium, 500->2 LV, 600->3 RV, 1220->4 edema, "
                    "2221->5 scar; regions LV (2), RV (3), myocardium (1,4,5), edema+scar (4,5), scar (5).",
        epilog="Example: nnUNetv2_dmaf_convert_myops -i MyoPS2020  (uses train25/, train25_myops_gd/ and test20/; "
               "-> $nnUNet_raw/Dataset530_MyoPS2020); with --slices -> Dataset531_MyoPS2020Slices")
    parser.add_argument("-i", "--input", type=Path, default=None,
                        help=f"MyoPS folder with {TRAIN_IMAGES}/, {TRAIN_LABELS}/ and optionally {TEST_IMAGES}/")
    parser.add_argument("--train-images", type=Path, default=None, help=f"training images (default: -i/{TRAIN_IMAGES})")
    parser.add_argument("--train-labels", type=Path, default=None,
                        help=f"training labels *_gd (default: -i/{TRAIN_LABELS})")
    parser.add_argument("--test-images", type=Path, default=None,
                        help=f"test images -> imagesTs (default: -i/{TEST_IMAGES} if it exists)")
    parser.add_argument("--no-regions", action="store_true",
                        help="plain labels 1-5 (softmax) instead of region-based training")
    parser.add_argument("--slices", action="store_true",
                        help="one 2D case per slice, <case>_slice_K (the published slice protocol; train with "
                             "nnU-Net's 2d configuration)")
    add_output_arguments(parser, None, None, f"{DEFAULT_ID}, with --slices {SLICES_ID}",
                         f"{DEFAULT_NAME}, with --slices {SLICES_NAME}")
    args = parser.parse_args(argv)
    dataset_id = args.dataset_id if args.dataset_id is not None else (SLICES_ID if args.slices else DEFAULT_ID)
    name = args.name or (SLICES_NAME if args.slices else DEFAULT_NAME)
    target = convert_myops2020(args.input, dataset_id, name, args.output_root, args.train_images, args.train_labels,
                               args.test_images, not args.no_regions, args.overwrite, args.num_processes,
                               args.geometry_tolerance, args.slices)
    print(f"wrote {target}")


def main_to_submission(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_myops_to_submission``: nnU-Net predictions (0-5) -> MyoPS labels."""
    run_main(_main_to_submission, argv)


def _main_to_submission(argv: Sequence[str] | None) -> None:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_myops_to_submission",
        description="Converts nnU-Net MyoPS predictions (labels 0-5 as written by nnUNetv2_predict) back to the MyoPS "
                    "label values: 1 -> 200 normal myocardium, 2 -> 500 LV, 3 -> 600 RV, 4 -> 1220 edema, "
                    "5 -> 2221 scar (uint16). Files keep their names and geometry; inputs are never modified.",
        epilog="Example: nnUNetv2_dmaf_myops_to_submission -i predictions -o submission")
    parser.add_argument("-i", "--input", required=True, type=Path, help="folder with predicted .nii.gz files")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder (must differ from -i)")
    parser.add_argument("--overwrite", action="store_true", help="replace same-named files in the output folder")
    add_processes_argument(parser)
    args = parser.parse_args(argv)
    written = convert_predictions_to_myops(args.input, args.output, args.overwrite, args.num_processes)
    print(f"wrote {len(written)} file(s) to {args.output}")


if __name__ == "__main__":
    main()

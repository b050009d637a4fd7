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
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset_conversion._common import (DEFAULT_GEOMETRY_TOLERANCE, CaseFiles, ConversionError,
                                        add_output_arguments, check_output_target, dataset_folder, output_root,
                                        run_cli, write_dataset)

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
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES = "train25", "train25_myops_gd", "test20"
REFERENCE = "https://zmiclab.github.io/zxh/0/myops20/"

_IMAGE_PATTERN = re.compile(r"^(?P<case>.+)_(?:C0|DE|T2)\.nii(?:\.gz)?$")
_LABEL_PATTERN = re.compile(r"^(?P<case>.+)_gd\.nii(?:\.gz)?$")


def nnunet_to_myops_labels(array: np.ndarray) -> np.ndarray:
    """nnU-Net labels 0-5 -> MyoPS labels (uint16); inverse of the conversion."""
    out = np.zeros(array.shape, dtype=np.uint16)
    for src, dst in NNUNET_TO_MYOPS.items():
        out[array == src] = dst
    return out


def _case_file(folder: Path, case_id: str, suffix: str) -> Path:
    candidates = [folder / f"{case_id}_{suffix}.nii.gz", folder / f"{case_id}_{suffix}.nii"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _case_ids(folder: Path, pattern: re.Pattern) -> set[str]:
    if not folder.is_dir():
        raise ConversionError(f"input folder not found: {folder}")
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
                      geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> Path:
    """Converts MyoPS 2020 training (and test, if found) data; returns the dataset folder. Writes
    nothing unless every case converts (raises ConversionError otherwise)."""
    base = Path(input_folder) if input_folder is not None else None
    if base is None and (train_images is None or train_labels is None):
        raise ConversionError("give the MyoPS folder (-i) or both --train-images and --train-labels")
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
        reference=REFERENCE, license=f"see {REFERENCE}",
        description="MyoPS 2020 converted by nnunetv2_dmaf; labels: 1 normal myocardium (200), 2 LV blood "
                    "pool (500), 3 RV blood pool (600), 4 edema (1220), 5 scar (2221)")


def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_convert_myops``: MyoPS 2020 -> nnU-Net raw."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_dmaf_convert_myops",
        description="Converts MyoPS 2020 (C0, DE, T2; labels 200/500/600/1220/2221) to nnU-Net raw format: "
                    "channels C0, DE, T2; labels 200->1 myocardium, 500->2 LV, 600->3 RV, 1220->4 edema, "
                    "2221->5 scar; regions LV (2), RV (3), myocardium (1,4,5), edema+scar (4,5), scar (5).",
        epilog="Example: nnUNetv2_dmaf_convert_myops -i MyoPS2020  (uses train25/, train25_myops_gd/ and test20/; "
               "-> $nnUNet_raw/Dataset530_MyoPS2020)")
    parser.add_argument("-i", "--input", type=Path, default=None,
                        help=f"MyoPS folder with {TRAIN_IMAGES}/, {TRAIN_LABELS}/ and optionally {TEST_IMAGES}/")
    parser.add_argument("--train-images", type=Path, default=None, help=f"training images (default: -i/{TRAIN_IMAGES})")
    parser.add_argument("--train-labels", type=Path, default=None,
                        help=f"training labels *_gd (default: -i/{TRAIN_LABELS})")
    parser.add_argument("--test-images", type=Path, default=None,
                        help=f"test images -> imagesTs (default: -i/{TEST_IMAGES} if it exists)")
    parser.add_argument("--no-regions", action="store_true",
                        help="plain labels 1-5 (softmax) instead of region-based training")
    add_output_arguments(parser, DEFAULT_ID, DEFAULT_NAME)
    args = parser.parse_args(argv)
    target = run_cli(convert_myops2020, args.input, args.dataset_id, args.name, args.output_root,
                     args.train_images, args.train_labels, args.test_images, not args.no_regions,
                     args.overwrite, args.num_processes, args.geometry_tolerance)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

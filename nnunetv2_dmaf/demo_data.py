"""A small synthetic BraTS-like dataset in nnU-Net raw format, for tests and the quick-start.

Each case is a brain-shaped ellipsoid (background outside is 0 in every channel, as in BraTS)
with one tumour: edema (label 1) around a core of necrosis (label 2) and an enhancing rim
(label 3). The four channels (nnU-Net's BraTS order T1, T1ce, T2, FLAIR) carry different
information, so that missing modalities matter:

=========  =====  =====  =========  ========
channel    brain  edema  necrosis   enhancing
=========  =====  =====  =========  ========
T1         100    95     60         100
T1ce       100    100    60         230       (only channel showing the enhancing rim)
T2         100    180    180        180       (whole tumour only)
FLAIR      100    200    150        170       (whole tumour, weak core contrast)
=========  =====  =====  =========  ========

plus Gaussian noise (sigma 10). Every fourth case has no enhancing tumour (empty ET region), so
the BraTS "both empty" Dice rule is exercised.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunetv2_dmaf.atomic_files import PARTIAL_MARKER, atomic_output, partial_outputs
from nnunetv2_dmaf.channel_files import channel_file_name
from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.user_errors import DataError, UsageError, run_main

CHANNEL_NAMES = ("T1", "T1ce", "T2", "FLAIR")
#: mean intensity of [brain, edema, necrosis, enhancing] per channel
CHANNEL_INTENSITIES = {
    "T1": (100.0, 95.0, 60.0, 100.0),
    "T1ce": (100.0, 100.0, 60.0, 230.0),
    "T2": (100.0, 180.0, 180.0, 180.0),
    "FLAIR": (100.0, 200.0, 150.0, 170.0),
}
NOISE_SIGMA = 10.0
BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
DEFAULT_DATASET_ID = 990
DEFAULT_DATASET_NAME = "DMAFDemo"


def _ellipsoid(grid: list[np.ndarray], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_case(shape: tuple[int, int, int], rng: np.random.Generator, with_enhancing: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
    """Returns images [4, *shape] float32 (T1, T1ce, T2, FLAIR) and labels [*shape] uint8."""
    shape_arr = np.asarray(shape, dtype=float)
    grid = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    center = shape_arr / 2 + rng.uniform(-1, 1, 3)
    brain = _ellipsoid(grid, center, shape_arr * rng.uniform(0.40, 0.46, 3))

    tumour_center = center + rng.uniform(-0.12, 0.12, 3) * shape_arr
    edema_radius = shape_arr * rng.uniform(0.18, 0.24, 3)
    core_radius = edema_radius * rng.uniform(0.5, 0.65)
    edema = _ellipsoid(grid, tumour_center, edema_radius) & brain
    core = _ellipsoid(grid, tumour_center, core_radius) & brain
    necrosis = _ellipsoid(grid, tumour_center, core_radius * 0.6) & brain

    labels = np.zeros(shape, dtype=np.uint8)
    labels[edema] = 1
    if with_enhancing:
        labels[core] = 3
        labels[necrosis] = 2
    else:
        labels[core] = 2

    images = np.zeros((len(CHANNEL_NAMES),) + tuple(shape), dtype=np.float32)
    for c, name in enumerate(CHANNEL_NAMES):
        brain_value, edema_value, necrosis_value, enhancing_value = CHANNEL_INTENSITIES[name]
        img = np.full(shape, brain_value, dtype=np.float32)
        img[labels == 1] = edema_value
        img[labels == 2] = necrosis_value
        img[labels == 3] = enhancing_value
        img += rng.normal(0, NOISE_SIGMA, shape).astype(np.float32)
        img[~brain] = 0
        images[c] = np.clip(img, 0, None)
    return images, labels


def _write(array: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=True)


def generate_demo_dataset(raw_root: str | os.PathLike, dataset_id: int = DEFAULT_DATASET_ID,
                          dataset_name: str = DEFAULT_DATASET_NAME, num_training: int = 12,
                          num_test: int = 4, shape: tuple[int, int, int] = (32, 32, 32),
                          spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), seed: int = 0,
                          overwrite: bool = False) -> Path:
    """Writes ``raw_root/DatasetXXX_Name`` with imagesTr/labelsTr/imagesTs/labelsTs and dataset.json.

    Returns the dataset folder. Refuses to touch an existing folder unless ``overwrite``. The dataset
    is written to a hidden temporary folder next to it and renamed when complete, so an interrupted
    run leaves no half-written dataset (and an existing one untouched).
    """
    if num_training < 2:
        raise ValueError(f"num_training must be >= 2 (nnU-Net needs a train/val split), got {num_training}")
    if num_test < 0:
        raise ValueError(f"num_test must be >= 0, got {num_test}")
    if min(shape) < 8:
        raise ValueError(f"shape must be at least 8 voxels per axis, got {shape}")
    if not 0 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be in 0..999 (nnU-Net's DatasetXXX), got {dataset_id}")
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{dataset_name}"
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; pass overwrite=True (--overwrite) to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    for leftover in partial_outputs(folder.parent):  # of this dataset only: others may be another tool's
        if leftover.name.startswith(f".{folder.name}{PARTIAL_MARKER}"):
            shutil.rmtree(leftover, ignore_errors=True)
            print(f"Removed {leftover}, left by an interrupted earlier run")
    with atomic_output(folder) as staging:
        _write_dataset(staging, dataset_name, num_training, num_test, shape, spacing, seed)
        if folder.exists():
            shutil.rmtree(folder)
    return folder


def _write_dataset(folder: Path, dataset_name: str, num_training: int, num_test: int, shape: tuple[int, int, int],
                   spacing: tuple[float, float, float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, count, offset in (("Tr", num_training, 0), ("Ts", num_test, num_training)):
        (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            case_id = f"{dataset_name}_{offset + i:03d}"
            images, labels = make_case(shape, rng, with_enhancing=(offset + i) % 4 != 3)
            for c in range(len(CHANNEL_NAMES)):
                _write(images[c], folder / f"images{split}" / channel_file_name(case_id, c, ".nii.gz"), spacing)
            _write(labels, folder / f"labels{split}" / f"{case_id}.nii.gz", spacing)
    dataset_json = {
        "channel_names": {str(i): n for i, n in enumerate(CHANNEL_NAMES)},
        "labels": BRATS_LABELS,
        "regions_class_order": [1, 2, 3],
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": dataset_name,
        "description": "Synthetic BraTS-like data from nnunetv2_dmaf.demo_data (T1ce alone shows the "
                       "enhancing tumour; T2/FLAIR show the whole tumour).",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


def make_demo_dataset(argv: Sequence[str] | None = None) -> None:
    """The command's work; user errors raise UsageError/DataError."""
    parser = CommandLineParser(prog="nnUNetv2_dmaf_make_demo_dataset",
                               description="Write a small synthetic BraTS-like 4-modality dataset (T1, T1ce, T2, "
                                           "FLAIR) in nnU-Net raw format.")
    parser.add_argument("-d", "--dataset-id", type=int, default=DEFAULT_DATASET_ID)
    parser.add_argument("--name", default=DEFAULT_DATASET_NAME, help="dataset name (default %(default)s)")
    parser.add_argument("-n", "--num-training", type=int, default=12)
    parser.add_argument("--num-test", type=int, default=4, help="cases in imagesTs/labelsTs")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 32))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output-root", default=None,
                        help="raw data root (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    args = parser.parse_args(argv)
    root = args.output_root or os.environ.get("nnUNet_raw")
    if not root:
        raise UsageError("no output folder: set nnUNet_raw or pass --output-root")
    if Path(root).exists() and not Path(root).is_dir():
        raise UsageError(f"--output-root {root}: exists and is not a folder")
    try:
        folder = generate_demo_dataset(root, args.dataset_id, args.name, args.num_training, args.num_test,
                                       tuple(args.shape), seed=args.seed, overwrite=args.overwrite)
    except FileExistsError as e:
        raise DataError(str(e).replace("overwrite=True (--overwrite)", "--overwrite")) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise DataError(f"cannot write the dataset under {root}: {e.strerror} ({e.filename})") from None
    print(f"Wrote {folder}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``nnUNetv2_dmaf_make_demo_dataset``."""
    run_main(make_demo_dataset, argv)


if __name__ == "__main__":
    main()

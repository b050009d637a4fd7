"""Console script ``nnUNetv2_dmaf_make_availability_table``: writes a per-case modality availability
table (``modality_availability.csv``) for any nnU-Net raw dataset and any missing rates.

Each case drops modality m independently with probability r_m, conditioned on keeping at least one
modality (the same distribution the training-time dropout samples from), using
``numpy.random.default_rng(seed)`` over the case ids in sorted order: the same dataset, rates and
seed always give the same table. User errors end in one line (exit 2: bad option, 1: bad or refused
file); the table is written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnunetv2_dmaf.availability import availability_table_path, write_availability_table
from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.inference.model_options import dataset_name, read_json_object
from nnunetv2_dmaf.modalities import channel_names_from_dataset_json
from nnunetv2_dmaf.training.modality_dropout import parse_missing_rates, sample_modality_mask
from nnunetv2_dmaf.user_errors import DataError, UsageError, one_line, run_main


def sample_availability_table(case_ids: Sequence[str], missing_rates: np.ndarray, seed: int = 0
                              ) -> dict[str, np.ndarray]:
    """case id -> bool [M]; reproducible from ``seed`` (cases are drawn in sorted order)."""
    rng = np.random.default_rng(seed)
    rates = torch.as_tensor(np.asarray(missing_rates, dtype=np.float64))
    available = torch.ones(len(missing_rates), dtype=torch.bool)
    return {case_id: sample_modality_mask(available, rates, rng).numpy() for case_id in sorted(case_ids)}


def training_case_ids(raw_dataset_folder: Path, dataset_json: dict) -> list[str]:
    """nnU-Net's training case identifiers (imagesTr, or the 'dataset' entry of dataset.json)."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    return sorted(get_filenames_of_train_images_and_targets(str(raw_dataset_folder), dataset_json))


def _raw_dataset_folder(dataset: str) -> Path:
    folder = Path(dataset)
    if folder.is_dir():
        return folder
    if not os.environ.get("nnUNet_raw"):
        raise UsageError(f"-d {dataset}: not a folder, and nnUNet_raw is not set")
    folder = Path(os.environ["nnUNet_raw"]) / dataset_name(dataset)
    if not folder.is_dir():
        raise UsageError(f"-d {dataset}: no raw dataset folder {folder}")
    return folder


def _output_path(output: str | None, raw_folder: Path, overwrite: bool) -> Path:
    path = Path(output) if output else availability_table_path(raw_folder)
    if path.is_dir():
        raise UsageError(f"-o {path}: is a folder; give the CSV file to write")
    if not path.parent.is_dir():
        raise UsageError(f"-o {path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; pass --overwrite to replace it")
    return path


def make_table(argv: Sequence[str] | None = None) -> None:
    """The command's work; user errors raise UsageError/DataError."""
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_make_availability_table",
        description="Write modality_availability.csv (case_id,<channel names>; 1 = available) for an nnU-Net raw "
                    "dataset, drawing each case's modalities with per-modality missing rates.")
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset id or name (in $nnUNet_raw) or a raw dataset folder")
    parser.add_argument("-r", "--rates", required=True,
                        help="missing rates by dataset.json channel name, e.g. 'FLAIR:0.6,T1:0.2' (others 0)")
    parser.add_argument("-s", "--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("-o", "--output", default=None,
                        help="output CSV (default: <raw dataset folder>/modality_availability.csv, where training "
                             "picks it up)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing table")
    args = parser.parse_args(argv)
    folder = _raw_dataset_folder(args.dataset)
    dataset_json_file = folder / "dataset.json"
    if not dataset_json_file.is_file():
        raise DataError(f"{dataset_json_file}: no such file (not an nnU-Net raw dataset folder)")
    dataset_json = read_json_object(dataset_json_file, ("channel_names", "file_ending"))
    try:
        names = channel_names_from_dataset_json(dataset_json)
    except ValueError as e:
        raise DataError(f"{dataset_json_file}: {e}") from None
    try:
        rates = parse_missing_rates(args.rates, names)
    except ValueError as e:
        raise UsageError(f"-r {args.rates}: {e}") from None
    output = _output_path(args.output, folder, args.overwrite)
    try:
        case_ids = training_case_ids(folder, dataset_json)
    except (OSError, RuntimeError, ValueError, KeyError) as e:  # nnU-Net's checks of imagesTr / dataset.json
        raise DataError(f"{folder}: cannot list the training cases ({one_line(e)})") from None
    if not case_ids:
        raise DataError(f"{folder}: no training cases found (imagesTr empty?)")
    table = sample_availability_table(case_ids, rates, args.seed)
    write_availability_table(output, table, names)
    masks = np.stack(list(table.values()))
    realised = ", ".join(f"{n} {1 - masks[:, i].mean():.3f} (asked {r:g})"
                         for i, (n, r) in enumerate(zip(names, rates)))
    print(f"Wrote {output}: {len(table)} cases, seed {args.seed}; missing fraction per modality: {realised}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``nnUNetv2_dmaf_make_availability_table``."""
    run_main(make_table, argv)


if __name__ == "__main__":
    main()

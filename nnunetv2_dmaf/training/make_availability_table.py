"""Console script ``nnUNetv2_dmaf_make_availability_table``: writes a per-case modality availability
table (``modality_availability.csv``) for any nnU-Net raw dataset and any missing rates.

Each case drops modality m independently with probability r_m, conditioned on keeping at least one
modality (the same distribution the training-time dropout samples from), using
``numpy.random.default_rng(seed)`` over the case ids in sorted order: the same dataset, rates and
seed always give the same table.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnunetv2_dmaf.availability import availability_table_path, write_availability_table
from nnunetv2_dmaf.modalities import channel_names_from_dataset_json
from nnunetv2_dmaf.training.modality_dropout import parse_missing_rates, sample_modality_mask


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
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    if not os.environ.get("nnUNet_raw"):
        raise ValueError(f"{dataset!r} is not a folder and nnUNet_raw is not set")
    return Path(os.environ["nnUNet_raw"]) / maybe_convert_to_dataset_name(dataset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
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
    try:
        folder = _raw_dataset_folder(args.dataset)
        dataset_json_file = folder / "dataset.json"
        if not dataset_json_file.is_file():
            raise ValueError(f"no dataset.json in {folder}")
        dataset_json = json.loads(dataset_json_file.read_text())
        names = channel_names_from_dataset_json(dataset_json)
        rates = parse_missing_rates(args.rates, names)
        case_ids = training_case_ids(folder, dataset_json)
        if not case_ids:
            raise ValueError(f"no training cases found in {folder}")
        output = Path(args.output) if args.output else availability_table_path(folder)
        if output.exists() and not args.overwrite:
            raise ValueError(f"{output} already exists; pass --overwrite to replace it")
        table = sample_availability_table(case_ids, rates, args.seed)
        write_availability_table(output, table, names)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(1, f"error: {e}\n")
    masks = np.stack(list(table.values()))
    realised = ", ".join(f"{n} {1 - masks[:, i].mean():.3f} (asked {r:g})"
                         for i, (n, r) in enumerate(zip(names, rates)))
    print(f"Wrote {output}: {len(table)} cases, seed {args.seed}; missing fraction per modality: {realised}")


if __name__ == "__main__":
    main()

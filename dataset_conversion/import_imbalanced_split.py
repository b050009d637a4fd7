"""Published imbalanced missing-modality split table -> ``modality_availability.csv`` of a converted
dataset (the per-case availability input of the DMAF trainer, see ``nnunetv2_dmaf.availability``).

Split tables (e.g. ``shared/data/imbalanced_splits/Brats2020_imb_split_mr2468.csv``) have the columns
``data_name,mask_id,mask,pos_mask_ids``; ``mask`` is a Python list of 4 booleans in the modality order
[flair, t1ce, t1, t2] (True = available), as written by the tables' generator (PASSION's
``generate_imb_mr.py``); only ``data_name`` and ``mask`` are used. The digits in the file name are the
missing rates x 10 in the order T1, T1ce, FLAIR, T2 (``mr2468``: T1 0.2, T1ce 0.4, FLAIR 0.6, T2 0.8).

* Case ids: ``data_name`` without a grade prefix ``HG_``/``LG_`` (``HG_BraTS20_Training_002`` ->
  ``BraTS20_Training_002``; ``Brats18_2013_0_1`` is used as is), matched against the dataset's
  training cases (imagesTr). Unmatched table cases are an error (``--allow-missing-cases``: warn, skip).
* Modalities are mapped to the dataset.json channel names by name, case-insensitively
  (flair -> FLAIR, t1ce -> T1ce, t1 -> T1, t2 -> T2), whatever the channel order.
* Training cases without a row (the published tables cover the training split only) are reported;
  ``--complete-unlisted`` writes them with every modality available. The DMAF trainer needs a row
  for every case it trains or validates on.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset_conversion._common import ConversionError, format_list, output_root, run_cli
from nnunetv2_dmaf.availability import AvailabilityTableError, availability_table_path, write_availability_table

TABLE_MODALITIES: tuple[str, ...] = ("flair", "t1ce", "t1", "t2")
GRADE_PREFIXES: tuple[str, ...] = ("HG_", "LG_")


@dataclass
class ImportResult:
    path: Path
    written: int  # rows written
    skipped: list[str]  # table cases not in the dataset (only with allow_missing_cases)
    unlisted: list[str]  # dataset training cases without a table row
    completed_unlisted: bool  # unlisted cases written with every modality available


def case_id_from_data_name(data_name: str) -> str:
    """``HG_BraTS20_Training_002`` -> ``BraTS20_Training_002``; other names unchanged."""
    data_name = data_name.strip()
    for prefix in GRADE_PREFIXES:
        if data_name.startswith(prefix):
            return data_name[len(prefix):]
    return data_name


def read_split_table(path: Path) -> dict[str, np.ndarray]:
    """Case id -> bool [4] in TABLE_MODALITIES order, from a published split table."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"split table not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "data_name" not in fields or "mask" not in fields:
            raise ConversionError(f"{path}: expected columns data_name and mask, found {fields}")
        reader.fieldnames = fields
        table: dict[str, np.ndarray] = {}
        lines: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            case_id = case_id_from_data_name(row["data_name"] or "")
            if not case_id:
                raise ConversionError(f"{path}, line {line}: empty data_name")
            try:
                mask = ast.literal_eval((row["mask"] or "").strip())
            except (ValueError, SyntaxError):
                mask = None
            if not (isinstance(mask, (list, tuple)) and len(mask) == len(TABLE_MODALITIES)
                    and all(isinstance(v, bool) for v in mask)):
                raise ConversionError(f"{path}, line {line}: mask must be a list of {len(TABLE_MODALITIES)} "
                                      f"booleans [{', '.join(TABLE_MODALITIES)}], got {row['mask']!r}")
            if not any(mask):
                raise ConversionError(f"{path}, line {line}: case {case_id} has no available modality")
            if case_id in table:
                raise ConversionError(f"{path}, line {line}: case {case_id} also on line {lines[case_id]}")
            table[case_id], lines[case_id] = np.array(mask, dtype=bool), line
    if not table:
        raise ConversionError(f"{path}: no rows")
    return table


def resolve_dataset_folder(dataset: str, raw_root: Path | None = None) -> Path:
    """Dataset folder from an id (``520``), a name (``Dataset520_BraTS2020``) in the raw root, or a path."""
    if dataset.isdigit():
        root = output_root(raw_root, "--raw-root")
        matches = sorted(p for p in root.glob(f"Dataset{int(dataset):03d}_*") if p.is_dir()) if root.is_dir() else []
        if len(matches) != 1:
            raise ConversionError(f"{'no' if not matches else 'more than one'} dataset with id {dataset} in {root}"
                                  f"{format_list(matches) if matches else ''}")
        return matches[0]
    path = Path(dataset)
    if not path.is_dir():
        path = output_root(raw_root, "--raw-root") / dataset
    if not (path / "dataset.json").is_file():
        raise ConversionError(f"not an nnU-Net raw dataset folder (no dataset.json): {path}")
    return path


def dataset_channels_and_cases(folder: Path) -> tuple[list[str], list[str]]:
    """Channel names (channel index order) and training case ids of a raw dataset folder."""
    try:
        meta = json.loads((folder / "dataset.json").read_text())
        names = meta["channel_names"]
        channel_names = [str(names[k]) for k in sorted(names, key=int)]
        file_ending = meta["file_ending"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{folder / 'dataset.json'}: unreadable or incomplete ({e})") from None
    if isinstance(meta.get("dataset"), dict):  # nnU-Net's file-list variant
        return channel_names, sorted(meta["dataset"])
    images = folder / "imagesTr"
    if not images.is_dir():
        raise ConversionError(f"no imagesTr folder in {folder}")
    suffix = f"_0000{file_ending}"
    return channel_names, sorted(p.name[:-len(suffix)] for p in images.iterdir() if p.name.endswith(suffix))


def table_to_channel_index(channel_names: Sequence[str]) -> list[int]:
    """For each dataset channel (in order) the index of its modality in TABLE_MODALITIES (by name)."""
    keys = [n.strip().lower() for n in channel_names]
    unknown = [n for n, k in zip(channel_names, keys) if k not in TABLE_MODALITIES]
    absent = [m for m in TABLE_MODALITIES if m not in keys]
    if unknown or absent or len(keys) != len(TABLE_MODALITIES):
        raise ConversionError(f"the dataset's channel names {list(channel_names)} must match the split table's "
                              f"modalities {list(TABLE_MODALITIES)} (case-insensitive)"
                              + (f"; no table modality for {unknown}" if unknown else "")
                              + (f"; no channel for {absent}" if absent else ""))
    return [TABLE_MODALITIES.index(k) for k in keys]


def import_split(table_path: Path, dataset_folder: Path, output: Path | None = None,
                 allow_missing_cases: bool = False, complete_unlisted: bool = False,
                 overwrite: bool = False) -> ImportResult:
    """Writes the availability table for ``dataset_folder`` from a published split table."""
    dataset_folder = Path(dataset_folder)
    output = Path(output) if output is not None else availability_table_path(dataset_folder)
    if output.exists() and not overwrite:
        raise ConversionError(f"{output} already exists; pass --overwrite to replace it")
    channel_names, cases = dataset_channels_and_cases(dataset_folder)
    order = table_to_channel_index(channel_names)
    split = read_split_table(table_path)
    skipped = sorted(set(split) - set(cases))
    if skipped and not allow_missing_cases:
        raise ConversionError(f"{len(skipped)} case(s) of {table_path} are not training cases of {dataset_folder} "
                              f"(pass --allow-missing-cases to skip them):{format_list(skipped)}")
    table = {c: m[order] for c, m in split.items() if c not in skipped}
    if not table:
        raise ConversionError(f"no case of {table_path} is a training case of {dataset_folder}")
    unlisted = sorted(set(cases) - set(table))
    if complete_unlisted:
        table.update({c: np.ones(len(channel_names), dtype=bool) for c in unlisted})
    try:
        write_availability_table(output, table, channel_names)
    except AvailabilityTableError as e:
        raise ConversionError(str(e)) from None
    return ImportResult(output, len(table), skipped, unlisted, complete_unlisted)


def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_import_split``: split table -> modality_availability.csv."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_dmaf_import_split",
        description="Turns a published imbalanced-missing-modality split table (data_name, mask as "
                    "[flair, t1ce, t1, t2] booleans) into modality_availability.csv (case_id,<channel names>, "
                    "1 = available) in the converted nnU-Net raw dataset folder. Modalities are mapped by name, "
                    "case ids with the HG_/LG_ prefix removed.",
        epilog="Example: nnUNetv2_dmaf_import_split -i shared/data/imbalanced_splits/Brats2020_imb_split_mr2468.csv "
               "-d 520  (-> $nnUNet_raw/Dataset520_BraTS2020/modality_availability.csv)")
    parser.add_argument("-i", "--input", required=True, type=Path, help="split table (.csv)")
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset id (520), folder name (Dataset520_BraTS2020) or path of the raw dataset")
    parser.add_argument("--raw-root", type=Path, default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output file (default: <dataset folder>/modality_availability.csv)")
    parser.add_argument("--allow-missing-cases", action="store_true",
                        help="skip (with a warning) table cases that are not training cases of the dataset")
    parser.add_argument("--complete-unlisted", action="store_true",
                        help="write training cases that have no table row with every modality available")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)

    def run() -> ImportResult:
        folder = resolve_dataset_folder(args.dataset, args.raw_root)
        return import_split(args.input, folder, args.output, args.allow_missing_cases, args.complete_unlisted,
                            args.overwrite)

    result = run_cli(run)
    if result.skipped:
        print(f"warning: skipped {len(result.skipped)} table case(s) that are not training cases of the dataset:"
              f"{format_list(result.skipped)}", file=sys.stderr)
    if result.unlisted and result.completed_unlisted:
        print(f"note: {len(result.unlisted)} training case(s) without a table row written with every modality "
              f"available", file=sys.stderr)
    elif result.unlisted:
        print(f"warning: {len(result.unlisted)} training case(s) have no row (the DMAF trainer needs one for every "
              f"case it trains/validates on; see --complete-unlisted):{format_list(result.unlisted)}",
              file=sys.stderr)
    print(f"wrote {result.path} ({result.written} cases)")


if __name__ == "__main__":
    main()

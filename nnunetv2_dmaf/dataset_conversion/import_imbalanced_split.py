"""Published imbalanced missing-modality split table -> ``modality_availability.csv`` of a converted
dataset (the per-case availability input of the DMAF trainer, see ``nnunetv2_dmaf.availability``).

Split tables (e.g. ``shared/data/imbalanced_splits/Brats2020_imb_split_mr2468.csv``) have the columns
``data_name,mask_id,mask,pos_mask_ids``; ``mask`` is a Python list of booleans (True = available) in
the modality order of the tables' generator (PASSION's ``generate_imb_mr.py``): 4 values = BraTS
[flair, t1ce, t1, t2], 3 values = MyoPS [C0, DE, T2] (the per-slice long-tail tables); only
``data_name`` and ``mask`` are used. The digits in the file name are the
missing rates x 10 in the order T1, T1ce, FLAIR, T2 (``mr2468``: T1 0.2, T1ce 0.4, FLAIR 0.6, T2 0.8).

* Case ids: ``data_name`` without a grade prefix ``HG_``/``LG_`` (``HG_BraTS20_Training_002`` ->
  ``BraTS20_Training_002``; ``Brats18_2013_0_1`` is used as is), matched against the dataset's
  training cases (imagesTr). Unmatched table cases are an error (``--allow-missing-cases``: warn, skip).
* Modalities are mapped to the dataset.json channel names by name, case-insensitively, whatever the
  channel order: flair = FLAIR/T2f, t1ce = T1ce/T1c/T1Gd, t1 = T1/T1n/T1w, t2 = T2/T2w (so BraTS
  2023+ names and nnU-Net's MSD Task01 names ``FLAIR, T1w, t1gd, T2w`` work too); MyoPS C0 = bSSFP,
  DE = LGE, T2.
* Training cases without a row (the published tables cover the training split only) are reported;
  ``--complete-unlisted`` writes them with every modality available. The DMAF trainer needs a row
  for every case it trains or validates on.
"""
from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunetv2_dmaf.availability import AvailabilityTableError, availability_table_path, write_availability_table
from nnunetv2_dmaf.channel_files import cases_in_folder
from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.csv_input import read_csv_rows
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError, ConversionUsageError, format_list
from nnunetv2_dmaf.dataset_conversion.output_folders import output_root
from nnunetv2_dmaf.evaluation.paper_conventions import (BRATS_TABLE_MODALITIES, MODALITY_ALIASES,
                                                        MYOPS_TABLE_MODALITIES, table_modality_index)
from nnunetv2_dmaf.user_errors import run_main

#: mask order of the published BraTS tables
TABLE_MODALITIES: tuple[str, ...] = BRATS_TABLE_MODALITIES
#: table modality order by mask length
TABLE_MODALITIES_BY_LENGTH: dict[int, tuple[str, ...]] = {4: BRATS_TABLE_MODALITIES, 3: MYOPS_TABLE_MODALITIES}
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


@dataclass
class SplitTable:
    """A published split table: ``masks`` maps case id -> bool [len(modalities)] in table order."""
    path: Path
    modalities: tuple[str, ...]
    masks: dict[str, np.ndarray]


def read_split_table(path: Path) -> SplitTable:
    """Reads a published split table (any text encoding that ``read_csv_rows`` accepts); the table's
    modality order follows from the mask length (see ``TABLE_MODALITIES_BY_LENGTH``)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"split table not found: {path}")
    rows = read_csv_rows(path)
    if not rows:
        raise ConversionError(f"{path}: empty file")
    fields = [c.strip() for c in rows[0][1]]
    if "data_name" not in fields or "mask" not in fields:
        raise ConversionError(f"{path}: expected columns data_name and mask, found {fields}")
    name_col, mask_col = fields.index("data_name"), fields.index("mask")
    masks: dict[str, np.ndarray] = {}
    lines: dict[str, int] = {}
    modalities: tuple[str, ...] | None = None
    for line, row in rows[1:]:
        if len(row) != len(fields):
            raise ConversionError(f"{path}, line {line}: {len(row)} fields, expected {len(fields)}")
        case_id = case_id_from_data_name(row[name_col])
        if not case_id:
            raise ConversionError(f"{path}, line {line}: empty data_name")
        try:
            mask = ast.literal_eval(row[mask_col].strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            mask = None
        length = len(mask) if isinstance(mask, (list, tuple)) else -1
        expected = len(modalities) if modalities else None
        if not ((expected or length) == length and length in TABLE_MODALITIES_BY_LENGTH
                and all(isinstance(v, bool) for v in mask)):
            shapes = " or ".join(f"{n} booleans [{', '.join(m)}]" for n, m in TABLE_MODALITIES_BY_LENGTH.items()
                                 if expected in (None, n))
            raise ConversionError(f"{path}, line {line}: mask must be a list of {shapes}, got {row[mask_col]!r}")
        modalities = TABLE_MODALITIES_BY_LENGTH[length]
        if not any(mask):
            raise ConversionError(f"{path}, line {line}: case {case_id} has no available modality")
        if case_id in masks:
            raise ConversionError(f"{path}, line {line}: case {case_id} also on line {lines[case_id]}")
        masks[case_id], lines[case_id] = np.array(mask, dtype=bool), line
    if not masks:
        raise ConversionError(f"{path}: no rows")
    return SplitTable(path, modalities, masks)


def resolve_dataset_folder(dataset: str, raw_root: Path | None = None) -> Path:
    """Dataset folder from an id (``520``), a name (``Dataset520_BraTS2020``) in the raw root, or a path."""
    if dataset.isdigit():
        root = output_root(raw_root, "--raw-root")
        matches = sorted(p for p in root.glob(f"Dataset{int(dataset):03d}_*") if p.is_dir()) if root.is_dir() else []
        if len(matches) != 1:
            raise ConversionUsageError(f"{'no' if not matches else 'more than one'} dataset with id {dataset} in {root}"
                                  f"{format_list(matches) if matches else ''}")
        return matches[0]
    path = Path(dataset)
    if not path.is_dir():
        path = output_root(raw_root, "--raw-root") / dataset
    if not (path / "dataset.json").is_file():
        raise ConversionUsageError(f"not an nnU-Net raw dataset folder (no dataset.json): {path}")
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
    return channel_names, cases_in_folder(images, file_ending)


def table_to_channel_index(channel_names: Sequence[str],
                           table_modalities: Sequence[str] = TABLE_MODALITIES) -> list[int]:
    """For each dataset channel (in order) the index of its modality in ``table_modalities``, matched
    by name through ``MODALITY_ALIASES`` (case-insensitive)."""
    index = table_modality_index(channel_names, table_modalities)
    if index is None:
        keys = [n.strip().lower() for n in channel_names]
        modality_of = {alias: m for m in table_modalities for alias in MODALITY_ALIASES.get(m, (m,))}
        unknown = [n for n, k in zip(channel_names, keys) if k not in modality_of]
        absent = [m for m in table_modalities if m not in {modality_of.get(k) for k in keys}]
        raise ConversionError(f"the dataset's channel names {list(channel_names)} must match the split table's "
                              f"modalities {list(table_modalities)} (case-insensitive)"
                              + (f"; no table modality for {unknown}" if unknown else "")
                              + (f"; no channel for {absent}" if absent else ""))
    return index


def masks_in_channel_order(table: SplitTable, channel_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Case id -> bool [M] in the dataset's channel order."""
    order = table_to_channel_index(channel_names, table.modalities)
    return {c: m[order] for c, m in table.masks.items()}


def import_split(table_path: Path, dataset_folder: Path, output: Path | None = None,
                 allow_missing_cases: bool = False, complete_unlisted: bool = False,
                 overwrite: bool = False) -> ImportResult:
    """Writes the availability table for ``dataset_folder`` from a published split table."""
    dataset_folder = Path(dataset_folder)
    output = Path(output) if output is not None else availability_table_path(dataset_folder)
    if not output.parent.is_dir():
        raise ConversionUsageError(f"output folder {output.parent} does not exist")
    if output.is_dir():
        raise ConversionUsageError(f"output {output} is a folder, expected a file name")
    if output.exists() and not overwrite:
        raise ConversionError(f"{output} already exists; pass --overwrite to replace it")
    channel_names, cases = dataset_channels_and_cases(dataset_folder)
    split = masks_in_channel_order(read_split_table(table_path), channel_names)
    skipped = sorted(set(split) - set(cases))
    if skipped and not allow_missing_cases:
        raise ConversionError(f"{len(skipped)} case(s) of {table_path} are not training cases of {dataset_folder} "
                              f"(pass --allow-missing-cases to skip them):{format_list(skipped)}")
    table = {c: m for c, m in split.items() if c not in skipped}
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
    run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> None:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_import_split",
        description="Turns a published imbalanced-missing-modality split table (data_name, mask as "
                    "[flair, t1ce, t1, t2] or MyoPS [C0, DE, T2] booleans) into modality_availability.csv "
                    "(case_id,<channel names>, 1 = available) in the converted nnU-Net raw dataset folder. "
                    "Modalities are mapped by name, case ids with the HG_/LG_ prefix removed. To apply a "
                    "published train/val/test protocol, use nnUNetv2_dmaf_apply_protocol instead.",
        epilog="Example: nnUNetv2_dmaf_import_split -i Brats2020_imb_split_mr2468.csv "
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
    folder = resolve_dataset_folder(args.dataset, args.raw_root)
    result = import_split(args.input, folder, args.output, args.allow_missing_cases, args.complete_unlisted,
                          args.overwrite)
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

"""A published train / val / test protocol on a converted dataset (``nnUNetv2_dmaf_apply_protocol``).

Inputs are case-list files (one case name per line; blank lines and ``#`` comments ignored; a grade
prefix ``HG_``/``LG_`` is removed, as in the split tables) and, optionally, a published split table:

* BraTS 2020 (RFNet/PASSION): ``train.txt`` (219), ``val.txt`` (50), ``test.txt`` (100) and an
  imbalanced table ``Brats2020_imb_split_mrABCD.csv`` (the 219 training cases);
* BraTS 2018 (RFNet's three splits): each split's train and test lists (no val list);
* MyoPS 2020 slices: ``train.txt`` (80 slices), ``test.txt`` (22), a long-tail table (the 80 slices).

What it does to the raw dataset ``$nnUNet_raw/DatasetNNN_Name`` (all checks first, then the changes):

1. test cases are MOVED out of ``imagesTr``/``labelsTr`` into ``imagesTs``/``labelsTs`` (and
   dataset.json's ``numTraining`` is updated), so no nnU-Net fold, ``all`` included, can train on
   them and ``nnUNetv2_dmaf_evaluate_subsets -i imagesTs -l labelsTs`` evaluates exactly them (refused
   if they were already preprocessed: fold ``all`` trains on every preprocessed case);
2. ``$nnUNet_preprocessed/DatasetNNN_Name/splits_final.json``: with a val list ONE fold (fold 0)
   training on the train list and validating on the val list; without one nnU-Net's own 5-fold split
   (``generate_crossval_split``, seed 12345) of the train list;
3. with ``-t``: ``modality_availability.csv`` with the table's availability for the training cases and
   every modality for the validation cases (the table must list exactly the training cases).

Names in no list that are training cases of the dataset are an error (``--exclude-unlisted``: kept in
imagesTr, in none of the folds 0-4 of splits_final.json; nnU-Net's fold ``all`` ignores the splits
and trains on them, the command says so). Unknown names, a case in two lists, a missing label are
errors naming them. A second run with the same lists is a no-op check (already moved test cases are
recognised).
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunetv2_dmaf.atomic_files import write_text_atomic
from nnunetv2_dmaf.availability import (AvailabilityTableError, availability_table_path, read_availability_table,
                                        write_availability_table)
from nnunetv2_dmaf.channel_files import cases_in_folder, channel_file_name
from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.csv_input import read_text
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError, ConversionUsageError, format_list
from nnunetv2_dmaf.dataset_conversion.import_imbalanced_split import (
    case_id_from_data_name, dataset_channels_and_cases, masks_in_channel_order, read_split_table,
    resolve_dataset_folder)
from nnunetv2_dmaf.user_errors import run_main

SPLITS_FILENAME = "splits_final.json"


def read_case_list(path: Path) -> list[str]:
    """Case ids of a list file, in file order (grade prefixes removed); errors name file and line."""
    path = Path(path)
    if path.is_dir():
        raise ConversionUsageError(f"{path} is a folder, expected a case list file (one name per line)")
    cases: list[str] = []
    first_line: dict[str, int] = {}
    for line, text in enumerate(read_text(path).splitlines(), start=1):
        name = text.split("#", 1)[0].strip()
        if not name:
            continue
        if any(c in name for c in ",;\t "):
            raise ConversionError(f"{path}, line {line}: expected one case name per line, got {text.strip()!r}")
        case_id = case_id_from_data_name(name)
        if case_id in first_line:
            raise ConversionError(f"{path}, line {line}: case {case_id} also on line {first_line[case_id]}")
        first_line[case_id] = line
        cases.append(case_id)
    if not cases:
        raise ConversionError(f"{path}: no case names")
    return cases


@dataclass
class Protocol:
    """The checked protocol and what applying it changes."""
    dataset_folder: Path
    train: list[str]
    val: list[str]
    test: list[str]
    to_move: list[str]  # test cases still in imagesTr
    excluded: list[str]  # training cases in no list (only with exclude_unlisted)
    splits: list[dict[str, list[str]]]
    availability: dict[str, np.ndarray] | None = None
    channel_names: list[str] = field(default_factory=list)


def _dataset_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{folder / 'dataset.json'}: unreadable ({e})") from None


def _moved_test_cases(folder: Path, file_ending: str) -> set[str]:
    """Cases with images in imagesTs and a label in labelsTs (test cases moved by an earlier run)."""
    images, labels = folder / "imagesTs", folder / "labelsTs"
    if not images.is_dir() or not labels.is_dir():
        return set()
    return {c for c in cases_in_folder(images, file_ending) if (labels / f"{c}{file_ending}").is_file()}


def plan_protocol(dataset_folder: Path, train_list: Path, test_list: Path, val_list: Path | None = None,
                  table: Path | None = None, exclude_unlisted: bool = False) -> Protocol:
    """Reads and checks everything; changes nothing."""
    meta = _dataset_meta(dataset_folder)
    file_ending = meta.get("file_ending", ".nii.gz")
    channel_names, training = dataset_channels_and_cases(dataset_folder)
    moved = _moved_test_cases(dataset_folder, file_ending)
    lists = {"train": (train_list, read_case_list(train_list)), "test": (test_list, read_case_list(test_list))}
    if val_list is not None:
        lists["val"] = (val_list, read_case_list(val_list))
    seen: dict[str, str] = {}
    for kind, (path, cases) in lists.items():
        both = [c for c in cases if c in seen]
        if both:
            raise ConversionError(f"{len(both)} case(s) of {path} ({kind}) are also in the {seen[both[0]]} list:"
                                  f"{format_list(both)}")
        seen.update({c: kind for c in cases})
    known = set(training) | moved
    for kind, (path, cases) in lists.items():
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise ConversionError(f"{len(unknown)} case(s) of {path} ({kind} list) are not cases of "
                                  f"{dataset_folder}:{format_list(unknown)}")
        if kind != "test":
            gone = [c for c in cases if c not in training]
            if gone:
                raise ConversionError(f"{len(gone)} {kind} case(s) of {path} are in imagesTs, not imagesTr "
                                      f"(moved there as test cases by an earlier run with another test list?):"
                                      f"{format_list(gone)}")
    train, test = lists["train"][1], lists["test"][1]
    val = lists["val"][1] if "val" in lists else []
    to_move = [c for c in test if c in training]
    no_label = [c for c in to_move if not (dataset_folder / "labelsTr" / f"{c}{file_ending}").is_file()]
    if no_label:
        raise ConversionError(f"{len(no_label)} test case(s) have no label in {dataset_folder / 'labelsTr'}:"
                              f"{format_list(no_label)}")
    clash = [path for c in to_move if (path := dataset_folder / "imagesTs" / channel_file_name(c, 0, file_ending)).exists()]
    if clash:
        raise ConversionError(f"{len(clash)} test case(s) are both in imagesTr and imagesTs:{format_list(clash)}")
    unlisted = sorted(set(training) - set(seen))
    if unlisted and not exclude_unlisted:
        raise ConversionError(f"{len(unlisted)} training case(s) of {dataset_folder} are in no list (pass "
                              f"--exclude-unlisted to keep them out of folds 0-4):{format_list(unlisted)}")
    if val:
        splits = [{"train": sorted(train), "val": sorted(val)}]
    else:
        if len(train) < 5:
            raise ConversionError(f"{train_list}: a 5-fold split needs at least 5 training cases, got {len(train)}; "
                                  f"give a val list (--val)")
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        splits = [{k: [str(c) for c in v] for k, v in s.items()} for s in generate_crossval_split(sorted(train))]
    protocol = Protocol(dataset_folder, train, val, test, to_move, unlisted, splits, channel_names=channel_names)
    if table is not None:
        masks = masks_in_channel_order(read_split_table(table), channel_names)
        not_train = sorted(set(masks) - set(train))
        if not_train:
            where = {c: seen.get(c, "no") for c in not_train}
            raise ConversionError(f"{len(not_train)} case(s) of {table} are not in the train list {train_list} "
                                  f"(the availability table applies to training cases only):"
                                  f"{format_list(f'{c} ({where[c]} list)' for c in not_train)}")
        no_row = sorted(set(train) - set(masks))
        if no_row:
            raise ConversionError(f"{len(no_row)} training case(s) of {train_list} have no row in {table}:"
                                  f"{format_list(no_row)}")
        protocol.availability = {**masks, **{c: np.ones(len(channel_names), dtype=bool) for c in val}}
    return protocol


def splits_file(dataset_folder: Path, preprocessed_root: Path | None = None) -> Path:
    """``<preprocessed root>/<dataset folder name>/splits_final.json`` (root default: $nnUNet_preprocessed)."""
    if preprocessed_root is None:
        from nnunetv2.paths import nnUNet_preprocessed
        if not nnUNet_preprocessed:
            raise ConversionUsageError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path or pass "
                                       "--preprocessed-root")
        preprocessed_root = Path(nnUNet_preprocessed)
    return Path(preprocessed_root) / dataset_folder.name / SPLITS_FILENAME


def _move_test_cases(folder: Path, cases: Sequence[str], num_channels: int, file_ending: str) -> None:
    """imagesTr/labelsTr -> imagesTs/labelsTs by rename; undone if interrupted half-way."""
    moves = [(folder / "imagesTr" / channel_file_name(c, i, file_ending),
              folder / "imagesTs" / channel_file_name(c, i, file_ending))
             for c in cases for i in range(num_channels)]
    moves += [(folder / "labelsTr" / f"{c}{file_ending}", folder / "labelsTs" / f"{c}{file_ending}") for c in cases]
    missing = [src for src, _ in moves if not src.is_file()]
    if missing:
        raise ConversionError(f"{len(missing)} file(s) of the test cases are missing:{format_list(missing)}")
    (folder / "imagesTs").mkdir(exist_ok=True)
    (folder / "labelsTs").mkdir(exist_ok=True)
    done: list[tuple[Path, Path]] = []
    try:
        for src, dst in moves:
            os.rename(src, dst)
            done.append((src, dst))
    except BaseException:
        for src, dst in reversed(done):
            os.rename(dst, src)
        raise


def _same_availability(protocol: Protocol, path: Path) -> bool:
    try:
        existing = read_availability_table(path, protocol.channel_names)
    except (AvailabilityTableError, OSError):
        return False
    return existing.keys() == protocol.availability.keys() and \
        all(np.array_equal(existing[c], protocol.availability[c]) for c in existing)


def preprocessed_cases(preprocessed_dataset: Path, cases: Sequence[str]) -> dict[str, Path]:
    """Those of ``cases`` that nnUNetv2_plan_and_preprocess wrote into the dataset's preprocessed folder
    (``<plans>_<configuration>/CASE.pkl`` or ``gt_segmentations/CASE.*``), each with one such file."""
    found: dict[str, Path] = {}
    if preprocessed_dataset.is_dir():
        for case in cases:
            name = glob.escape(case)
            files = [*preprocessed_dataset.glob(f"*/{name}.pkl"),
                     *preprocessed_dataset.glob(f"gt_segmentations/{name}.*")]
            if files:
                found[case] = min(files)
    return found


def apply_protocol(protocol: Protocol, splits_path: Path, overwrite: bool = False) -> list[Path]:
    """Moves the test cases, updates dataset.json, writes splits_final.json (and the availability
    table); returns the written files. An existing different splits_final.json / availability table
    is replaced only with ``overwrite``."""
    folder = protocol.dataset_folder
    splits_text = json.dumps(protocol.splits, indent=4) + "\n"
    table_path = availability_table_path(folder)
    refused = [path for path, same in ((splits_path, lambda: splits_path.read_text() == splits_text),
                                       (table_path, lambda: _same_availability(protocol, table_path)))
               if path.exists() and not overwrite and not (path == table_path and protocol.availability is None)
               and not same()]
    if refused:
        raise ConversionError(f"{refused[0]} already exists with other content; pass --overwrite to replace it")
    preprocessed = preprocessed_cases(splits_path.parent, protocol.to_move)
    if preprocessed:
        raise ConversionError(f"{len(preprocessed)} of the test case(s) to move were already preprocessed, e.g. "
                              f"{next(iter(preprocessed.values()))}: nnU-Net's fold 'all' would train on "
                              f"them and the plans were made with them. Apply the protocol before "
                              f"nnUNetv2_plan_and_preprocess, or delete {splits_path.parent}, apply it and plan and "
                              f"preprocess again")
    meta = _dataset_meta(folder)
    if protocol.to_move:
        _move_test_cases(folder, protocol.to_move, len(protocol.channel_names), meta.get("file_ending", ".nii.gz"))
    _, training = dataset_channels_and_cases(folder)
    if meta.get("numTraining") != len(training):
        meta["numTraining"] = len(training)
        write_text_atomic(folder / "dataset.json", json.dumps(meta, indent=4, sort_keys=False) + "\n")
    splits_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(splits_path, splits_text)
    written = [splits_path]
    if protocol.availability is not None:
        try:
            written.append(write_availability_table(availability_table_path(folder), protocol.availability,
                                                    protocol.channel_names))
        except AvailabilityTableError as e:
            raise ConversionError(str(e)) from None
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_apply_protocol``."""
    run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> None:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_apply_protocol",
        description="Applies a published train/val/test protocol to a converted nnU-Net raw dataset: moves the "
                    "test cases to imagesTs/labelsTs, writes splits_final.json (fold 0 = train list vs val list; "
                    "without --val nnU-Net's 5-fold split of the train list) and, with -t, the availability table "
                    "of the training cases (validation cases: every modality).",
        epilog="Example (BraTS 2020, RFNet/PASSION split): nnUNetv2_dmaf_apply_protocol -d 520 --train train.txt "
               "--val val.txt --test test.txt -t Brats2020_imb_split_mr2468.csv")
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset id (520), folder name (Dataset520_BraTS2020) or path of the raw dataset")
    parser.add_argument("--train", required=True, type=Path, help="training case list (one name per line)")
    parser.add_argument("--val", type=Path, default=None, help="validation case list (fold 0's val set)")
    parser.add_argument("--test", required=True, type=Path, help="test case list (moved to imagesTs/labelsTs)")
    parser.add_argument("-t", "--table", type=Path, default=None,
                        help="published split table (data_name, mask) for the training cases -> "
                             "modality_availability.csv")
    parser.add_argument("--exclude-unlisted", action="store_true",
                        help="leave training cases that are in no list in imagesTr, outside folds 0-4 "
                             "(nnU-Net's fold 'all' still trains on them)")
    parser.add_argument("--raw-root", type=Path, default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("--preprocessed-root", type=Path, default=None,
                        help="nnU-Net preprocessed folder for splits_final.json (default: $nnUNet_preprocessed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing, different splits_final.json / modality_availability.csv")
    args = parser.parse_args(argv)
    folder = resolve_dataset_folder(args.dataset, args.raw_root)
    protocol = plan_protocol(folder, args.train, args.test, args.val, args.table, args.exclude_unlisted)
    written = apply_protocol(protocol, splits_file(folder, args.preprocessed_root), args.overwrite)
    print(f"{folder.name}: {len(protocol.train)} training, {len(protocol.val)} validation, {len(protocol.test)} test "
          f"case(s); moved {len(protocol.to_move)} test case(s) to imagesTs/labelsTs"
          + (f"; {len(protocol.excluded)} unlisted case(s) in none of folds 0-4" if protocol.excluded else ""))
    for path in written:
        print(f"wrote {path}")
    if protocol.excluded:
        print(f"note: the {len(protocol.excluded)} unlisted case(s) stay in imagesTr: folds 0-4 leave them out, "
              f"but nnUNetv2_train ... all (which ignores splits_final.json) trains on them", file=sys.stderr)
    if not protocol.val:
        print("note: no val list: splits_final.json holds nnU-Net's 5-fold split of the training cases",
              file=sys.stderr)


if __name__ == "__main__":
    main()

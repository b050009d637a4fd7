"""Per-case modality availability table: ``modality_availability.csv`` in the raw dataset folder.

Format: a header ``case_id,<channel name>,...`` with the dataset.json channel names, then one row per
case (nnU-Net case identifier) with 1 (available) or 0 (missing) per modality, e.g.::

    case_id,T1,T1ce,T2,FLAIR
    BraTS20_Training_002,1,1,0,1

Columns are matched to channels BY NAME (case-insensitive), never by position. Every case needs at
least one available modality; case ids are unique. The file may be UTF-8 (with or without BOM),
UTF-16/32 with BOM or Latin-1/Windows-1252 (:mod:`nnunetv2_dmaf.csv_input`); other encodings are
refused naming the file. Rows for cases the dataset does not have: :func:`unknown_case_rows`.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from nnunetv2_dmaf.atomic_files import write_text_atomic
from nnunetv2_dmaf.csv_input import read_csv_rows
from nnunetv2_dmaf.user_errors import DataError

AVAILABILITY_FILENAME = "modality_availability.csv"
CASE_ID_COLUMN = "case_id"


class AvailabilityTableError(DataError):
    """Malformed availability table (the message names the file and line); a DataError (exit status
    1 with :func:`nnunetv2_dmaf.user_errors.run_main`) and thus a ValueError."""


def availability_table_path(raw_dataset_folder: str | os.PathLike) -> Path:
    """Where the table of a raw dataset lives: ``<raw dataset folder>/modality_availability.csv``."""
    return Path(raw_dataset_folder) / AVAILABILITY_FILENAME


def _channel_keys(channel_names: Sequence[str]) -> list[str]:
    keys = [str(n).strip().lower() for n in channel_names]
    if not keys:
        raise AvailabilityTableError("no channel names given")
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates or "" in keys:
        raise AvailabilityTableError(f"channel names must be non-empty and unique (case-insensitive): "
                                     f"{list(channel_names)}")
    return keys


def read_availability_table(path: str | os.PathLike, channel_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Reads the table; returns case id -> bool array [M] in the order of ``channel_names``.

    Raises AvailabilityTableError for: no ``case_id`` column, a column that is no channel or a channel
    without a column, duplicate columns or cases, values other than 0/1, a row with every modality 0,
    an empty table, an undecodable file. FileNotFoundError if ``path`` does not exist.
    """
    path = Path(path)
    keys = _channel_keys(channel_names)
    if not path.is_file():
        raise FileNotFoundError(f"availability table not found: {path}")
    try:
        rows = read_csv_rows(path)
    except DataError as e:
        raise AvailabilityTableError(str(e)) from None
    if not rows:
        raise AvailabilityTableError(f"{path}: empty file, expected header {CASE_ID_COLUMN},{','.join(channel_names)}")
    header = [c.strip().lower() for c in rows[0][1]]
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise AvailabilityTableError(f"{path}: duplicate column(s) {duplicates}")
    if CASE_ID_COLUMN not in header:
        raise AvailabilityTableError(f"{path}: no '{CASE_ID_COLUMN}' column in header {rows[0][1]}")
    unknown = [c for c, k in zip(rows[0][1], header) if k != CASE_ID_COLUMN and k not in keys]
    absent = [n for n, k in zip(channel_names, keys) if k not in header]
    if unknown or absent:
        raise AvailabilityTableError(
            f"{path}: columns must be {CASE_ID_COLUMN} and the dataset's channel names {list(channel_names)} "
            f"(case-insensitive)" + (f"; unknown column(s) {unknown}" if unknown else "")
            + (f"; missing column(s) {absent}" if absent else ""))
    case_col = header.index(CASE_ID_COLUMN)
    columns = [header.index(k) for k in keys]

    table: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    for line, row in rows[1:]:
        where = f"{path}, line {line}"
        if len(row) != len(header):
            raise AvailabilityTableError(f"{where}: {len(row)} fields, expected {len(header)}")
        case_id = row[case_col].strip()
        if not case_id:
            raise AvailabilityTableError(f"{where}: empty case id")
        if case_id in table:
            raise AvailabilityTableError(f"{where}: duplicate case {case_id!r} (first on line {first_line[case_id]})")
        values = [row[c].strip() for c in columns]
        bad = [f"{channel_names[i]}={v!r}" for i, v in enumerate(values) if v not in ("0", "1")]
        if bad:
            raise AvailabilityTableError(f"{where}: values must be 0 or 1, got {', '.join(bad)}")
        mask = np.array([v == "1" for v in values], dtype=bool)
        if not mask.any():
            raise AvailabilityTableError(f"{where}: case {case_id!r} has no available modality (all 0)")
        table[case_id], first_line[case_id] = mask, line
    if not table:
        raise AvailabilityTableError(f"{path}: no cases (header only)")
    return table


def write_availability_table(path: str | os.PathLike, table: Mapping[str, Sequence[bool] | np.ndarray],
                             channel_names: Sequence[str]) -> Path:
    """Writes ``table`` (case id -> [M] booleans in ``channel_names`` order), rows sorted by case id.
    The file appears complete or not at all (temporary file + rename); an existing file is replaced."""
    path = Path(path)
    _channel_keys(channel_names)
    if not table:
        raise AvailabilityTableError("no cases to write")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([CASE_ID_COLUMN, *channel_names])
    for case_id in sorted(table):
        mask = np.asarray(table[case_id])
        if not str(case_id).strip() or str(case_id) != str(case_id).strip():
            raise AvailabilityTableError(f"invalid case id {case_id!r}")
        if mask.shape != (len(channel_names),) or not np.isin(mask, (0, 1)).all():
            raise AvailabilityTableError(f"case {case_id!r}: expected {len(channel_names)} booleans "
                                         f"({', '.join(channel_names)}), got {table[case_id]!r}")
        if not mask.any():
            raise AvailabilityTableError(f"case {case_id!r} has no available modality")
        writer.writerow([case_id, *(int(bool(v)) for v in mask)])
    try:
        return write_text_atomic(path, buffer.getvalue())
    except OSError as e:
        raise AvailabilityTableError(f"{path}: cannot be written ({e.strerror})") from None


def unknown_case_rows(path: str | os.PathLike, table: Mapping[str, object], case_ids: Iterable[str],
                      shown: int = 5) -> str | None:
    """One line naming the table's rows for cases that are not in ``case_ids`` (the dataset's case
    identifiers, e.g. training cases), or None if every row is a known case. Such rows usually mean
    a table for another dataset or renamed cases; callers decide whether to warn or refuse."""
    unknown = sorted(set(table) - set(case_ids))
    if not unknown:
        return None
    listed = ", ".join(unknown[:shown]) + (f", ... ({len(unknown) - shown} more)" if len(unknown) > shown else "")
    return (f"{path}: {len(unknown)} of {len(table)} row(s) name cases that are not in the dataset: {listed}")

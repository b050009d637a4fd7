"""Reading user CSV files whatever editor wrote them.

Accepted: UTF-8 with or without BOM, UTF-16 with BOM (Excel's "Unicode text"), UTF-32 with BOM, and
Latin-1 / Windows-1252 (a file that is not valid UTF-8 and has no NUL bytes). UTF-16 without a BOM is
refused with a message naming the file. Returns rows as lists of strings (csv module dialect
sniffing is not used: comma-separated, optional quotes).
"""
from __future__ import annotations

import codecs
import csv
import io
import os
from pathlib import Path

from nnunetv2_dmaf.user_errors import DataError

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """Decodes a text file's bytes (see module docstring); DataError names ``path`` otherwise."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid {encoding} text ({e.reason} at byte {e.start})") from None
    if b"\x00" in data:
        raise DataError(f"{path}: contains NUL bytes (UTF-16 without a byte-order mark, or not a text file); "
                        f"save it as UTF-8 CSV")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="strict") if _cp1252_ok(data) else data.decode("latin-1")


def _cp1252_ok(data: bytes) -> bool:
    try:
        data.decode("cp1252")
        return True
    except UnicodeDecodeError:
        return False


def read_text(path: str | os.PathLike) -> str:
    """The decoded content of ``path``; DataError for a missing/unreadable file or bad encoding."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a CSV file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    return decode_text(data, path)


def read_csv_rows(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank row of a CSV file."""
    text = read_text(path)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DataError(f"{path}: not a valid CSV file ({e})") from None
    out, line = [], 0
    for row in rows:
        line += 1
        if any(field.strip() for field in row):
            out.append((line, row))
    return out

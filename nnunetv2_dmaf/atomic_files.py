"""Atomic outputs: a file appears complete under its final name, or not at all.

Writers write to a temporary file in the SAME folder (same file system, so ``os.replace`` is atomic)
whose name starts with ``.`` and contains ``.partial-``; it keeps the final name's extension so that
writers choosing the format by extension (SimpleITK, numpy) work. The temporary file is removed if
the block fails or is interrupted (Ctrl-C; SIGTERM with :func:`nnunetv2_dmaf.user_errors.run_main`).
A process killed outright (SIGKILL) leaves the temporary file; :func:`partial_outputs` finds such
leftovers so that the next run can remove or report them.
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

PARTIAL_MARKER = ".partial-"
#: errno values of a failed write (named after the output by :func:`_naming`)
_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def full_suffix(name: str) -> str:
    """'.nii.gz' for 'case.nii.gz', '.csv' for 'a.b.csv' (only '.gz'/'.bz2'/'.xz' are combined)."""
    parts = name.split(".")
    if len(parts) < 2:
        return ""
    if parts[-1].lower() in ("gz", "bz2", "xz") and len(parts) >= 3:
        return "." + ".".join(parts[-2:])
    return "." + parts[-1]


def partial_name(final: Path) -> Path:
    """A fresh temporary path next to ``final`` (hidden, marked, same extension)."""
    return final.parent / f".{final.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}{full_suffix(final.name)}"


@contextmanager
def _naming(final: Path) -> Iterator[None]:
    """Gives a write error without a file name (``write``/``close`` on a full disk or quota, an I/O
    error) ``final``'s name, so that its one-line message says which output failed."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno in _WRITE_ERRORS:
            error.filename = str(final)
        raise


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` atomically, on any error or
    interruption it is deleted (file or folder)."""
    final = Path(path)
    tmp = partial_name(final)
    try:
        with _naming(final):
            yield tmp
            os.replace(tmp, final)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output_set(truncated: str | os.PathLike, endings: Sequence[str],
                      tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """For writers that derive several files from one name without ending (nnU-Net's export writes
    ``ofile + '.npz'``, ``ofile + '.pkl'``, ``ofile + file_ending``): yields a temporary name without
    ending; on success every ``tmp + ending`` replaces ``truncated + ending`` in the order of
    ``endings`` (put the file whose presence marks completion last); on failure all are deleted.
    ``tmp`` (from :func:`temporary_truncated_name`) lets a parent process that hands the work to
    another process know the names, to delete them should that process be killed."""
    final = Path(truncated)
    tmp = Path(tmp) if tmp is not None else temporary_truncated_name(final)
    try:
        with _naming(final.parent / f"{final.name}{endings[-1] if endings else ''}"):
            yield tmp
            for ending in endings:
                os.replace(f"{tmp}{ending}", f"{final}{ending}")
    finally:
        remove_temporary_set(tmp, endings)


def temporary_truncated_name(final: Path) -> Path:
    """A fresh temporary name (without ending) next to ``final``, recognised by :func:`is_partial`."""
    return final.parent / f".{final.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}"


def remove_temporary_set(tmp: str | os.PathLike, endings: Sequence[str]) -> None:
    """Deletes ``tmp + ending`` for every ending (missing files are fine)."""
    for ending in endings:
        Path(f"{tmp}{ending}").unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def is_partial(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARKER in name


def partial_outputs(folder: str | os.PathLike) -> list[Path]:
    """Leftover temporary outputs of killed runs directly in ``folder`` (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_partial(p))


def remove_partial_outputs(folder: str | os.PathLike) -> list[Path]:
    """Deletes the leftovers found by :func:`partial_outputs`; returns what was removed."""
    removed = partial_outputs(folder)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed

"""Where a conversion writes: ``$nnUNet_raw/DatasetNNN_name`` checks, and staged (all-or-nothing)
output folders that replace their target only when the conversion succeeds."""
from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nnunetv2_dmaf.atomic_files import PARTIAL_MARKER, partial_outputs
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError, ConversionUsageError


def output_root(path: str | os.PathLike | None, option: str = "--output-root") -> Path:
    """``path`` if given, else ``$nnUNet_raw`` (via ``nnunetv2.paths``)."""
    if path is not None:
        return Path(path)
    from nnunetv2.paths import nnUNet_raw
    if not nnUNet_raw:
        raise ConversionUsageError(f"nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass {option}")
    return Path(os.fspath(nnUNet_raw))


def dataset_folder(root: Path, dataset_id: int, name: str) -> Path:
    """``root/DatasetNNN_name`` after validating id and name."""
    if not 1 <= dataset_id <= 999:
        raise ConversionUsageError(f"dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConversionUsageError(f"invalid dataset name {name!r} (use letters, digits, '_', '-', '.')")
    return root / f"Dataset{dataset_id:03d}_{name}"


def check_output_target(target: Path, overwrite: bool) -> None:
    """Refuses an existing ``target`` (unless ``overwrite``) and a dataset id used by another name."""
    if target.exists() and not target.is_dir():
        raise ConversionError(f"output {target} exists and is not a folder")
    if target.exists() and not overwrite:
        raise ConversionError(f"output {target} already exists; pass --overwrite to replace it")
    prefix = target.name.split("_", 1)[0] + "_"  # "Dataset520_"
    if target.parent.is_dir():
        others = sorted(p.name for p in target.parent.iterdir() if p.name.startswith(prefix) and p != target)
        if others:
            raise ConversionError(f"dataset id {prefix[len('Dataset'):-1]} is already used by {', '.join(others)} in "
                                  f"{target.parent}; choose another id with -d")


def remove_leftovers(target: Path) -> list[Path]:
    """Deletes hidden ``.<target name>.partial-*`` outputs that a killed earlier run (SIGKILL, power
    loss) left next to ``target``, saying so on stderr; returns them. (Ctrl-C and SIGTERM never leave
    any: the staging folder is removed on the way out.)"""
    prefix = f".{target.name}{PARTIAL_MARKER}"
    leftovers = [p for p in partial_outputs(target.parent) if p.name.startswith(prefix)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        print(f"note: removed {path}, left over from an interrupted earlier run", file=sys.stderr)
    return leftovers


@contextmanager
def staged_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a new empty folder next to ``target``; when the block succeeds it becomes ``target``
    (replacing an existing one only if ``overwrite``), when it fails or is interrupted it is deleted.
    Leftovers of killed earlier runs for the same ``target`` are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = target.parent / f".{target.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}"
    try:  # mkdir inside: a signal right after it must still remove the folder
        staging.mkdir()
        yield staging
        if target.exists():
            if not overwrite:
                raise ConversionError(f"output {target} appeared during the conversion; not replacing it")
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def staged_files(folder: Path) -> Iterator[Path]:
    """Yields a new empty folder next to ``folder``; when the block succeeds its files are moved into
    ``folder`` (created if needed, same-named files replaced), when it fails it is deleted."""
    if not folder.exists():
        with staged_folder(folder) as staging:
            yield staging
        return
    remove_leftovers(folder)
    staging = folder.parent / f".{folder.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

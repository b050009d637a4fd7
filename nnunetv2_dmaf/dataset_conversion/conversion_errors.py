"""The errors of the conversion scripts (each names the file, case or option value) and the one-line
file lists inside their messages."""
from __future__ import annotations

from typing import Iterable

from nnunetv2_dmaf.user_errors import DataError, UsageError


_MAX_LISTED = 20


class ConversionError(DataError, ValueError):
    """Invalid input (missing, corrupt or inconsistent file) or refused output; names the file/case
    (exit status 1 through :func:`nnunetv2_dmaf.user_errors.run_main`)."""


class ConversionUsageError(UsageError, ConversionError):
    """A bad option value (dataset id, name, ...); exit status 2."""


def format_list(items: Iterable[object], limit: int = _MAX_LISTED) -> str:
    """`` a, b, c`` (one line; at most ``limit`` shown, then ``... and N more``)."""
    items = [str(i) for i in items]
    shown = items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])
    return " " + ", ".join(shown)

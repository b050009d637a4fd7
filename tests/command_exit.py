"""Calling a console script's ``main`` in-process: ``run_main`` ends an error in ``SystemExit`` and
returns on success."""
from __future__ import annotations

from typing import Callable, Sequence


def exit_status(main: Callable[[Sequence[str]], object], argv: Sequence[str]) -> int:
    """Runs ``main(argv)`` and returns its exit status (0 when it returns)."""
    try:
        main(list(argv))
    except SystemExit as exit_:
        return 0 if exit_.code is None else int(exit_.code)
    return 0

"""Calling a console script's ``main`` in-process: it always ends in ``SystemExit`` (``run_main``)."""
from __future__ import annotations

from typing import Callable, Sequence


def exit_status(main: Callable[[Sequence[str]], object], argv: Sequence[str]) -> int:
    """Runs ``main(argv)`` and returns its exit status."""
    try:
        main(list(argv))
    except SystemExit as exit_:
        return 0 if exit_.code is None else int(exit_.code)
    raise AssertionError("the command returned without exiting")

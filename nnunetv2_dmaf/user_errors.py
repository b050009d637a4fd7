"""User errors of the plugin's commands and the one-line way they end a command.

A command's ``main`` raises :class:`UsageError` (bad option or value: exit status 2) or
:class:`DataError` (bad or unreadable input file, refused output: exit status 1) with a message that
names the file or value. :func:`run_main` turns them, Ctrl-C (SIGINT) and SIGTERM into ONE line on
stderr (``<command>: error: <message>``) and the documented exit status; anything else is our bug and
keeps its traceback. SIGTERM is raised as :class:`Terminated` (a KeyboardInterrupt) inside the
program, so ``finally`` blocks and context managers clean up temporary outputs as for Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

EXIT_DATA_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """An error the user can fix; the message names the file or value. A ValueError, so that callers
    that report bad input by catching ValueError (e.g. per case) also report these in one line."""
    exit_code = EXIT_DATA_ERROR


class UsageError(UserError):
    """Bad command-line option or configuration value (exit status 2)."""
    exit_code = EXIT_USAGE_ERROR


class DataError(UserError):
    """Bad, missing or unreadable input data, or an output that may not be written (exit status 1)."""
    exit_code = EXIT_DATA_ERROR


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that cleanup code runs."""


def _raise_terminated(signum, frame) -> NoReturn:  # noqa: ARG001 (signal handler signature)
    raise Terminated()


def install_sigterm_handler() -> None:
    """Makes SIGTERM raise :class:`Terminated` in the main thread (no-op outside it)."""
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        pass


def command_name(argv0: str | None = None) -> str:
    return os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "nnunetv2_dmaf"))


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)``: returns if it returned None or 0 (the console script then exits 0, and
    Python callers such as tests go on); otherwise exits with its status, with 1/2 and one line for a
    :class:`UserError`, with 130 and one line for Ctrl-C / SIGTERM."""
    install_sigterm_handler()
    name = command_name()
    try:
        status = main(argv)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        print(f"{name}: {what}; temporary outputs were removed", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if status:
        sys.exit(int(status))

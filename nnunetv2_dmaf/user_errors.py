"""User errors of the plugin's commands and the one-line way they end a command.

A command's ``main`` raises :class:`UsageError` (bad option or value: exit status 2) or
:class:`DataError` (bad or unreadable input file, refused output: exit status 1) with a message that
names the file or value. :func:`run_main` turns them, a file system refusing a file (permission,
read-only, disk full), Ctrl-C (SIGINT) and SIGTERM into ONE line on stderr (``<command>: error:
<message>``) and the documented exit status; anything else is our bug and keeps its traceback.
SIGTERM is raised as :class:`Terminated` (a KeyboardInterrupt) inside the program, so ``finally``
blocks and context managers clean up temporary outputs as for Ctrl-C.

Only the process that installed the handler does so: a child forked from it (e.g. by the
``multiprocessing.Pool`` that nnU-Net's planner opens to list the dataset's files) gets SIGTERM's
default action back, so that ``Pool.terminate()`` kills its workers instead of leaving them raising
:class:`Terminated` while the parent waits for them forever.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

EXIT_DATA_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130
#: errno values of a file system that refuses a file: the user's environment, not our bug
FILE_SYSTEM_REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO})


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


def one_line(error: BaseException, limit: int = 300) -> str:
    """``error``'s message on one line (whitespace runs collapsed), cut after ``limit`` characters;
    the exception's type name if it has no message."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that cleanup code runs."""


_fork_hook_registered = False


def _restore_default_sigterm_in_child() -> None:
    """``os.register_at_fork`` hook: a forked child dies of SIGTERM like any process."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_terminated(signum, frame) -> NoReturn:  # noqa: ARG001 (signal handler signature)
    raise Terminated()


def install_sigterm_handler() -> None:
    """Makes SIGTERM raise :class:`Terminated` in this process's main thread (no-op outside it);
    processes forked from it later keep SIGTERM's default action (termination)."""
    global _fork_hook_registered
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        return
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_restore_default_sigterm_in_child)
        _fork_hook_registered = True


def command_name(argv0: str | None = None) -> str:
    return os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "nnunetv2_dmaf"))


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)``: returns if it returned None or 0 (the console script then exits 0, and
    Python callers such as tests go on); otherwise exits with its status, with 1/2 and one line for a
    :class:`UserError` and 1 for a file system that refuses a file (:data:`FILE_SYSTEM_REFUSALS`:
    permission, read-only, disk full, I/O error; one line naming the file), with 130 and one line for
    Ctrl-C / SIGTERM."""
    install_sigterm_handler()
    name = command_name()
    try:
        status = main(argv)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno not in FILE_SYSTEM_REFUSALS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"{name}: error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(EXIT_DATA_ERROR)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        print(f"{name}: {what}; temporary outputs were removed", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if status:
        sys.exit(int(status))

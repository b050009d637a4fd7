"""``argparse`` with one-line errors: a bad or missing option raises
:class:`nnunetv2_dmaf.user_errors.UsageError`, so that ``run_main`` prints ONE line
(``<command>: error: <message> (see --help)``, exit status 2) instead of argparse's usage block."""
from __future__ import annotations

import argparse
from typing import NoReturn

from nnunetv2_dmaf.user_errors import UsageError


class CommandLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``error`` raises UsageError (``--help`` is unchanged)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")

"""Writing predictions atomically, in this process or in background export processes.

nnU-Net's ``export_prediction_from_logits`` resamples logits to the input geometry and writes
``ofile + file_ending`` (plus ``.npz``/``.pkl`` with probabilities) straight under their final names.
:func:`export_case` gives it a temporary hidden name instead and renames the finished files (the
segmentation last), so an output under its final name is always complete. :class:`ExportQueue`
runs exports in ``spawn`` worker processes (as nnU-Net's predictor) and reports each case when its
files are in place; on an interruption it stops the workers and deletes the temporary files.
"""
from __future__ import annotations

import multiprocessing
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnunetv2_dmaf.atomic_files import atomic_output_set, remove_temporary_set, temporary_truncated_name
from nnunetv2_dmaf.user_errors import DataError


def output_endings(file_ending: str, save_probabilities: bool) -> list[str]:
    """Endings of the files nnU-Net's export writes for one case, the segmentation last."""
    return ([".npz", ".pkl"] if save_probabilities else []) + [file_ending]


def export_case(logits: np.ndarray, properties: dict, configuration_manager, plans_manager, dataset_json: dict,
                output_truncated: str, save_probabilities: bool, tmp: str | None = None) -> None:
    """nnU-Net's export of one case's logits [K, *S'] with atomic files (see module docstring)."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    endings = output_endings(dataset_json["file_ending"], save_probabilities)
    with atomic_output_set(output_truncated, endings, tmp) as tmp_truncated:
        export_prediction_from_logits(logits, properties, configuration_manager, plans_manager, dataset_json,
                                      str(tmp_truncated), save_probabilities)


def _ignore_sigint() -> None:
    """Export workers leave Ctrl-C to the main process (which stops them): no worker tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class _Pending:
    key: str
    result: Any  # multiprocessing.pool.AsyncResult
    tmp: Path
    endings: list[str]


class ExportQueue:
    """Exports with ``num_processes`` workers (0 = in this process), at most ``max_pending`` queued.

    ``on_done(key)`` / ``on_error(key, exception)`` are called in this process when a case's files
    are in place or its export failed. Use as a context manager: leaving it waits for the queued
    exports; leaving it by an exception (Ctrl-C) terminates the workers and deletes temporary files.
    """

    def __init__(self, num_processes: int, on_done: Callable[[str], None],
                 on_error: Callable[[str, BaseException], None], max_pending: int | None = None):
        self.num_processes = num_processes
        self.on_done, self.on_error = on_done, on_error
        self.max_pending = max_pending if max_pending is not None else num_processes + 1
        self.pool = None
        self.pending: list[_Pending] = []

    def __enter__(self) -> "ExportQueue":
        if self.num_processes >= 1:
            self.pool = multiprocessing.get_context("spawn").Pool(self.num_processes, initializer=_ignore_sigint)
            self._workers = list(self.pool._pool)  # as nnU-Net's predictor: to notice killed workers
        return self

    def submit(self, key: str, logits: np.ndarray, properties: dict, predictor, output_truncated: Path,
               save_probabilities: bool) -> None:
        """Exports one case (``predictor``: an nnUNetPredictor with plans, configuration, dataset.json)."""
        args = (logits, properties, predictor.configuration_manager, predictor.plans_manager, predictor.dataset_json,
                str(output_truncated), save_probabilities)
        if self.pool is None:
            try:
                export_case(*args)
            except Exception as error:  # one case's export failure (disk full...) must not stop the others
                self.on_error(key, error)
            else:
                self.on_done(key)
            return
        self._wait_until(self.max_pending - 1)
        tmp = temporary_truncated_name(Path(output_truncated))
        endings = output_endings(predictor.dataset_json["file_ending"], save_probabilities)
        self.pending.append(_Pending(key, self.pool.apply_async(export_case, (*args, str(tmp))), tmp, endings))

    def _collect(self) -> None:
        still = []
        for item in self.pending:
            if not item.result.ready():
                still.append(item)
                continue
            try:
                item.result.get()
            except Exception as error:
                self.on_error(item.key, error)
            else:
                self.on_done(item.key)
        self.pending = still

    def _wait_until(self, max_pending: int) -> None:
        """Waits until at most ``max_pending`` exports are queued; DataError if a worker died."""
        while len(self.pending) > max_pending:
            self.pending[0].result.wait(0.2)
            self._collect()
            if len(self.pending) > max_pending and not all(w.is_alive() for w in self._workers):
                raise DataError("an export worker process died (killed by the system, e.g. for lack of memory); "
                                "rerun with --continue_prediction, with fewer -nps or -nps 0")

    def wait(self) -> None:
        """Waits for every queued export."""
        self._wait_until(0)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is None:
            return
        try:
            if exc_type is None:
                self.wait()
        finally:
            if exc_type is not None or self.pending:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()
            for item in self.pending:  # killed mid-write: remove what the worker had started
                remove_temporary_set(item.tmp, item.endings)
            self.pending = []

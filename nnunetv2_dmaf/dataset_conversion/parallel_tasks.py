"""Conversion work spread over worker processes, failing on the first error in task order."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence


def run_tasks(function: Callable[..., object], tasks: Sequence[tuple], num_processes: int) -> None:
    """Calls ``function(*task)`` for every task, in worker processes if ``num_processes > 1``;
    re-raises the first error (in task order) after cancelling pending tasks."""
    if num_processes <= 1 or len(tasks) <= 1:
        for task in tasks:
            function(*task)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(num_processes, len(tasks)), mp_context=context) as pool:
        futures = [pool.submit(function, *task) for task in tasks]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise

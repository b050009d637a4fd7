"""What DTM did in a DMAF-Net training, from its nnU-Net training logs: per window of epochs, each
modality's distillation gap relative to the mean of the modalities, the loss weights DTM gave
(logged), the loss weights the same EMA would have given without gap shrinkage (kappa = 0, replayed
through ``DynamicTrainingMonitor`` from the logged per-epoch gaps), and the epochs in which an
encoder's gradients were scaled below 1.

The trainers write one line per epoch (``DMAF DTM: distillation gaps {...}; loss weights {used} ->
{next}; encoder gradient scales {used} -> {next}``) and their DTM settings at the start; both are read
from the logs, so the replay uses the run's own momentum, exponent and bounds. The per-epoch pair
counts are not logged, which is why only kappa = 0 can be replayed (it needs none).

Usage (a fold folder takes all its ``training_log_*.txt`` in time order; a continued run's repeated
epochs count once, the later log's)::

    python benchmarks/dtm_log_summary.py RESULTS/Dataset995_DMAFQuality/nnUNetTrainerDMAF__nnUNetPlans__3d_quality/fold_0 \\
        --windows 0 50 200 400
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from nnunetv2_dmaf.training.dtm import DynamicTrainingMonitor  # noqa: E402
from nnunetv2_dmaf.user_errors import DataError, UsageError, run_main  # noqa: E402

_EPOCH = re.compile(r": Epoch (\d+)\s*$")
_DTM_LINE = re.compile(r"DMAF DTM: distillation gaps (\{.*?\}); loss weights (\{.*?\}) -> (\{.*?\}); "
                       r"encoder gradient scales (\{.*?\}) -> (\{.*?\})")
_SETTINGS = re.compile(r"DMAF uni-modal weight .*, DTM (\{.*\})\s*$")
_ENTRY = re.compile(r"'([^']+)': (nan|[-+0-9.eE]+)")
_LOG_TIME = re.compile(r"training_log_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)\.txt$")


def parse_values(text: str) -> dict[str, float]:
    """``{'T1': 0.66, 'T2': nan}`` as printed by the trainer -> {name: value} (nan kept)."""
    return {name: float(value) for name, value in _ENTRY.findall(text)}


def log_files(paths: Sequence[Path]) -> list[Path]:
    """The logs named by ``paths`` (files, or fold folders: their training_log_*.txt), each folder's in
    the order of the time stamps in their names."""
    files = []
    for path in paths:
        if path.is_dir():
            found = [p for p in path.glob("training_log_*.txt") if _LOG_TIME.search(p.name)]
            if not found:
                raise DataError(f"{path}: no training_log_*.txt in this folder")
            files += sorted(found, key=lambda p: tuple(int(x) for x in _LOG_TIME.search(p.name).groups()))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def read_run(files: Sequence[Path]) -> tuple[dict, list[str], dict[int, dict[str, dict[str, float]]]]:
    """(DTM settings, modality names, {epoch: {"gaps", "weights_used", "weights_next", "scales_used",
    "scales_next"}}) of one run's logs; a later log's line for an epoch replaces an earlier one's."""
    settings: dict | None = None
    epochs: dict[int, dict[str, dict[str, float]]] = {}
    for file in files:
        try:
            lines = file.read_text(errors="replace").splitlines()
        except OSError as e:
            raise DataError(f"{file}: cannot be read ({e.strerror})") from None
        epoch = None
        for line in lines:
            if (m := _EPOCH.search(line)) is not None:
                epoch = int(m.group(1))
            elif (m := _SETTINGS.search(line)) is not None:
                settings = ast.literal_eval(m.group(1))
            elif (m := _DTM_LINE.search(line)) is not None and epoch is not None:
                keys = ("gaps", "weights_used", "weights_next", "scales_used", "scales_next")
                epochs[epoch] = {k: parse_values(v) for k, v in zip(keys, m.groups())}
    names = " ".join(str(f) for f in files)
    if settings is None:
        raise DataError(f"{names}: no 'DMAF ... DTM {{...}}' settings line (not a DMAF-Net trainer's log?)")
    if not epochs:
        raise DataError(f"{names}: no 'DMAF DTM:' epoch lines (training had not finished an epoch?)")
    modalities = list(next(iter(epochs.values()))["gaps"])
    return settings, modalities, dict(sorted(epochs.items()))


def replay_unshrunk_weights(settings: dict, modalities: Sequence[str], gaps: np.ndarray) -> np.ndarray:
    """Loss weights [E, M] that DTM with the run's settings but kappa = 0 gives after each epoch,
    from the per-epoch mean gaps [E, M] as logged (nan: no pair of the modality yet; an epoch without
    its pairs logs its previous gap, which the replay takes as that epoch's, a rare difference)."""
    monitor = DynamicTrainingMonitor(modalities, **dict(settings, shrinkage=0.0, modulate_gradients=False))
    weights = np.empty_like(gaps)
    for e, row in enumerate(gaps):
        present = np.flatnonzero(~np.isnan(row))
        # one pair per modality with the epoch's mean gap: kappa = 0 needs no counts
        monitor.record(torch.from_numpy(row[present]), None, torch.from_numpy(present))
        monitor.end_epoch()
        weights[e] = monitor.loss_weights
    return weights


def summarise(settings: dict, modalities: list[str], epochs: dict[int, dict[str, dict[str, float]]],
              windows: Sequence[int]) -> str:
    """The per-window text (see the module docstring)."""
    numbers = np.array(list(epochs))
    table = {key: np.array([[epochs[e][key].get(m, np.nan) for m in modalities] for e in epochs])
             for key in ("gaps", "weights_next", "scales_used")}
    gaps = table["gaps"]
    ratio = gaps / np.nanmean(gaps, axis=1, keepdims=True)
    unshrunk = replay_unshrunk_weights(settings, modalities, gaps)

    def ranges(values: np.ndarray) -> str:
        return ", ".join(f"{m} {np.nanmin(v):.3f}-{np.nanmax(v):.3f}" for m, v in zip(modalities, values.T))

    out = [f"{len(epochs)} epochs with DTM lines ({numbers[0]}-{numbers[-1]}); DTM: shrinkage kappa "
           f"{settings.get('shrinkage')}, gap momentum {settings.get('gap_momentum')}, weight exponent "
           f"{settings.get('weight_exponent')}, weight bounds {settings.get('weight_bounds')}"]
    for lo, hi in zip(windows[:-1], windows[1:]):
        rows = (numbers >= lo) & (numbers < hi)
        if not rows.any():
            continue
        scaled = table["scales_used"][rows] < 1
        out += [f"epochs {lo}-{hi - 1} ({rows.sum()}):",
                "  gap / mean over modalities: " + ", ".join(
                    f"{m} {np.nanmean(r):.2f} (std {np.nanstd(r):.2f})" for m, r in zip(modalities, ratio[rows].T)),
                "  loss weights (logged): " + ranges(table["weights_next"][rows]),
                "  loss weights at kappa = 0 (replayed): " + ranges(unshrunk[rows]),
                f"  encoder gradient scale < 1 in {int(scaled.any(1).sum())} epochs (" + ", ".join(
                    f"{m} {int(s.sum())}" for m, s in zip(modalities, scaled.T)) + "); lowest " + ", ".join(
                    f"{m} {np.nanmin(v):.2f}" for m, v in zip(modalities, table["scales_used"][rows].T))]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/dtm_log_summary.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path,
                        help="one run's training_log_*.txt files, or its fold folder (all its logs)")
    parser.add_argument("--windows", nargs="+", type=int, default=[0, 50, 200, 400],
                        help="epoch boundaries of the summary windows (increasing; default: 0 50 200 400)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if len(args.windows) < 2 or any(b <= a for a, b in zip(args.windows, args.windows[1:])) or args.windows[0] < 0:
        raise UsageError(f"--windows {' '.join(map(str, args.windows))}: need at least two increasing epochs >= 0")
    settings, modalities, epochs = read_run(log_files(args.logs))
    print(summarise(settings, modalities, epochs, args.windows))


if __name__ == "__main__":
    run_main(main)

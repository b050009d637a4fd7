"""benchmarks/dtm_log_summary.py: it reads what a real DMAF training logged, and its kappa = 0 replay
gives the weights DTM itself gives without shrinkage."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FOLD
from nnunetv2_dmaf.training.dtm import DynamicTrainingMonitor

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("dtm_log_summary", REPO / "benchmarks" / "dtm_log_summary.py")
summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summary)


def test_reads_the_gaps_and_weights_a_dmaf_training_logged(demo_model, tmp_path, capsys):
    fold = demo_model.model_folder / f"fold_{FOLD}"
    history = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["dmaf_dtm_state"]["history"]
    settings, modalities, epochs = summary.read_run(summary.log_files([fold]))
    assert settings["shrinkage"] == 50.0 and modalities == list(history[0]["gaps"])
    assert list(epochs) == list(range(len(history)))
    for epoch, state in zip(epochs.values(), history):
        for logged, key in ((epoch["gaps"], "gaps"), (epoch["weights_next"], "weights"), (epoch["scales_next"], "scales")):
            np.testing.assert_allclose([logged[m] for m in modalities], [state[key][m] for m in modalities], atol=1e-4)

    # a continued run: a later log repeats epoch 1 and adds epoch 2; each epoch counts once, the later line
    first = next(fold.glob("training_log_*.txt"))
    text = first.read_text()
    later = text.replace(": Epoch 0", ": Epoch 2").replace("gaps {'T1': ", "gaps {'T1': 1")  # epoch 1 again, +10
    (tmp_path / first.name).write_text(text)
    (tmp_path / "training_log_2999_1_1_00_00_00.txt").write_text(later)
    _, _, continued = summary.read_run(summary.log_files([tmp_path]))
    assert list(continued) == list(range(3)) and continued[0] == epochs[0]
    assert continued[1]["gaps"]["T1"] == pytest.approx(epochs[1]["gaps"]["T1"] + 10)

    summary.main([str(fold), "--windows", "0", "1", "2"])
    out = capsys.readouterr().out
    assert out.startswith(f"{len(history)} epochs with DTM lines") and "epochs 0-0 (1)" in out and "epochs 1-1 (1)" in out


def test_kappa_zero_replay_gives_the_weights_of_dtm_without_shrinkage():
    names = ["T1", "T1ce", "T2", "FLAIR"]
    monitor = DynamicTrainingMonitor(names, shrinkage=0.0)
    rng = np.random.default_rng(0)
    logged_gaps, logged_weights = [], []
    for epoch in range(12):
        modality = torch.from_numpy(rng.choice(4, size=60, p=[0.4, 0.3, 0.05, 0.25]))
        gaps = torch.rand(60, dtype=torch.float64) + 0.5 * (modality == 2) + 0.02 * epoch
        monitor.record(gaps, None, modality)
        state = monitor.end_epoch()
        logged_gaps.append([state["gaps"][m] for m in names])
        logged_weights.append([state["weights"][m] for m in names])
    settings = dict(gap_momentum=monitor.gap_momentum, shrinkage=50.0, weight_exponent=monitor.weight_exponent,
                    weight_bounds=monitor.weight_bounds)
    replayed = summary.replay_unshrunk_weights(settings, names, np.array(logged_gaps))
    np.testing.assert_allclose(replayed, logged_weights, rtol=1e-9)
    assert replayed[-1, 2] > 1.2  # the lagging rare modality keeps its lead


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "training_log_2026_1_1_00_00_00.txt").write_text("2026-01-01 00:00:00.0: Epoch 0\n")
    for argv, code, fragment in (([str(tmp_path / "none")], 1, "no such file or folder"),
                                 ([str(tmp_path)], 1, "settings line"),
                                 ([str(tmp_path), "--windows", "3", "1"], 2, "--windows 3 1")):
        with pytest.raises(SystemExit) as exit_info:
            summary.run_main(summary.main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == code and len(err) == 1 and fragment in err[0], err

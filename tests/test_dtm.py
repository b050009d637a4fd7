"""DTM: noise-robust per-modality gradient scales (simulated mr2468 availability), loss weights
towards lagging modalities, state round trip, DDP reduction."""
from __future__ import annotations

import ast
import csv
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import SHARED_DIR
from nnunetv2_dmaf.training.dtm import DynamicTrainingMonitor, per_sample_soft_dice_loss

MODALITIES = ("FLAIR", "T1ce", "T1", "T2")  # the published tables' mask order
MR2468 = SHARED_DIR / "data" / "imbalanced_splits" / "Brats2020_imb_split_mr2468.csv"


def _mr2468_masks() -> np.ndarray:
    if MR2468.is_file():
        with open(MR2468, newline="") as f:
            return np.array([ast.literal_eval(row["mask"]) for row in csv.DictReader(f)], dtype=bool)
    rng = np.random.default_rng(0)  # same realised rates without ../shared
    masks = rng.random((219, 4)) >= np.array([0.59, 0.38, 0.16, 0.80])
    masks[~masks.any(1), 2] = True
    return masks


def simulate(time_constants, seed: int, epochs: int = 100, iterations: int = 250, batch: int = 2,
             noise: float = 0.15) -> np.ndarray:
    """DTM fed with per-pair losses 0.2 + 0.6 exp(-t / tau_m) + N(0, noise) of cases drawn from the
    mr2468 table (batch 2, nnU-Net's 250 iterations per epoch); returns the scales per epoch [E, M]."""
    rng = np.random.default_rng(seed)
    table = _mr2468_masks()
    tau = np.asarray(time_constants, dtype=float)
    dtm = DynamicTrainingMonitor(MODALITIES)
    scales = []
    for epoch in range(epochs):
        for it in range(iterations):
            samples, modality = np.nonzero(table[rng.integers(len(table), size=batch)])
            t = epoch + it / iterations
            signal = np.clip(0.2 + 0.6 * np.exp(-t / tau[modality]) + rng.normal(0, noise, len(modality)), 0, 1)
            gap = 0.5 + rng.normal(0, noise, len(modality))
            dtm.record(torch.tensor(gap), torch.tensor(signal), torch.tensor(modality))
        scales.append(dtm.end_epoch()["scales"])
    return np.array([[s[m] for m in MODALITIES] for s in scales])


@pytest.mark.parametrize("seed", [0, 1])
def test_identical_modalities_keep_scale_one_despite_imbalanced_availability(seed):
    scales = simulate([10, 10, 10, 10], seed)
    assert np.all(scales.mean(0) >= 0.95) and np.all(scales.mean(0) <= 1.05), scales.mean(0)
    assert not np.any(scales <= DynamicTrainingMonitor(MODALITIES).min_grad_scale + 1e-9)


def test_truly_faster_modality_is_slowed():
    scales = simulate([10, 3, 10, 10], seed=0, epochs=30)
    early = scales[:15].mean(0)
    assert early[1] < 0.9 and early[1] < early[[0, 2, 3]].min() - 0.05, early


def _epoch(dtm: DynamicTrainingMonitor, gaps: list[float], signals: list[float], repeats: int = 30) -> dict:
    """Every modality present once per iteration with these values."""
    for _ in range(repeats):
        dtm.record(torch.tensor(gaps), torch.tensor(signals), torch.arange(len(gaps)))
    return dtm.end_epoch()


def test_loss_weights_favour_lagging_modalities_and_are_bounded():
    dtm = DynamicTrainingMonitor(MODALITIES, shrinkage=0.0)
    assert dtm.weights() == {m: 1.0 for m in MODALITIES}
    summary = _epoch(dtm, [0.2, 0.4, 0.4, 4.0], [0.5] * 4)
    w = summary["weights"]
    assert w["T2"] == 2.0 and w["FLAIR"] == 0.5 and w["T1ce"] == w["T1"] < 1  # larger gap, larger weight
    off = DynamicTrainingMonitor(MODALITIES, reweight_losses=False)
    assert _epoch(off, [0.2, 0.4, 0.4, 4.0], [0.5] * 4)["weights"] == {m: 1.0 for m in MODALITIES}


def test_shrinkage_keeps_a_rare_noisy_modality_near_the_mean():
    dtm = DynamicTrainingMonitor(MODALITIES, shrinkage=50.0)
    dtm.record(torch.full((400,), 0.5), None, torch.arange(3).repeat(134)[:400])
    dtm.record(torch.tensor([1.5, 1.5]), None, torch.tensor([3, 3]))  # 2 unlucky samples of T2
    weights = dtm.end_epoch()["weights"]
    assert 1.0 < weights["T2"] < 1.1


def test_modality_without_samples_keeps_weight_and_scale_one():
    dtm = DynamicTrainingMonitor(MODALITIES)
    for signals in ([0.9, 0.9, 0.9], [0.5, 0.8, 0.8], [0.3, 0.7, 0.7]):
        dtm.record(torch.zeros(90), torch.tensor(signals * 30), torch.arange(3).repeat(30))
        summary = dtm.end_epoch()
    assert summary["scales"]["T2"] == 1.0 and summary["weights"]["T2"] == 1.0
    assert summary["scales"]["FLAIR"] < 1.0  # FLAIR falls much faster than T1ce / T1


def test_scale_encoder_gradients_multiplies_only_the_scaled_modality_group():
    dtm = DynamicTrainingMonitor(("x", "y"))
    dtm.grad_scales = np.array([0.25, 1.0])
    encoder = nn.Conv1d(2, 4, 1, groups=2)  # modality groups: output channels 0-1 = x, 2-3 = y
    encoder(torch.ones(1, 2, 3)).sum().backward()
    before = [p.grad.clone() for p in encoder.parameters()]
    dtm.scale_encoder_gradients(encoder)
    for old, new in zip(before, (p.grad for p in encoder.parameters())):
        torch.testing.assert_close(new[:2], old[:2] * 0.25)
        torch.testing.assert_close(new[2:], old[2:])
    with pytest.raises(ValueError, match="does not split into 2 modality groups"):
        bad = nn.Linear(2, 3)
        bad(torch.ones(1, 2)).sum().backward()
        dtm.scale_encoder_gradients(bad)
    off = DynamicTrainingMonitor(("x", "y"), modulate_gradients=False)
    off.grad_scales = np.array([0.25, 1.0])  # e.g. restored from a checkpoint
    before = [p.grad.clone() for p in encoder.parameters()]
    off.scale_encoder_gradients(encoder)
    for old, new in zip(before, (p.grad for p in encoder.parameters())):
        torch.testing.assert_close(new, old)


def test_state_dict_round_trip_continues_identically():
    reference = DynamicTrainingMonitor(MODALITIES)
    _epoch(reference, [0.3, 0.5, 0.2, 0.9], [0.9, 0.8, 0.9, 0.9])
    restored = DynamicTrainingMonitor(MODALITIES)
    restored.load_state_dict(json.loads(json.dumps(reference.state_dict())))
    summaries = [_epoch(dtm, [0.4, 0.4, 0.2, 0.8], [0.8, 0.3, 0.85, 0.88]) for dtm in (reference, restored)]
    for key in ("weights", "scales", "gaps", "speeds"):
        assert summaries[1][key] == pytest.approx(summaries[0][key], nan_ok=True)
    assert summaries[1]["scales"]["T1ce"] < 1  # the restored previous-epoch signal was used
    assert restored.epochs == 2 and len(restored.history) == 2
    with pytest.raises(ValueError, match="modalities"):
        DynamicTrainingMonitor(("x",)).load_state_dict(reference.state_dict())


def test_per_sample_soft_dice_loss_labels_and_regions():
    labels = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1
    labels[1, 0, :2] = 2
    perfect = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float() * 100
    loss = per_sample_soft_dice_loss(perfect, labels, has_regions=False)
    assert loss.shape == (2,) and loss.max() < 0.51  # each sample has one of two classes right, other empty
    regions = torch.rand(2, 3, 4, 4, 4) > 0.5
    assert per_sample_soft_dice_loss(regions.float() * 200 - 100, regions, has_regions=True).max() < 1e-3
    assert per_sample_soft_dice_loss(-regions.float() * 200 + 100, regions, has_regions=True).min() > 0.99


# ----------------------------------------------------------------------------- DDP (gloo, CPU)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_records(rank: int) -> list[tuple[list[float], list[float]]]:
    """Different statistics per rank, 3 epochs of (gaps, signals)."""
    return [([1.0 + rank, 0.5, 0.1 * (rank + 1), 0.4], [1.0, 1.0 - 0.1 * rank, 1.0, 1.0]),
            ([1.5 + 2 * rank, 0.4, 0.3, 0.2], [0.5 + 0.2 * rank, 0.9, 0.95, 1.0 - 0.3 * rank]),
            ([1.2, 0.4, 0.3, 0.2 + rank], [0.4, 0.6 - 0.1 * rank, 0.9, 0.7])]


def _feed(dtm: DynamicTrainingMonitor, gaps, signals) -> None:
    for k in range(3):
        dtm.record(torch.tensor(gaps) * (1 + 0.1 * k), torch.tensor(signals) * (1 - 0.05 * k), torch.arange(4))


def _ddp_worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        dtm = DynamicTrainingMonitor(MODALITIES, significance=0.0)
        summaries = []
        for gaps, signals in _rank_records(rank):
            _feed(dtm, gaps, signals)
            summaries.append(dtm.end_epoch())
        queue.put((rank, summaries))
    finally:
        dist.destroy_process_group()


def test_ddp_reduction_gives_same_result_on_all_ranks_equal_to_pooled_statistics():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    processes = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in processes:
        p.start()
    results = dict(queue.get(timeout=60) for _ in processes)
    for p in processes:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert json.dumps(results[0]) == json.dumps(results[1])  # bit-identical on both ranks (NaN-safe)

    pooled = DynamicTrainingMonitor(MODALITIES, significance=0.0)
    expected = []
    for epoch in range(3):
        for rank in range(2):
            _feed(pooled, *_rank_records(rank)[epoch])
        expected.append(pooled.end_epoch())
    for got, want in zip(results[0], expected):
        for key in ("gaps", "weights", "scales", "speeds"):
            assert got[key] == pytest.approx(want[key], nan_ok=True), key
    assert any(s != 1.0 for s in expected[-1]["scales"].values())

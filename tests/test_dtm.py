"""DTM: loss reweighting from gap trends, OGM-GE-style gradient scales, state, DDP reduction."""
from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nnunetv2_dmaf.training.dtm import DynamicTrainingMonitor, per_sample_soft_dice_loss

LOSSES = ("a", "b", "c")
MODALITIES = ("T1", "T1ce", "T2", "FLAIR")


def _epoch(dtm: DynamicTrainingMonitor, gaps: dict, modality_losses: list[float], iterations: int = 3) -> dict:
    """Records a few iterations with these values; every modality present in one sample each."""
    for _ in range(iterations):
        dtm.record_gaps({k: torch.tensor(v) for k, v in gaps.items()})
        dtm.record_segmentation(torch.tensor(modality_losses), torch.eye(len(modality_losses), dtype=torch.bool))
    return dtm.end_epoch()


def test_weights_start_at_one_and_stay_while_gaps_are_steady():
    dtm = DynamicTrainingMonitor(LOSSES, MODALITIES)
    assert dtm.weights() == {"a": 1.0, "b": 1.0, "c": 1.0} and set(dtm.scales().values()) == {1.0}
    for _ in range(3):
        summary = _epoch(dtm, {"a": 0.5, "b": 0.2, "c": 0.1}, [1.0, 1.0, 1.0, 1.0])
    assert summary["weights"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    assert summary["gaps"] == pytest.approx({"a": 0.5, "b": 0.2, "c": 0.1})


def test_weights_follow_diverging_gaps_and_are_bounded():
    dtm = DynamicTrainingMonitor(LOSSES, MODALITIES, gap_momentum=0.5, weight_bounds=(0.5, 2.0))
    _epoch(dtm, {"a": 1.0, "b": 1.0, "c": 1.0}, [1, 1, 1, 1])
    summary = _epoch(dtm, {"a": 1.5, "b": 0.5, "c": 1.0}, [1, 1, 1, 1])  # a diverges, b converges
    trend = np.array([1.5, 0.5, 1.0])  # (gap + 1e-4) / (ema + 1e-4) with ema = 1
    trend = (trend + 1e-4) / (1 + 1e-4)
    expected = np.clip(3 * np.exp(trend) / np.exp(trend).sum(), 0.5, 2.0)
    assert [summary["weights"][k] for k in LOSSES] == pytest.approx(expected.tolist())
    assert summary["weights"]["a"] > 1 > summary["weights"]["b"]
    summary = _epoch(dtm, {"a": 100.0, "b": 0.0, "c": 1.0}, [1, 1, 1, 1])
    assert summary["weights"]["a"] == 2.0 and summary["weights"]["b"] == 0.5  # clipped


def test_epoch_without_distillation_keeps_gap_state():
    dtm = DynamicTrainingMonitor(LOSSES, MODALITIES)
    _epoch(dtm, {"a": 1.0, "b": 1.0, "c": 1.0}, [1, 1, 1, 1])
    ema = dtm.gap_ema.copy()
    summary = _epoch(dtm, {}, [1, 1, 1, 1])
    np.testing.assert_array_equal(dtm.gap_ema, ema)
    assert summary["weights"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_fast_converging_modality_gets_smaller_gradient_scale():
    dtm = DynamicTrainingMonitor(LOSSES, MODALITIES, speed_momentum=0.0, grad_alpha=0.5)
    _epoch(dtm, {}, [1.0, 1.0, 1.0, 1.0])
    summary = _epoch(dtm, {}, [0.4, 0.9, 0.9, 0.9])  # T1's loss falls fastest
    speeds = np.array([0.6, 0.1, 0.1, 0.1])
    ratio = speeds / speeds.mean()
    assert summary["speeds"]["T1"] == pytest.approx(0.6)
    assert summary["scales"]["T1"] == pytest.approx(1 - math.tanh(0.5 * (ratio[0] - 1)))
    assert summary["scales"]["T1"] < 1 and summary["scales"]["T2"] == 1.0 == summary["scales"]["FLAIR"]
    # no modality improving: no modulation
    assert set(_epoch(dtm, {}, [0.5, 0.95, 0.95, 0.95])["scales"].values()) == {1.0}


def test_modality_without_samples_keeps_scale_one():
    dtm = DynamicTrainingMonitor(LOSSES, ("x", "y", "z"), speed_momentum=0.0)
    for losses in ([1.0, 1.0], [0.2, 0.9]):
        dtm.record_segmentation(torch.tensor(losses), torch.tensor([[True, False, False], [False, True, False]]))
        summary = dtm.end_epoch()
    assert math.isnan(summary["speeds"]["z"]) and summary["scales"]["z"] == 1.0 and summary["scales"]["x"] < 1


def test_scale_encoder_gradients_multiplies_only_scaled_encoders():
    dtm = DynamicTrainingMonitor(LOSSES, ("x", "y"))
    dtm.grad_scales = np.array([0.25, 1.0])
    encoders = [nn.Linear(2, 2), nn.Linear(2, 2)]
    for e in encoders:
        e(torch.ones(1, 2)).sum().backward()
    before = [p.grad.clone() for e in encoders for p in e.parameters()]
    dtm.scale_encoder_gradients(encoders)
    after = [p.grad for e in encoders for p in e.parameters()]
    torch.testing.assert_close(after[0], before[0] * 0.25)
    torch.testing.assert_close(after[2], before[2])


def test_state_dict_round_trip_continues_identically():
    reference = DynamicTrainingMonitor(LOSSES, MODALITIES)
    _epoch(reference, {"a": 1.0, "b": 0.5, "c": 0.2}, [1.0, 0.9, 0.8, 0.7])
    restored = DynamicTrainingMonitor(LOSSES, MODALITIES)
    restored.load_state_dict(reference.state_dict())
    summaries = [_epoch(dtm, {"a": 1.2, "b": 0.4, "c": 0.2}, [0.7, 0.9, 0.6, 0.7]) for dtm in (reference, restored)]
    for key in ("weights", "scales", "gaps", "speeds"):
        assert summaries[1][key] == pytest.approx(summaries[0][key], nan_ok=True)
    assert summaries[1]["weights"] != {"a": 1.0, "b": 1.0, "c": 1.0}  # the restored EMA was used
    np.testing.assert_array_equal(restored.gap_ema, reference.gap_ema)
    assert restored.epochs == 2 and len(restored.history) == 2
    with pytest.raises(ValueError, match="modalities"):
        DynamicTrainingMonitor(LOSSES, ("x",)).load_state_dict(reference.state_dict())


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


def _rank_records(rank: int) -> tuple[list[dict], list[list[float]]]:
    """Different statistics per rank: 2 epochs, gaps and per-sample losses."""
    gaps = [{"a": 1.0 + rank, "b": 0.5, "c": 0.1 * (rank + 1)}, {"a": 1.5 + 2 * rank, "b": 0.4, "c": 0.3}]
    losses = [[1.0, 1.0 - 0.1 * rank, 1.0, 1.0], [0.5 + 0.2 * rank, 0.9, 0.95, 1.0 - 0.3 * rank]]
    return gaps, losses


def _ddp_worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        dtm = DynamicTrainingMonitor(LOSSES, MODALITIES, gap_momentum=0.5, speed_momentum=0.0)
        gaps, losses = _rank_records(rank)
        summaries = [_epoch(dtm, g, l) for g, l in zip(gaps, losses)]
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

    # single process fed with both ranks' records = the mean of the per-rank statistics
    pooled = DynamicTrainingMonitor(LOSSES, MODALITIES, gap_momentum=0.5, speed_momentum=0.0)
    expected = []
    for epoch in range(2):
        for rank in range(2):
            gaps, losses = _rank_records(rank)
            for _ in range(3):
                pooled.record_gaps({k: torch.tensor(v) for k, v in gaps[epoch].items()})
                pooled.record_segmentation(torch.tensor(losses[epoch]), torch.eye(4, dtype=torch.bool))
        expected.append(pooled.end_epoch())
    assert results[0][1]["gaps"]["a"] == pytest.approx((1.5 + 3.5) / 2)
    for got, want in zip(results[0], expected):
        for key in ("gaps", "weights", "scales", "speeds"):
            assert got[key] == pytest.approx(want[key], nan_ok=True), key

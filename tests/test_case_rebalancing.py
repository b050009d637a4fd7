"""Rebalanced case sampling: each training case is drawn in proportion to the rarity of its rarest
available modality, through nnU-Net's own data loader (validation stays uniform)."""
from __future__ import annotations

import numpy as np
import pytest

from nnunetv2_dmaf.availability import write_availability_table
from nnunetv2_dmaf.training.case_rebalancing import rebalanced_case_probabilities
from nnunetv2_dmaf.training.fusion_rebalancing import presence_frequencies
from nnunetv2_dmaf.training.modality_dropout import ModalityDropoutConfig

NAMES = ("T1", "T1ce", "T2", "FLAIR")
TABLE = {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 0, 1], bool),
         "c": np.array([1, 1, 1, 0], bool), "d": np.array([1, 1, 0, 0], bool)}


def test_a_case_is_weighted_by_its_rarest_modality():
    config = ModalityDropoutConfig(NAMES, np.zeros(4), TABLE)
    ids = ["a", "b", "c", "d"]  # frequencies T1 1, T1ce 0.75, T2 0.25, FLAIR 0.25
    p = rebalanced_case_probabilities(config, ids, 1.0)
    np.testing.assert_allclose(p, np.array([1 / 0.75, 4, 4, 1 / 0.75]) / (8 + 2 / 0.75))
    np.testing.assert_allclose(rebalanced_case_probabilities(config, ids[::-1], 1.0), p[::-1])  # order of ids
    milder = rebalanced_case_probabilities(config, ids, 0.5)
    assert milder[2] < p[2] and milder[0] > p[0]
    presence = presence_frequencies(config, ids, p)
    assert presence[2] > 0.25 and presence[3] > 0.25  # the rare ones are drawn more often
    np.testing.assert_allclose(presence_frequencies(config, ids, np.full(4, 0.25)), [1, 0.75, 0.25, 0.25])
    # the frequencies come from the cases given (the training cases), not from the whole table
    np.testing.assert_allclose(rebalanced_case_probabilities(config, ["a", "c"], 1.0), [1 / 3, 2 / 3])


def test_uniform_where_there_is_nothing_to_rebalance():
    config = ModalityDropoutConfig(NAMES, np.zeros(4), TABLE)
    assert rebalanced_case_probabilities(config, list(TABLE), 0.0) is None
    assert rebalanced_case_probabilities(config, ["a", "d"], 1.0) is None  # same modalities
    rates_only = ModalityDropoutConfig(NAMES, np.array([0.2, 0.0, 0.8, 0.0]))
    assert rebalanced_case_probabilities(rates_only, list(TABLE), 1.0) is None
    with pytest.raises(ValueError, match="exponent"):
        rebalanced_case_probabilities(config, list(TABLE), -1.0)


def test_trainer_draws_training_cases_by_rarity(trainer_factory, demo_model, tmp_path):
    """Fold 1 trains on cases 001, 002, 003, 005, 006, 007; only 002 has T2, 001-003 have FLAIR."""
    cases = [f"DMAFDemo_{i:03d}" for i in range(8)]
    table = {c: [True, True, c == "DMAFDemo_002", c in ("DMAFDemo_001", "DMAFDemo_002", "DMAFDemo_003")]
             for c in cases}
    path = write_availability_table(tmp_path / "modality_availability.csv", table, NAMES)
    trainer = trainer_factory("nnUNetTrainerDMAF_rebalanced", nnUNet_dmaf_availability_table=str(path))
    trainer.initialize()
    train_loader, val_loader = trainer.get_dataloaders()
    loader = train_loader.data_loader
    weights = {"DMAFDemo_002": 6.0, "DMAFDemo_001": 2.0, "DMAFDemo_003": 2.0}  # 1 / (1/6), 1 / (3/6)
    expected = np.array([weights.get(c, 1.0) for c in loader.indices])
    np.testing.assert_allclose(loader.sampling_probabilities, expected / expected.sum())
    np.random.seed(0)
    draws = np.concatenate([loader.get_indices() for _ in range(1000)])
    assert abs(np.mean(draws == "DMAFDemo_002") - 6 / 13) < 0.04  # uniform would give 1/6
    assert val_loader.data_loader.sampling_probabilities is None

    plain = trainer_factory("nnUNetTrainerDMAF_singleModalityFusion", nnUNet_dmaf_availability_table=str(path))
    plain.initialize()
    assert plain.get_dataloaders()[0].data_loader.sampling_probabilities is None  # nnU-Net's uniform draw

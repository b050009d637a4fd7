"""Rebalanced single-modality fusion: the sampler's masks and frequencies, and how train_step uses
them (the fusion sees the reduced mask, the uni-modal losses every present modality, the
distillation only samples whose fused feature is a teacher)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunetv2_dmaf.training.distillation import LOSS_NAMES
from nnunetv2_dmaf.training.fusion_rebalancing import SingleModalityFusionSampler, presence_frequencies
from nnunetv2_dmaf.training.modality_dropout import ModalityDropoutConfig

NAMES = ("T1", "T1ce", "T2", "FLAIR")


def test_presence_frequencies_combine_table_and_rates():
    table = {"a": np.array([1, 1, 0, 1], bool), "b": np.array([1, 0, 0, 1], bool),
             "c": np.array([1, 1, 1, 0], bool), "d": np.array([0, 1, 0, 1], bool)}
    config = ModalityDropoutConfig(NAMES, np.array([0.0, 0.5, 0.0, 0.0]), table)
    np.testing.assert_allclose(presence_frequencies(config), [0.75, 0.375, 0.25, 0.75])
    np.testing.assert_allclose(presence_frequencies(config, ["a", "b"]), [1.0, 0.25, 0.0, 1.0])
    no_table = ModalityDropoutConfig(NAMES, np.array([0.2, 0.0, 0.8, 0.0]))
    np.testing.assert_allclose(presence_frequencies(no_table), [0.8, 1.0, 0.2, 1.0])


def test_sampler_keeps_one_present_modality_chosen_inversely_to_its_frequency():
    sampler = SingleModalityFusionSampler(np.array([0.8, 0.4, 0.1, 0.0]), probability=1.0)
    mask = torch.tensor([[True, True, True, True]] * 4000 + [[True, False, False, False]] * 10)
    fusion, reduced = sampler(mask, np.random.default_rng(0))
    assert fusion.dtype == torch.bool and fusion.shape == mask.shape
    assert not (fusion & ~mask).any()  # a subset of the present modalities
    assert reduced[:4000].all() and not reduced[4000:].any()  # a single present modality stays as it is
    assert (fusion[:4000].sum(1) == 1).all()
    chosen = fusion[:4000].float().mean(0).numpy()
    expected = np.array([1 / 0.8, 1 / 0.4, 1 / 0.1, 0.0])
    np.testing.assert_allclose(chosen, expected / expected.sum(), atol=0.03)  # never-present FLAIR: never
    assert torch.equal(fusion[4000:], mask[4000:])


@pytest.mark.parametrize("probability", [0.0, 0.3])
def test_sampler_probability(probability):
    sampler = SingleModalityFusionSampler(np.ones(4), probability)
    mask = torch.ones(5000, 4, dtype=torch.bool)
    fusion, reduced = sampler(mask, np.random.default_rng(1))
    assert abs(float(reduced.float().mean()) - probability) < 0.03
    assert torch.equal(fusion[~reduced], mask[~reduced])
    with pytest.raises(ValueError):
        SingleModalityFusionSampler(np.ones(4), 1.5)


def test_train_step_fuses_the_reduced_mask_and_skips_distillation_of_reduced_samples(trainer_factory):
    trainer = trainer_factory("nnUNetTrainerDMAF_singleModalityFusion")
    assert trainer.single_modality_fusion_probability == 0.5
    trainer.single_modality_fusion_probability = 1.0
    trainer.initialize()
    train_loader, _ = trainer.get_dataloaders()
    batch = next(train_loader)
    mask = batch["modality_mask"]
    assert (mask.sum(1) >= 2).all()  # complete demo data: every sample gets reduced
    seen = {}
    forward, compute_losses = trainer.network.forward, trainer.compute_losses

    def record_forward(data, modality_mask=None, return_features=False):
        seen["fusion_mask"] = modality_mask.clone()
        return forward(data, modality_mask=modality_mask, return_features=return_features)

    def record_losses(output, features, target, present, teacher_pairs=None):
        seen["unimodal_pairs"] = features.pair_index_host.clone()
        seen["teacher_pairs"] = torch.ones(len(features.pair_index_host), dtype=torch.bool) \
            if teacher_pairs is None else teacher_pairs.clone()
        loss, terms = compute_losses(output, features, target, present, teacher_pairs)
        seen["terms"] = terms
        return loss, terms

    trainer.network.forward, trainer.compute_losses = record_forward, record_losses
    trainer.train_step(batch)
    assert (seen["fusion_mask"].sum(1) == 1).all() and not (seen["fusion_mask"] & ~mask).any()
    assert len(seen["unimodal_pairs"]) == int(mask.sum())  # every present modality: uni-modal loss
    assert not seen["teacher_pairs"].any()  # no sample has a teacher
    assert "pair_gap" not in seen["terms"] and (seen["terms"]["unimodal"] > 0).all()
    for name in LOSS_NAMES:  # the distillation ran (its heads take part) with weight 0
        assert torch.equal(seen["terms"][name], torch.zeros(4))
    assert float(trainer.dtm._acc[0].sum()) == 0  # no distillation gap recorded

    trainer.fusion_sampler.probability = 0.5
    batch = next(train_loader)
    np.random.seed(2)  # the sampler reduces the first sample, not the second
    trainer.train_step(batch)
    teacher = seen["teacher_pairs"]
    assert teacher.sum() == 4 and len(teacher) == 8 and len(seen["terms"]["pair_gap"]) == 4
    assert (seen["terms"]["prototype"] >= 0).all() and (seen["terms"]["relation_covariance"] > 0).all()

    trainer.fusion_sampler.probability = 0.0
    trainer.train_step(next(train_loader))
    assert seen["teacher_pairs"].all() and len(seen["terms"]["pair_gap"]) == len(seen["unimodal_pairs"])


@pytest.mark.parametrize("trainer_name, probability", [
    ("nnUNetTrainerDMAF", 0.0), ("nnUNetTrainerDMAF_singleModalityFusion", 0.5),
    ("nnUNetTrainerDMAF_singleModalityFusion_025", 0.25),
    ("nnUNetTrainerDMAF_singleModalityFusion_025_noDTM", 0.25)])
def test_each_variant_draws_single_modality_fusion_at_its_probability(trainer_factory, trainer_name, probability):
    trainer = trainer_factory(trainer_name)
    trainer.initialize()
    assert trainer.fusion_sampler.probability == probability

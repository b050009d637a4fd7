"""Relation (CCA, MAA) and prototype distillation: hand-computed values, zero for identical student and
teacher, and the single-pass objective on DMAFNet (table mode: cases that truly lack modalities)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modality_blocks import modality_gradient_norm
from nnunetv2_dmaf.architecture import DMAFNet
from nnunetv2_dmaf.training.distillation import (CrossModalDistillation, DistillationSettings,
                                                 attention_alignment, covariance_consistency,
                                                 normalized_covariance, prototype_alignment, region_masks)


def test_normalized_covariance_by_hand():
    x = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [2.0, -2.0, 2.0, -2.0]]])  # [P=1, C=2, N=4]
    cov = normalized_covariance(x)
    expected = torch.tensor([[1.0, 2.0], [2.0, 4.0]]) / 5.0  # Frobenius norm of [[1,2],[2,4]] is 5
    torch.testing.assert_close(cov[0], expected)
    assert normalized_covariance(torch.ones(1, 3, 5)).abs().max() == 0  # constant map -> zero matrix


def test_covariance_consistency_by_hand_zero_for_equal_and_detached_teacher():
    a = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [1.0, -1.0, 1.0, -1.0]]], requires_grad=True)
    b = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0]]], requires_grad=True)
    # cov(a) = [[.5,.5],[.5,.5]], cov(b) = [[.5,-.5],[-.5,.5]]: difference squared = 4 * 1 = 2 ... per pair
    loss = covariance_consistency(a, b)
    assert loss.shape == (1,) and loss.item() == pytest.approx(2.0)
    assert covariance_consistency(a, a.detach().clone()).item() == pytest.approx(0.0, abs=1e-7)
    loss.sum().backward()
    assert b.grad is None and a.grad is not None


def test_attention_alignment_by_hand_and_valid_tokens():
    attended = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [P=1, T=2, C=2]
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert attention_alignment(attended, teacher).item() == pytest.approx(0.5)  # (0 + 1) / 2
    assert attention_alignment(attended, teacher, torch.tensor([[True, False]])).item() == pytest.approx(0.0)
    assert attention_alignment(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_prototype_alignment_by_hand():
    # features [P=1, C=2, 1, 3]; class 0 at pixel 0, class 1 at pixels 1-2, class 2 absent
    student = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 1.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0, 0.0]], [[1.0, 2.0, 0.0]]]])
    labels = torch.tensor([[[[0, 1, 1]]]])
    masks = region_masks(labels, (1, 3), num_classes=3)
    assert masks[0, 2].sum() == 0
    # student prototypes: class 0 (1, 0), class 1 (1, .5); teacher: class 0 (1, 1), class 1 (0, 1)
    expected = ((1 - 1 / math.sqrt(2)) + (1 - 0.5 / math.sqrt(1.25))) / 2
    assert prototype_alignment(student, teacher, masks).item() == pytest.approx(expected, rel=1e-6)
    assert prototype_alignment(student, student.clone(), masks).item() == pytest.approx(0.0, abs=1e-7)
    assert prototype_alignment(student, teacher, torch.zeros_like(masks)).item() == 0.0  # no class


def test_region_masks_label_and_region_targets():
    labels = torch.tensor([[[[0, 1], [2, 9]]]])  # 9 = ignore label: in no class
    one_hot = region_masks(labels, (2, 2), num_classes=3)
    assert one_hot[0, :, 1, 1].sum() == 0 and one_hot[0, 2, 1, 0] == 1
    # area downsampling: fractions
    assert region_masks(labels, (1, 1), num_classes=3)[0, :, 0, 0].tolist() == [0.25, 0.25, 0.25]
    regions = torch.tensor([[[[1, 1], [1, 0]], [[0, 1], [1, 0]], [[0, 0], [1, 1]]]], dtype=torch.bool)
    masks = region_masks(regions, (2, 2), has_regions=True, has_ignore_channel=True)  # last channel = ignore
    assert masks.shape == (1, 2, 2, 2)
    assert masks[0, :, 1, 0].tolist() == [0.0, 0.0] and masks[0, 0, 0, 0] == 1


# ----------------------------------------------------------------------------- objective on DMAFNet
def _net() -> DMAFNet:
    torch.manual_seed(0)
    return DMAFNet(4, 3, n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv3d, kernel_sizes=3,
                   strides=[1, 2, 2], n_conv_per_stage=1, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                   norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                   deep_supervision=True)


def test_single_pass_objective_nonzero_per_present_pair_and_gradients_to_students_only():
    """Table mode: each sample truly has only some modalities; every term is non-zero for every
    present pair, from one forward pass, and no gradient flows into the fusion (teacher side)."""
    net = _net().train()
    x = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    x[~mask] = 0
    target = [torch.zeros(2, 3, *s, dtype=torch.bool) for s in ((16, 16, 16), (8, 8, 8), (4, 4, 4))]
    for t in target:
        t[:, :, : t.shape[2] // 2] = True  # regions present in the upper half
    _, features = net(x, mask, return_features=True)
    terms = CrossModalDistillation(DistillationSettings(), 3, has_regions=True)(features.present_pairs(mask), target)
    assert set(terms) == {"relation_covariance", "relation_attention", "prototype"}
    for name, values in terms.items():
        assert values.shape == (5,) and (values > 0).all(), name
    sum(v.sum() for v in terms.values()).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.fusions.parameters())
    assert all(p.grad is None for p in net.decoder.parameters())
    for m in range(4):
        assert modality_gradient_norm(net.encoder, 4, m) > 0, m
    assert net.attention_alignment.attention.in_proj_weight.grad.abs().sum() > 0

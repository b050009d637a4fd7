"""Relation and prototype distillation: hand-computed values, zero when student equals teacher."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnunetv2_dmaf.architecture import DMAFNet
from nnunetv2_dmaf.training.distillation import (CovarianceConsistencyLoss, DistillationObjective,
                                                 DistillationSettings, GraphRelationLoss,
                                                 PrototypeDistillationLoss, graph_relation, modality_nodes,
                                                 normalized_covariance, region_masks)


# ----------------------------------------------------------------------------- covariance
def test_normalized_covariance_by_hand():
    x = torch.tensor([[[1.0, -1.0], [2.0, -2.0]]])  # [B=1, C=2, N=2]
    # centred already; cov = x x^T / 2 = [[1, 2], [2, 4]], Frobenius norm 5
    torch.testing.assert_close(normalized_covariance(x), torch.tensor([[[0.2, 0.4], [0.4, 0.8]]]))
    assert normalized_covariance(torch.ones(1, 3, 4)).abs().max() == 0  # constant features


def test_covariance_loss_by_hand_and_zero_for_equal_inputs():
    student = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])  # normalized cov [[.5, .5], [.5, .5]]
    teacher = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]])  # normalized cov [[.5, -.5], [-.5, .5]]
    loss = CovarianceConsistencyLoss()
    assert loss(student, teacher).item() == pytest.approx(2.0)  # two off-diagonal entries differ by 1
    features = torch.randn(2, 8, 4, 4, 4)
    assert loss(features, features.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(features * 3 + 1, features).item() == pytest.approx(0.0, abs=1e-6)  # scale/shift invariant


# ----------------------------------------------------------------------------- graph relation
def _softmax(values):
    e = [math.exp(v) for v in values]
    return [v / sum(e) for v in e]


def test_graph_relation_by_hand():
    """Unit nodes e0, e1 and (e0 + e1)/sqrt(2), T = 0.5. Student has nodes 0, 1; teacher all three:
    through node 2 the teacher's nodes 0 and 1 become more alike."""
    temperature = 0.5
    r = 1 / math.sqrt(2)
    vectors = [[1.0, 0.0], [0.0, 1.0], [r, r]]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731

    def aggregated(present):  # h'_i = normalize(sum_j softmax_j(h_i.h_j / T) h_j) over present nodes
        out = []
        for i in present:
            a = _softmax([dot(vectors[i], vectors[j]) / temperature for j in present])
            v = [sum(w * vectors[j][d] for w, j in zip(a, present)) for d in range(2)]
            out.append([c / math.sqrt(dot(v, v)) for c in v])
        return out

    def relation(h):  # rows and keys over nodes 0, 1 only
        return [_softmax([dot(h[i], h[j]) / temperature for j in (0, 1)]) for i in (0, 1)]

    r_student = relation(aggregated([0, 1]))
    r_teacher = relation(aggregated([0, 1, 2])[:2])
    expected = sum(sum(t * math.log(t / s) for t, s in zip(rt, rs)) for rt, rs in zip(r_teacher, r_student)) / 2

    nodes = torch.tensor([vectors])  # [B=1, M=3, D=2]
    student_mask = torch.tensor([[True, True, False]])
    teacher_mask = torch.ones(1, 3, dtype=torch.bool)
    log_s = graph_relation(nodes, student_mask, student_mask, temperature)
    torch.testing.assert_close(log_s[0, :2, :2].exp(), torch.tensor(r_student))
    loss = GraphRelationLoss(temperature)(nodes, nodes, student_mask, teacher_mask)
    assert expected > 1e-2
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_graph_relation_zero_cases_and_ignores_missing_content():
    torch.manual_seed(0)
    nodes = torch.randn(3, 4, 16)
    loss = GraphRelationLoss()
    full = torch.ones(3, 4, dtype=torch.bool)
    assert loss(nodes, nodes, full, full).item() == pytest.approx(0.0, abs=1e-6)
    single = torch.tensor([[True, False, False, False]] * 3)
    assert loss(nodes, nodes, single, full).item() == 0.0  # one student node: nothing to relate
    partial = torch.tensor([[True, True, False, True], [False, True, True, False], [True, True, True, True]])
    value = loss(nodes, nodes, partial, full)
    assert value.item() > 0
    tampered = nodes.clone()
    tampered[~partial] = 1e3  # student rows of missing modalities are never read
    assert loss(tampered, nodes, partial, full).item() == pytest.approx(value.item(), rel=1e-6)


def test_modality_nodes_shape_and_centring():
    nodes = modality_nodes(torch.randn(2, 3, 5, 4, 4, 4))
    assert nodes.shape == (2, 3, 64)
    torch.testing.assert_close(nodes.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- prototypes
def test_prototype_loss_by_hand():
    # features [B=1, C=2, 1, 3]; class 0 at pixel 0, class 1 at pixels 1-2, class 2 absent
    student = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 1.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0, 0.0]], [[1.0, 2.0, 0.0]]]])
    labels = torch.tensor([[[[0, 1, 1]]]])
    masks = region_masks(labels, (1, 3), num_classes=3)
    assert masks[0, 2].sum() == 0
    # student prototypes: class 0 (1, 0), class 1 (1, .5); teacher: class 0 (1, 1), class 1 (0, 1)
    expected = ((1 - 1 / math.sqrt(2)) + (1 - 0.5 / math.sqrt(1.25))) / 2
    loss = PrototypeDistillationLoss()(student, teacher, masks)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert PrototypeDistillationLoss()(student, student.clone(), masks).item() == pytest.approx(0.0, abs=1e-7)
    assert PrototypeDistillationLoss()(student, teacher, torch.zeros_like(masks)).item() == 0.0  # no class


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


def test_objective_zero_for_equal_masks_positive_otherwise_and_gradients_only_to_student():
    net = _net().train()
    x = torch.randn(2, 4, 16, 16, 16)
    target = [torch.randint(0, 2, (2, 3, 16, 16, 16)).bool(), torch.randint(0, 2, (2, 3, 8, 8, 8)).bool()]
    objective = DistillationObjective(DistillationSettings(), num_classes=3, has_regions=True)
    full = torch.ones(2, 4, dtype=torch.bool)
    teacher = objective.teacher(net, x, full)
    assert set(teacher.fused) == {1, 2} and not teacher.fused[2].requires_grad  # only the needed stages

    _, same = net(x, full, return_features=True)
    for name, value in objective(same, teacher, target).items():
        assert value.item() == pytest.approx(0.0, abs=1e-5), name

    partial = torch.tensor([[True, False, True, False], [False, True, True, True]])
    _, student = net(x, partial, return_features=True)
    losses = objective(student, teacher, target)
    assert all(v.item() > 1e-6 for v in losses.values()), losses
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in net.encoders[0].parameters())
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in net.decoder.parameters())  # only encoders/fusion

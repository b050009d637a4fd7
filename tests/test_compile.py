"""torch.compile (nnU-Net's default on CUDA) traces DMAFNet.forward without graph breaks and compiles
it once for all modality masks. Checked on CPU with dynamo's explain and the "aot_eager" backend (the
graph capture and autograd tracing of a GPU compile, without code generation)."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn
from torch._dynamo.utils import counters

from nnunetv2_dmaf.architecture import DMAFNet


def small_net() -> DMAFNet:
    torch.manual_seed(0)
    return DMAFNet(4, 3, 3, [16, 32, 64], nn.Conv3d, 3, [1, 2, 2], [1, 1], n_conv_per_stage=[1, 1, 1],
                   conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                   nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def random_masks(count: int, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(count):
        m = torch.rand(batch, 4, generator=g) < 0.5
        m[:, 0] |= ~m.any(1)  # at least one modality per sample
        masks.append(m)
    return masks


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


@pytest.mark.parametrize("return_features", [False, True])
def test_forward_has_no_graph_breaks_for_a_given_mask(return_features):
    net = small_net().train()
    x = torch.randn(2, 4, 16, 16, 16)
    explanation = dynamo.explain(lambda a, m: net(a, m, return_features=return_features))(x, random_masks(1)[0])
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_training_step_compiles_once_for_many_random_masks():
    net = small_net().train()
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(2, 4, 16, 16, 16)
    for mask in random_masks(10):
        output, features = compiled(x, mask, return_features=True)
        (output[0].mean() + features.present_pairs(mask).unimodal_logits[0].mean()).backward()
    assert counters["stats"]["unique_graphs"] == 1


def test_inference_compiles_once_per_way_of_giving_the_mask():
    """nnU-Net's predictor calls network(x): the mask comes from set_inference_modality_mask ([M]),
    from the trainer's validation step ([B, M]) or from all-zero channels; one graph each, whatever
    the mask values."""
    net = small_net().eval()
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(2, 4, 16, 16, 16)
    masks = random_masks(6)
    with torch.no_grad():
        for mask in masks:
            net.set_inference_modality_mask(mask[0])
            eager = net(x)
            torch.testing.assert_close(compiled(x), eager)
        assert counters["stats"]["unique_graphs"] == 1
        for mask in masks:
            net.inference_modality_mask = mask
            compiled(x)
        net.set_inference_modality_mask(None)
        for mask in masks:
            compiled(x * mask[:, :, None, None, None])
    assert counters["stats"]["unique_graphs"] == 3

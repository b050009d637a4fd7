"""Unit tests of DMAF-Net: shapes, masking invariance, grouped modality encoders, plans building, bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunetv2_dmaf.architecture import DMAFFusion, DMAFNet, build_dmaf_net_from_plans, infer_modality_mask


def plain_kwargs(dim: int, n_stages: int = 3) -> dict:
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    return dict(n_stages=n_stages, features_per_stage=[8 * 2 ** s for s in range(n_stages)], conv_op=conv,
                kernel_sizes=3, strides=[1] + [2] * (n_stages - 1), n_conv_per_stage=2,
                n_conv_per_stage_decoder=[1] * (n_stages - 1), conv_bias=True, norm_op=norm,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                nonlin_kwargs={"inplace": True})


def modality_gradient(net: DMAFNet, m: int) -> float:
    """Sum of |gradient| over modality m's block of the grouped encoder's parameters."""
    return sum(float(p.grad.view(net.num_modalities, -1)[m].abs().sum())
               for p in net.encoder.parameters() if p.grad is not None)


def make_net(num_modalities: int, dim: int = 3, num_classes: int = 3, deep_supervision: bool = False,
             **kwargs) -> DMAFNet:
    torch.manual_seed(0)
    return DMAFNet(num_modalities, num_classes, deep_supervision=deep_supervision,
                   **plain_kwargs(dim), **kwargs).eval()


@pytest.mark.parametrize("dim,spatial", [(2, (32, 24)), (3, (16, 16, 12))])
@pytest.mark.parametrize("num_modalities", [1, 2, 4])
def test_output_shapes(dim, spatial, num_modalities):
    net = make_net(num_modalities, dim, num_classes=3, deep_supervision=True)
    x = torch.randn(2, num_modalities, *spatial)
    with torch.no_grad():
        outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == 2  # n_stages - 1 deep-supervision heads
    assert outputs[0].shape == (2, 3, *spatial)
    assert outputs[1].shape == (2, 3, *[s // 2 for s in spatial])
    net.decoder.deep_supervision = False
    with torch.no_grad():
        assert net(x).shape == (2, 3, *spatial)


def test_output_ignores_content_of_missing_channel():
    net = make_net(4, 3)
    x = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    tampered = x.clone()
    tampered[0, 1] = torch.randn(16, 16, 16) * 1000
    tampered[1, 0] = float("nan")
    tampered[1, 2:] = 7.0
    with torch.no_grad():
        reference = net(x, mask)
        other = net(tampered, mask)
    assert torch.isfinite(other).all()
    assert torch.equal(reference, other)


def test_sample_output_does_not_depend_on_other_samples_masks():
    net = make_net(3, 2)
    x = torch.randn(3, 3, 32, 32)
    mask = torch.tensor([[True, True, False], [True, False, True], [False, True, True]])
    with torch.no_grad():
        batched = net(x, mask)
        single = torch.cat([net(x[i:i + 1], mask[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_missing_output_differs_from_complete():
    net = make_net(4, 3)
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        complete = net(x, torch.ones(1, 4, dtype=torch.bool))
        partial = net(x, torch.tensor([[True, True, False, True]]))
    assert not torch.allclose(complete, partial)


def test_missing_modality_encoder_gets_no_gradient():
    net = make_net(4, 3).train()
    x = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, False, True, False], [True, False, False, True]])
    net(x, mask).sum().backward()
    assert modality_gradient(net, 1) == 0
    assert all(modality_gradient(net, m) > 0 for m in (0, 2, 3))


def test_grouped_encoder_equals_separate_modality_encoders():
    """Modality m's block of the grouped encoder computes exactly what a separate plain encoder with
    the same weights computes from channel m alone."""
    from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
    net = make_net(3, 3)
    kw = plain_kwargs(3)
    separate = PlainConvEncoder(1, kw["n_stages"], net.modality_features_per_stage, nn.Conv3d, 3, kw["strides"], 2,
                                conv_bias=True, norm_op=kw["norm_op"], norm_op_kwargs=kw["norm_op_kwargs"],
                                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, return_skips=True).eval()
    x = torch.randn(2, 3, 16, 16, 16)
    with torch.no_grad():
        grouped = net.encode(x)
        for m in range(3):
            separate.load_state_dict({k: v.view(3, -1)[m].view(v.shape[0] // 3, *v.shape[1:])
                                      for k, v in net.encoder.state_dict().items()})
            for g, f in zip(grouped, separate(x[:, m:m + 1])):
                torch.testing.assert_close(g[:, m], f, rtol=1e-4, atol=1e-5)


def test_shared_encoder_encodes_every_modality_with_the_same_weights():
    """shared_encoder: one single-channel encoder (1/M of the grouped encoder's parameters) that gives
    the same features for the same image in any modality slot; missing modalities stay ignored; the
    planner's feature-map count equals the grouped encoder's (same activations)."""
    grouped, shared = make_net(3, 3), make_net(3, 3, shared_encoder=True)
    assert sum(p.numel() for p in shared.encoder.parameters()) * 3 == \
        sum(p.numel() for p in grouped.encoder.parameters())
    assert shared.compute_conv_feature_map_size((16, 16, 16)) == grouped.compute_conv_feature_map_size((16, 16, 16))
    x = torch.randn(2, 3, 16, 16, 16)
    with torch.no_grad():
        features = shared.encode(x)
        rolled = shared.encode(x.roll(1, dims=1))
        for f, r in zip(features, rolled):
            assert f.shape[:2] == (2, 3)
            torch.testing.assert_close(r, f.roll(1, dims=1), rtol=1e-4, atol=1e-5)
        mask = torch.tensor([[True, False, True], [True, True, True]])
        tampered = x.clone()
        tampered[0, 1] = torch.randn(16, 16, 16) * 1000
        torch.testing.assert_close(shared(tampered, mask)[0], shared(x, mask)[0])


def test_modality_norms_make_the_shared_encoder_modality_specific_only_through_its_norms():
    """modality_norms: the shared encoder's convolutions stay shared (same weights as without), each
    norm layer gets a scale and shift per modality; at their initial values (1, 0) it is the shared
    encoder, once they differ the same image gives different features in different modality slots,
    and only the present modalities' norm parameters get a gradient. Refused without shared_encoder."""
    shared, normed = make_net(3, 3, shared_encoder=True), make_net(3, 3, shared_encoder=True, modality_norms=True)
    convs = {k: v for k, v in shared.encoder.state_dict().items() if k.endswith("conv.weight")}
    assert convs and all(torch.equal(normed.encoder.state_dict()[k], v) for k, v in convs.items())
    norms = [m for m in normed.encoder.modules() if hasattr(m, "modality_weight")]
    assert norms and all(m.modality_weight.shape == (3, m.num_features) for m in norms)
    normed.load_state_dict(shared.state_dict(), strict=False)  # everything but the norms' own affine
    x = torch.randn(2, 3, 16, 16, 16)
    same = x[:, :1].expand(-1, 3, -1, -1, -1)  # one image in every modality slot
    with torch.no_grad():
        for a, b in zip(shared.encode(x), normed.encode(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for m in norms:
            m.modality_weight[1].mul_(1.5)
            m.modality_bias[2].add_(0.3)
        features = normed.encode(same)[0]
    assert not torch.allclose(features[:, 0], features[:, 1]) and not torch.allclose(features[:, 0], features[:, 2])
    normed.train()
    mask = torch.tensor([[True, False, True], [True, False, True]])
    output, _ = normed(x, mask, return_features=True)
    output.sum().backward()
    grad = norms[0].modality_weight.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0 and grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="modality_norms needs shared_encoder"):
        make_net(3, 3, modality_norms=True)


def test_activation_checkpointing_gives_identical_losses_and_gradients_and_less_saved_memory():
    x = torch.randn(2, 3, 16, 16, 16)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    results = {}
    for checkpointing in (True, False):
        net = make_net(3, 3, deep_supervision=True, activation_checkpointing=checkpointing).train()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            output, features = net(x, mask, return_features=True)
            loss = output[0].square().mean() + features.present_pairs(mask).unimodal_logits[0].square().mean()
        loss.backward()
        results[checkpointing] = (loss.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None],
                                  sum(saved))
    torch.testing.assert_close(results[True][0], results[False][0])
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert results[True][2] < 0.8 * results[False][2]


def test_partially_missing_modality_gets_gradient_only_from_present_samples():
    net = make_net(2, 2).train()
    x = torch.randn(2, 2, 32, 32, requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    net(x, mask).sum().backward()
    assert x.grad[1, 1].abs().sum() == 0  # missing channel of sample 1 receives nothing
    assert x.grad[0, 1].abs().sum() > 0


def test_mask_inferred_from_all_zero_channels():
    x = torch.randn(3, 4, 8, 8)
    x[0, 2] = 0
    x[2] = 0  # background patch: every channel zero -> complete
    mask = infer_modality_mask(x)
    assert mask.tolist() == [[True, True, False, True], [True] * 4, [True] * 4]
    net = make_net(4, 2)
    x = torch.randn(1, 4, 32, 32)
    x[0, 2] = 0
    with torch.no_grad():
        inferred = net(x)
        explicit = net(x, torch.tensor([[True, True, False, True]]))
    assert torch.equal(inferred, explicit)


def test_inference_modality_mask_replaces_inference():
    net = make_net(4, 2)
    x = torch.randn(2, 4, 32, 32)
    net.set_inference_modality_mask([False, True, True, False])
    with torch.no_grad():
        fixed = net(x)
        explicit = net(x, torch.tensor([[False, True, True, False]] * 2))
    assert torch.equal(fixed, explicit)
    net.set_inference_modality_mask(None)
    with torch.no_grad():
        assert not torch.equal(net(x), fixed)
    with pytest.raises(ValueError, match="every modality"):
        net.set_inference_modality_mask([False] * 4)


def test_fusion_attention_maps_are_softmax_over_present_modalities():
    fusion = DMAFFusion(3, 8, nn.Conv3d, num_layers=2, num_heads=2, token_grid=2).eval()
    feats = torch.randn(2, 3, 8, 6, 6, 6)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    with torch.no_grad():
        fused, maps = fusion(feats, mask)
    assert fused.shape == (2, 8, 6, 6, 6) and maps.shape == (2, 3, 1, 2, 2, 2)
    assert torch.all(maps[0, 1] == 0) and torch.all(maps[1, :2] == 0)
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 1, 2, 2, 2))
    per_channel = DMAFFusion(3, 8, nn.Conv3d, num_layers=1, token_grid=2, map_channels=8).eval()
    with torch.no_grad():
        _, channel_maps = per_channel(feats, mask)
    assert channel_maps.shape == (2, 3, 8, 2, 2, 2) and channel_maps[0, 0].std(0).max() > 0
    torch.testing.assert_close(fused[1], feats[1, 2])  # a single present modality is passed through
    assert maps[0, 0].std() > 0  # position/channel dependent, not a constant


def test_functional_attention_equals_torch_modules_it_replaces():
    """DMAFFusion.encoder_layer and MaskedAttentionAlignment compute what nn.TransformerEncoderLayer
    (key padding mask) and nn.MultiheadAttention compute with the same parameters, gradients included."""
    from nnunetv2_dmaf.architecture.distillation_heads import MaskedAttentionAlignment
    torch.manual_seed(0)
    fusion = DMAFFusion(3, 16, nn.Conv3d, num_layers=1, num_heads=4)
    layer = fusion.layers[0].train()
    b, m, t, d = 2, 3, 8, 16
    mask = torch.tensor([[True, False, True], [False, False, True]])
    x = torch.randn(b * m * t, d)
    bias = fusion.token_attention_bias(fusion.missing_mask(mask), t, x.dtype)
    ours = fusion.encoder_layer(layer, x, bias, b, fusion.num_heads)
    reference = layer(x.view(b, m * t, d), src_key_padding_mask=(~mask).repeat_interleave(t, 1)).view(-1, d)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(ours)
    grads = [torch.autograd.grad((out * weight).sum(), list(layer.parameters())) for out in (ours, reference)]
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)

    maa = MaskedAttentionAlignment(16, 4)
    student, teacher = torch.randn(3, 8, 16), torch.randn(3, 8, 16)
    padding = torch.zeros(3, 8, dtype=torch.bool)
    padding[0, :3] = True
    for key_padding_mask in (None, padding):
        ours = maa(student, teacher, key_padding_mask)
        reference, _ = maa.attention(maa.norm_query(student), maa.norm_key(teacher), teacher,
                                     key_padding_mask=key_padding_mask, need_weights=False)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
        grads = [torch.autograd.grad(out.square().sum(), list(maa.parameters())) for out in (ours, reference)]
        for a, r in zip(*grads):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_fusion_differs_from_uniform_weights_and_attention_gets_gradient():
    """Replacing the attention maps by uniform weights (the 'mean' ablation) changes the fused feature."""
    torch.manual_seed(0)
    attention = DMAFFusion(4, 8, nn.Conv3d, num_layers=4, token_grid=2)
    mean = DMAFFusion(4, 8, nn.Conv3d, token_grid=2, mode="mean")
    assert not list(mean.parameters())  # nothing DDP would find without gradient
    feats = torch.randn(2, 4, 8, 4, 4, 4)
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])
    fused_attention, _ = attention(feats, mask)
    fused_mean, maps_mean = mean(feats, mask)
    torch.testing.assert_close(fused_mean[0], feats[0, [0, 1, 3]].mean(0))
    assert (fused_attention - fused_mean).abs().max() > 1e-3
    fused_attention.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attention.layers[0].parameters())
    assert attention.restore.weight.grad.abs().sum() > 0


def test_unimodal_decoder_runs_on_all_pairs_in_training_only_and_present_pairs_select_rows():
    net = make_net(3, 3, deep_supervision=True).train()
    calls = []
    net.unimodal_decoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0][0].shape[0]))
    x = torch.randn(2, 3, 16, 16, 16)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    output, features = net(x, mask, return_features=True)
    assert calls == [6] and features.pair_index.tolist() == [[b, m] for b in range(2) for m in range(3)]
    present = features.present_pairs(mask)
    assert present.pair_index.tolist() == [[0, 0], [0, 2], [1, 2]] == present.pair_index_host.tolist()
    assert [u.shape[0] for u in present.unimodal_logits] == [3, 3]
    torch.testing.assert_close(present.unimodal_logits[0][2], features.unimodal_logits[0][5])
    # uni-modal loss of modality 2 only: gradient reaches encoder 2 and the shared decoder, not encoder 0
    present.unimodal_logits[0][[1, 2]].square().sum().backward()
    assert modality_gradient(net, 0) == 0 and modality_gradient(net, 1) == 0 and modality_gradient(net, 2) > 0
    assert net.unimodal_decoder.seg_layers[-1].weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        net(x, mask)
    assert calls == [6]  # inference: fusion path only
    assert make_net(3, 3, unimodal_decoder=False).unimodal_decoder is None


def test_distillation_heads_take_student_from_encoder_and_teacher_detached():
    net = make_net(2, 3).train()
    x = torch.randn(2, 2, 16, 16, 16)
    mask = torch.tensor([[True, True], [True, False]])
    _, features = net(x, mask, return_features=True)
    features = features.present_pairs(mask)
    assert features.cca_projection.shape[0] == 3 and features.maa_output.shape == features.teacher_tokens.shape
    assert not features.teacher_tokens.requires_grad and features.student_tokens.requires_grad
    (features.cca_projection.square().sum() + features.maa_output.square().sum()).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.fusions.parameters())  # teacher side
    assert modality_gradient(net, 1) > 0
    assert net.cca_projection.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    net = make_net(4, 3)
    with pytest.raises(ValueError, match="built for 4 modalities.*3 channels"):
        net(torch.randn(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match=r"modality_mask must have shape \[B, M\] = \[1, 4\]"):
        net(torch.randn(1, 4, 16, 16, 16), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="every modality of a sample"):
        net(torch.randn(1, 4, 16, 16, 16), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="expects input of shape"):
        net(torch.randn(1, 4, 16, 16))


def test_build_from_plans_plain_and_residual():
    plain = {
        "n_stages": 3, "features_per_stage": [16, 32, 64], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
    req = ["conv_op", "norm_op", "dropout_op", "nonlin"]
    net = build_dmaf_net_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                    plain, req, 4, 2, deep_supervision=False)
    assert net.encoder.stages[0][0].convs[0].conv.groups == 4 and net.modality_features_per_stage == [8, 8, 16]  # 1/M, >= 8
    # the decoder has the plans' widths, as nnU-Net's own U-Net
    assert net.decoder.seg_layers[-1].in_channels == 16
    with torch.no_grad():
        assert net(torch.randn(1, 4, 32, 32)).shape == (1, 2, 32, 32)

    residual = dict(plain)
    residual.pop("n_conv_per_stage")
    residual["n_blocks_per_stage"] = [1, 2, 2]
    net = build_dmaf_net_from_plans("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                                    residual, req, 2, 3, deep_supervision=True)
    with torch.no_grad():
        assert net(torch.randn(1, 2, 32, 32))[0].shape == (1, 3, 32, 32)

    with pytest.raises(ValueError, match="supports plans with PlainConvUNet or ResidualEncoderUNet"):
        build_dmaf_net_from_plans("some.other.Net", plain, req, 4, 2)


def test_bfloat16_autocast_keeps_fusion_in_autocast_dtype_and_losses_finite():
    from nnunetv2_dmaf.training.distillation import CrossModalDistillation, DistillationSettings
    net = make_net(4, 3, deep_supervision=True).train()
    x = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])
    target = [torch.rand(2, 3, *s) > 0.5 for s in ((16, 16, 16), (8, 8, 8), (4, 4, 4))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, features = net(x, mask, return_features=True)
        terms = CrossModalDistillation(DistillationSettings(), 3, has_regions=True)(features, target)
    assert output[0].dtype == torch.bfloat16
    assert all(f.dtype == torch.bfloat16 for f in features.fused_features)  # full-resolution tensors stay bf16
    assert all(a.dtype == torch.bfloat16 for a in features.attention_maps)
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in terms.values())
    sum(v.sum() for v in terms.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)

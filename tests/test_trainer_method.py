"""The trainers' method on the demo dataset: the table/rates drive the masks of every trainer (baselines
too), every loss term sends gradient, DTM scales are applied in train_step, DTM state in checkpoints,
resume and configuration errors through the CLI.

Uses the session's ``demo_model`` preprocessed data read-only; results go to ``tmp_path`` (fold 1).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, nnunet_env, run_command
from modality_blocks import modality_gradient_norm, modality_grads, modality_params
from nnunetv2_dmaf.availability import write_availability_table
from nnunetv2_dmaf.training.distillation import LOSS_NAMES

TRAINER = "nnUNetTrainerDMAF_tiny"
FOLD = 1
NAMES = ("T1", "T1ce", "T2", "FLAIR")


def _case_ids(demo_model) -> list[str]:
    return sorted(p.name[:-len("_0000.nii.gz")] for p in (demo_model.dataset_folder / "imagesTr").glob("*_0000.nii.gz"))


def _table(demo_model, tmp_path) -> tuple[dict, str]:
    rows = [[1, 1, 1, 1], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 1, 1], [0, 1, 0, 0]]
    table = {c: np.array(rows[i % len(rows)], bool) for i, c in enumerate(_case_ids(demo_model))}
    return table, str(write_availability_table(tmp_path / "availability.csv", table, NAMES))


def test_rate_one_modality_encoder_never_gets_gradient(trainer_factory):
    trainer = trainer_factory(nnUNet_dmaf_missing_rates="T1ce:1.0,FLAIR:0.5")
    trainer.initialize()
    train_loader, _ = trainer.get_dataloaders()
    encoder = trainer.dmaf_network.encoder
    t2_before = modality_params(encoder, 4, 2)
    for _ in range(3):
        batch = next(train_loader)
        assert not batch["modality_mask"][:, 1].any() and batch["modality_mask"][:, 2].all()
        assert batch["available_mask"].all()
        assert batch["data"][:, 1].abs().amax() == 0  # what the network sees: exactly zero
        trainer.train_step(batch)
        assert modality_gradient_norm(encoder, 4, 1) == 0  # (only weight decay moves its weights)
    assert not all(torch.equal(a, b) for a, b in zip(t2_before, modality_params(encoder, 4, 2)))
    counts = trainer.dtm._acc[0]
    assert counts[1] == 0 and counts[2] > 0  # distillation gaps recorded per present modality


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerDMAF_tiny", "nnUNetTrainerZeroFilled_tiny",
                                          "nnUNetTrainerChannelDropout"])
def test_table_drives_training_and_validation_inputs_of_every_trainer(trainer_factory, demo_model, tmp_path,
                                                                       trainer_name):
    """Every trainer of the quality benchmark honours the table: a channel a case lacks reaches the
    network as zeros (and, for DMAF, as a masked modality), in training and in validation."""
    table, path = _table(demo_model, tmp_path)
    trainer = trainer_factory(trainer_name, nnUNet_dmaf_availability_table=path)
    assert trainer.dmaf_dropout_config.mode == "table"
    trainer.initialize()
    train_loader, val_loader = trainer.get_dataloaders()
    np.random.seed(0)  # the masks come from numpy's global RNG: independent of the tests run before
    extra_drops = 0
    for loader, batches in ((train_loader, 8), (val_loader, 3)):
        for _ in range(batches):
            batch = next(loader)
            for j, key in enumerate(batch["keys"]):
                row = torch.from_numpy(table[key])
                assert not (batch["modality_mask"][j] & ~row).any()
                assert (batch["data"][j][~batch["modality_mask"][j]] == 0).all()  # non-existent data
                assert (batch["data"][j][~row] == 0).all()
                if loader is val_loader:
                    assert batch["modality_mask"][j].tolist() == row.tolist()
                extra_drops += int((row & ~batch["modality_mask"][j]).sum())
    assert (extra_drops > 0) == (trainer_name == "nnUNetTrainerChannelDropout")
    trainer.train_step(next(train_loader))

    partial = {k: v for k, v in list(table.items())[1:]}
    write_availability_table(path, partial, NAMES)
    trainer = trainer_factory(trainer_name, nnUNet_dmaf_availability_table=path)
    trainer.initialize()
    with pytest.raises(SystemExit) as exit_info:
        trainer.get_dataloaders()
    assert exit_info.value.code == 1  # an incomplete table is a data error
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("case_id,T1,T1ce,T2,FLAIR\nsome_case,1,2,0,1\n")
    with pytest.raises(SystemExit) as exit_info:
        trainer_factory(trainer_name, nnUNet_dmaf_availability_table=str(malformed))
    assert exit_info.value.code == 1  # so is a malformed one; a bad setting (rates) exits 2 (below)


def _loss_gradients(trainer, batch, **weights) -> dict[str, torch.Tensor]:
    """Gradients of the total loss of one batch w.r.t. a few parameters, with some weights changed."""
    net = trainer.dmaf_network
    old = (trainer.unimodal_weight, dict(trainer.distillation_weights))
    trainer.unimodal_weight = weights.pop("unimodal", trainer.unimodal_weight)
    trainer.distillation_weights.update(weights)
    try:
        net.zero_grad(set_to_none=True)
        mask = batch["modality_mask"]
        output, features = net(batch["data"], mask, return_features=True)
        loss, terms = trainer.compute_losses(output, features.present_pairs(mask), batch["target"], mask.any(0))
        loss.backward()
        return {"encoder": torch.cat([p.grad.flatten() for p in net.encoder.parameters() if p.grad is not None]),
                "unimodal_decoder": net.unimodal_decoder.seg_layers[-1].weight.grad.clone(),
                "fusion_decoder": net.decoder.seg_layers[-1].weight.grad.clone(),
                "cca": net.cca_projection.weight.grad.clone(),
                "maa": net.attention_alignment.attention.in_proj_weight.grad.clone(),
                "terms": terms}
    finally:
        trainer.unimodal_weight, trainer.distillation_weights = old[0], old[1]


def test_every_loss_term_sends_gradient_in_table_mode(trainer_factory, demo_model, tmp_path):
    table, path = _table(demo_model, tmp_path)
    trainer = trainer_factory(nnUNet_dmaf_availability_table=path)
    trainer.initialize()
    train_loader, _ = trainer.get_dataloaders()
    batch = next(train_loader)
    while batch["modality_mask"][:, 0].sum() == 0 or batch["modality_mask"].sum(1).max() < 2:
        batch = next(train_loader)
    full = _loss_gradients(trainer, batch)
    terms = full["terms"]
    present = batch["modality_mask"].any(0)
    mask = batch["modality_mask"]
    shares_a_sample = (mask & (mask.sum(1, keepdim=True) >= 2)).any(0)
    for name in ("unimodal", *LOSS_NAMES):  # table mode: every term non-zero for the present modalities
        # (prototypes of a modality alone in its sample equal the fused ones: f_L = e^m_L there)
        nonzero = shares_a_sample if name == "prototype" else present
        assert (terms[name][nonzero] > 0).all() and (terms[name][~present] == 0).all(), name
    assert shares_a_sample.any()
    print("one table-mode iteration:", {k: [round(float(x), 4) for x in v.detach().flatten()] for k, v in terms.items()
                                        if k in ("segmentation", "unimodal", *LOSS_NAMES)})
    without = {name: _loss_gradients(trainer, batch, **{name: 0.0}) for name in ("unimodal", *LOSS_NAMES)}
    assert not torch.allclose(without["unimodal"]["encoder"], full["encoder"])
    assert without["unimodal"]["unimodal_decoder"].abs().sum() == 0 < full["unimodal_decoder"].abs().sum()
    assert full["fusion_decoder"].abs().sum() > 0  # only the fused segmentation loss reaches the fusion decoder
    assert without["relation_covariance"]["cca"].abs().sum() == 0 < full["cca"].abs().sum()
    assert without["relation_attention"]["maa"].abs().sum() == 0 < full["maa"].abs().sum()
    for name in LOSS_NAMES:
        assert not torch.allclose(without[name]["encoder"], full["encoder"]), name


@pytest.mark.parametrize("trainer_name, fusion_probability", [
    ("nnUNetTrainerDMAF_singleModalityFusion", 1.0),  # no sample is a teacher: the distillation weight is 0
    ("nnUNetTrainerDMAF_noDistill", None), ("nnUNetTrainerDMAF_meanFusion", None),
    ("nnUNetTrainerDMAF_sharedEncoder", None), ("nnUNetTrainerDMAF_sharedEncoderModalityNorms", None)])
def test_every_parameter_takes_part_in_every_training_step(trainer_factory, trainer_name, fusion_probability):
    """DDP as nnU-Net runs it (find_unused_parameters=False) needs a gradient, possibly zero, for every
    parameter in every step. Only the lowest deep-supervision head is exempt: nnU-Net weights it 0
    (and 1e-6 under DDP for this very reason)."""
    trainer = trainer_factory(trainer_name)
    trainer.initialize()
    if fusion_probability is not None:
        trainer.fusion_sampler.probability = fusion_probability
    train_loader, _ = trainer.get_dataloaders()
    trainer.train_step(next(train_loader))
    unused = [n for n, p in trainer.network.named_parameters() if p.grad is None and "seg_layers.0." not in n]
    assert not unused


def _trainer_batch_and_weights(trainer_factory):
    """An initialised tiny DMAF trainer, one training batch and a copy of the network's weights."""
    trainer = trainer_factory()
    trainer.initialize()
    train_loader, _ = trainer.get_dataloaders()
    net = trainer.dmaf_network
    return trainer, next(train_loader), net, {k: v.clone() for k, v in net.state_dict().items()}


def test_dtm_scales_are_applied_inside_train_step(trainer_factory):
    trainer, batch, net, state = _trainer_batch_and_weights(trainer_factory)
    grads = []
    for scales in ([1.0, 1.0, 1.0, 1.0], [1.0, 0.5, 1.0, 1.0]):
        net.load_state_dict(state)
        trainer.dtm.grad_scales = np.array(scales)
        torch.manual_seed(0)
        trainer.train_step(batch)
        grads.append(modality_grads(net.encoder, 4, 1) + modality_grads(net.encoder, 4, 0))
    n1 = len(list(net.encoder.parameters()))
    total_norm = torch.cat([g.flatten() for g in grads[0]]).norm()
    assert total_norm > 0
    for a, b in zip(grads[0][:n1], grads[1][:n1]):
        torch.testing.assert_close(b, a * 0.5, rtol=1e-4, atol=1e-7)
    for a, b in zip(grads[0][n1:], grads[1][n1:]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_shared_encoder_variant_trains_one_encoder_and_refuses_per_modality_gradient_scaling(trainer_factory):
    """The shared encoder learns from every present modality in one step; DTM's per-encoder gradient
    scaling, which would rescale slices of the shared weights, is off in the variant and refused
    when switched on."""
    trainer = trainer_factory("nnUNetTrainerDMAF_sharedEncoder")
    trainer.initialize()
    assert trainer.dmaf_network.shared_encoder and trainer.dtm_kwargs["modulate_gradients"] is False
    assert trainer.dtm_kwargs["reweight_losses"] is True
    first = next(trainer.dmaf_network.encoder.parameters())
    assert first.shape[1] == 1  # one input channel: every modality passes through the same weights
    train_loader, _ = trainer.get_dataloaders()
    trainer.train_step(next(train_loader))
    assert first.grad is not None and first.grad.abs().sum() > 0
    trainer = trainer_factory("nnUNetTrainerDMAF_sharedEncoder")
    trainer.dtm_kwargs["modulate_gradients"] = True
    with pytest.raises(ValueError, match="gradient scaling needs one encoder per modality"):
        trainer.initialize()


def test_gap_shrinkage_variant_lets_a_rare_lagging_modality_keep_its_weight(trainer_factory):
    weights, kwargs = {}, {}
    for name in (TRAINER, "nnUNetTrainerDMAF_noGapShrinkage"):
        trainer = trainer_factory(name)
        trainer.initialize()
        # one epoch: 40 pairs each of T1, T1ce, FLAIR with gap 0.5, 8 pairs of T2 (rare) with gap 1.0
        modality = torch.tensor([0, 1, 3] * 40 + [2] * 8)
        trainer.dtm.record(torch.where(modality == 2, 1.0, 0.5), None, modality)
        weights[name] = trainer.dtm.end_epoch()["weights"]["T2"]
        kwargs[name] = dict(trainer.dtm_kwargs, shrinkage=None)
    assert kwargs[TRAINER] == kwargs["nnUNetTrainerDMAF_noGapShrinkage"]  # only kappa differs
    assert weights[TRAINER] < 1.2  # kappa = 50: 8 pairs keep 8 / 58 of the lead
    assert weights["nnUNetTrainerDMAF_noGapShrinkage"] == pytest.approx(1.0 / 0.625)  # own gap / mean gap


def test_single_modality_fusion_without_dtm_keeps_every_weight_and_scale_at_one(trainer_factory):
    state, kwargs = {}, {}
    noise = 0.01 * torch.rand(160, generator=torch.Generator().manual_seed(0))
    for name in ("nnUNetTrainerDMAF_singleModalityFusion_025", "nnUNetTrainerDMAF_singleModalityFusion_025_noDTM"):
        trainer = trainer_factory(name)
        trainer.initialize()
        modality = torch.tensor([0, 1, 3] * 40 + [2] * 40)
        for signal in (1.0, 0.5):  # two epochs: T2 lags on the gap, T1 converges faster than the others
            trainer.dtm.record(torch.where(modality == 2, 1.0, 0.5),
                               torch.where(modality == 0, signal * signal, signal) + noise, modality)
            summary = trainer.dtm.end_epoch()
        state[name] = (summary["weights"]["T2"], min(summary["scales"].values()))
        kwargs[name] = dict(trainer.dtm_kwargs, reweight_losses=None, modulate_gradients=None)
    assert kwargs["nnUNetTrainerDMAF_singleModalityFusion_025"] == kwargs["nnUNetTrainerDMAF_singleModalityFusion_025_noDTM"]
    assert state["nnUNetTrainerDMAF_singleModalityFusion_025"][0] > 1.1
    assert state["nnUNetTrainerDMAF_singleModalityFusion_025"][1] < 1.0
    assert state["nnUNetTrainerDMAF_singleModalityFusion_025_noDTM"] == (1.0, 1.0)


class _RecordingScaler:
    """Stand-in for torch.amp.GradScaler on CPU: scales the loss by 4, records the calls."""

    def __init__(self):
        self.calls = []

    def scale(self, loss):
        self.calls.append("scale")
        return loss * 4

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(4)

    def step(self, optimizer):
        self.calls.append("step")
        optimizer.step()

    def update(self):
        self.calls.append("update")


def test_grad_scaler_path_unscales_before_dtm_scaling(trainer_factory):
    trainer, batch, net, state = _trainer_batch_and_weights(trainer_factory)
    trainer.dtm.grad_scales = np.array([1.0, 0.5, 1.0, 1.0])
    torch.manual_seed(0)
    trainer.train_step(batch)
    plain = modality_grads(net.encoder, 4, 1)
    net.load_state_dict(state)
    trainer.grad_scaler = _RecordingScaler()
    torch.manual_seed(0)
    trainer.train_step(batch)
    assert trainer.grad_scaler.calls == ["scale", "unscale_", "step", "update"]
    for a, b in zip(plain, modality_grads(net.encoder, 4, 1)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_dtm_logged_and_checkpointed_and_resume_config_checked(trainer_factory, demo_model, tmp_path, capsys):
    trainer = trainer_factory(nnUNet_dmaf_missing_rates="FLAIR:0.6,T1:0.2")
    trainer.initialize()
    train_loader, _ = trainer.get_dataloaders()
    outputs = [trainer.train_step(next(train_loader)) for _ in range(2)]
    trainer.on_train_epoch_end(outputs)
    logged = trainer.logger.local_logger.my_fantastic_logging
    for key in [f"dmaf_weight_{m}" for m in NAMES] + [f"dmaf_grad_scale_{m}" for m in NAMES]:
        assert len(logged[key]) == 1, key
    checkpoint_file = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(checkpoint_file)
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    assert checkpoint["dmaf_dtm_state"]["epochs"] == 1
    assert checkpoint["dmaf_training_config"]["missing_rates"]["FLAIR"] == 0.6
    assert "network_weights" in checkpoint and checkpoint["trainer_name"] == TRAINER

    resumed = trainer_factory()  # nothing configured: the checkpoint's setup is used
    resumed.load_checkpoint(checkpoint_file)
    assert resumed.dmaf_dropout_config.rates_by_name() == {"T1": 0.2, "T1ce": 0.0, "T2": 0.0, "FLAIR": 0.6}
    # the single-modality fusion draws by the checkpoint's presence frequencies, not uniformly
    np.testing.assert_allclose(resumed.fusion_sampler.choice_weights, trainer.fusion_sampler.choice_weights)
    assert resumed.fusion_sampler.choice_weights[3] > resumed.fusion_sampler.choice_weights[2]
    assert resumed.dtm.state_dict()["gap_ema"] == pytest.approx(trainer.dtm.state_dict()["gap_ema"], nan_ok=True)
    assert resumed.dtm.epochs == 1

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        trainer_factory(nnUNet_dmaf_missing_rates="FLAIR:0.3").load_checkpoint(checkpoint_file)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing rates" in err[0] and "FLAIR" in err[0]

    table, path = _table(demo_model, tmp_path)
    with_table = trainer_factory(nnUNet_dmaf_availability_table=path, nnUNet_dmaf_missing_rates="")
    with_table.initialize()
    with_table.save_checkpoint(checkpoint_file)
    edited = dict(table)
    first = sorted(edited)[0]
    edited[first] = ~edited[first] | np.array([True, False, False, False])
    write_availability_table(path, edited, NAMES)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        trainer_factory(nnUNet_dmaf_availability_table=path).load_checkpoint(checkpoint_file)
    assert first in capsys.readouterr().err  # says which case changed


@pytest.mark.parametrize("value,fragment", [("DWI:0.3", "DWI"), ("FLAIR:1.5", "1.5")])
def test_bad_training_configuration_is_one_line_exit_2(demo_model, tmp_path, value, fragment):
    env = nnunet_env(demo_model.root, training=True)
    env.update(nnUNet_results=str(tmp_path / "results"), nnUNet_dmaf_missing_rates=value)
    result = run_command(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, str(FOLD), "-tr", TRAINER,
                          "-device", "cpu"], env, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("nnUNetv2_train: error:") and fragment in errors[0]
    assert "Traceback" not in result.stderr


def test_cli_training_with_rates_and_table_then_resume_continues_dtm(demo_model, tmp_path):
    """nnUNetv2_train with both configuration sources; --c continues the DTM state."""
    _, table_path = _table(demo_model, tmp_path)
    env = nnunet_env(demo_model.root, training=True)
    env.update(nnUNet_results=str(tmp_path / "results"), nnUNet_dmaf_missing_rates="FLAIR:0.5,T1:0.3",
               nnUNet_dmaf_availability_table=table_path)
    train = ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, str(FOLD), "-tr", TRAINER, "-device", "cpu"]
    run_command(train, env)
    fold_dir = tmp_path / "results" / DATASET_NAME / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}" / f"fold_{FOLD}"
    final = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["dmaf_training_config"]["mode"] == "table+rates"
    assert final["dmaf_training_config"]["availability_table"] == table_path
    state = final["dmaf_dtm_state"]
    assert state["epochs"] == 2 and len(final["logging"]["dmaf_weight_FLAIR"]) == 2
    log = next(fold_dir.glob("training_log_*.txt")).read_text()
    assert "modality dropout mode: table+rates" in log and log.count("DMAF DTM: distillation gaps") == 2
    assert (fold_dir / "progress.png").is_file()

    # pretend the run stopped after epoch 0: resume from a 'latest' checkpoint with one epoch to go
    final["current_epoch"] = 1
    (fold_dir / "checkpoint_final.pth").unlink()
    for key in list(final["logging"]):
        final["logging"][key] = final["logging"][key][:1]
    torch.save(final, fold_dir / "checkpoint_latest.pth")
    run_command(train + ["--c"], env)
    resumed = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    new_state = resumed["dmaf_dtm_state"]
    assert new_state["epochs"] == 3  # 2 loaded + 1 trained: continued, not restarted
    assert json.dumps(new_state["history"][:2]) == json.dumps(state["history"])
    assert len(resumed["logging"]["dmaf_gap_FLAIR"]) == 2

"""nnUNetTrainerDMAF's training method on the demo dataset: dropout reaches train_step, a rate of 1.0
starves its encoder, the table drives the masks, DTM state in checkpoints, resume through the CLI.

Uses the session's ``demo_model`` preprocessed data read-only; results go to ``tmp_path`` (fold 1).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, nnunet_env, run_command
from nnunetv2_dmaf.availability import write_availability_table
from nnunetv2_dmaf.training.distillation import LOSS_NAMES

TRAINER = "nnUNetTrainerDMAF_tiny"
FOLD = 1
NAMES = ("T1", "T1ce", "T2", "FLAIR")


@pytest.fixture
def trainer_factory(demo_model, tmp_path, monkeypatch):
    """Builds the tiny trainer in-process (CPU, single-threaded data loading) with a fresh results dir."""
    for key, value in nnunet_env(demo_model.root, training=True).items():
        if key.startswith("nnUNet") or key == "OMP_NUM_THREADS":
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    for key in ("nnUNet_dmaf_missing_rates", "nnUNet_dmaf_availability_table"):
        monkeypatch.delenv(key, raising=False)

    def make(**env: str):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from nnunetv2.run.run_training import get_trainer_from_args
        trainer = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, FOLD, TRAINER, device=torch.device("cpu"))
        trainer.print_to_log_file = lambda *a, **k: None
        return trainer

    return make


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
    encoders = trainer.dmaf_network.encoders
    t1ce_before = [p.detach().clone() for p in encoders[1].parameters()]
    t2_before = [p.detach().clone() for p in encoders[2].parameters()]
    for _ in range(3):
        batch = next(train_loader)
        assert not batch["modality_mask"][:, 1].any() and batch["modality_mask"][:, 2].all()
        assert batch["available_mask"].all()
        assert batch["data"][:, 1].abs().amax() > 0  # kept for the full-modality teacher
        trainer.train_step(batch)
        assert all(p.grad is None for p in encoders[1].parameters())
    assert all(torch.equal(a, b) for a, b in zip(t1ce_before, encoders[1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(t2_before, encoders[2].parameters()))
    assert trainer.dtm._acc[len(LOSS_NAMES):2 * len(LOSS_NAMES)].sum() > 0  # distillation gaps recorded


def test_table_drives_training_and_validation_masks(trainer_factory, demo_model, tmp_path):
    table, path = _table(demo_model, tmp_path)
    trainer = trainer_factory(nnUNet_dmaf_availability_table=path)
    assert trainer.dmaf_dropout_config.mode == "table"
    trainer.initialize()
    train_loader, val_loader = trainer.get_dataloaders()
    for loader in (train_loader, val_loader):
        for _ in range(3):
            batch = next(loader)
            for j, key in enumerate(batch["keys"]):
                assert batch["modality_mask"][j].tolist() == table[key].tolist()
                assert (batch["data"][j][torch.from_numpy(~table[key])] == 0).all()  # non-existent data
    trainer.train_step(next(train_loader))

    partial = {k: v for k, v in list(table.items())[1:]}
    write_availability_table(path, partial, NAMES)
    trainer = trainer_factory(nnUNet_dmaf_availability_table=path)
    trainer.initialize()
    with pytest.raises(ValueError, match="no row for 1 case"):
        trainer.get_dataloaders()


def test_dtm_logged_and_checkpointed_and_resume_config_checked(trainer_factory, tmp_path):
    trainer = trainer_factory(nnUNet_dmaf_missing_rates="FLAIR:0.6,T1:0.2")
    trainer.initialize()
    train_loader, _ = trainer.get_dataloaders()
    outputs = [trainer.train_step(next(train_loader)) for _ in range(2)]
    trainer.on_train_epoch_end(outputs)
    logged = trainer.logger.local_logger.my_fantastic_logging
    for key in [f"dmaf_weight_{n}" for n in LOSS_NAMES] + [f"dmaf_grad_scale_{m}" for m in NAMES]:
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
    assert resumed.dtm.state_dict()["gap_ema"] == pytest.approx(trainer.dtm.state_dict()["gap_ema"], nan_ok=True)
    assert resumed.dtm.epochs == 1

    with pytest.raises(RuntimeError, match="nnUNet_dmaf_missing_rates"):
        trainer_factory(nnUNet_dmaf_missing_rates="FLAIR:0.3").load_checkpoint(checkpoint_file)


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
    assert state["epochs"] == 2 and len(final["logging"]["dmaf_weight_prototype"]) == 2
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
    assert len(resumed["logging"]["dmaf_gap_prototype"]) == 2

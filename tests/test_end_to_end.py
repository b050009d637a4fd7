"""End to end through nnU-Net's own console commands: plan, preprocess, train, predict (CPU)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from conftest import CONFIGURATION, DATASET_ID, FOLD, TRAINER, nnunet_env, run_command


def test_trainer_found_by_nnunet_without_user_configuration(demo_model):
    env = nnunet_env(demo_model.root)
    assert "nnUNet_extTrainer" not in env
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
            "t = f('nnUNetTrainerDMAF'); print(t.__module__, t.__name__)")
    out = run_command([sys.executable, "-c", code], env).stdout
    assert "nnunetv2_dmaf.training.nnUNetTrainerDMAF nnUNetTrainerDMAF" in out


def test_training_produces_nnunet_outputs(demo_model):
    fold_folder = demo_model.model_folder / f"fold_{FOLD}"
    assert (fold_folder / "checkpoint_final.pth").is_file()
    assert (fold_folder / "progress.png").is_file()
    summary = json.loads((fold_folder / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2, 3)", "(2, 3)", "(3,)"}  # WT, TC, ET regions
    import torch
    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    first_conv = checkpoint["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"]
    assert first_conv.shape[1] == 1 and first_conv.shape[0] % 4 == 0  # 4 modality groups of 1 input channel
    assert any(k.startswith("fusions.0.layers.3.self_attn") for k in checkpoint["network_weights"])
    assert any(k.startswith("unimodal_decoder.") for k in checkpoint["network_weights"])


def test_nnunet_predict_with_dmaf_trainer(demo_model, tmp_path):
    out = tmp_path / "pred"
    demo_model.run("nnUNetv2_predict", "-i", str(demo_model.dataset_folder / "imagesTs"), "-o", str(out),
                   "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", str(FOLD), "-tr", TRAINER,
                   "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta")
    for label_file in sorted((demo_model.dataset_folder / "labelsTs").glob("*.nii.gz")):
        predicted = sitk.ReadImage(str(out / label_file.name))
        reference = sitk.ReadImage(str(label_file))
        assert predicted.GetSize() == reference.GetSize()
        assert predicted.GetSpacing() == reference.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(predicted))) <= {0, 1, 2, 3}


def test_2d_configuration_trains_and_predicts(demo_model, tmp_path):
    env = nnunet_env(demo_model.root, training=True)
    env["nnUNet_results"] = str(tmp_path / "results")
    run_command(["nnUNetv2_train", str(DATASET_ID), "2d", str(FOLD), "-tr", TRAINER, "-device", "cpu",
                 "--npz"], env)
    out = tmp_path / "pred2d"
    run_command(["nnUNetv2_predict", "-i", str(demo_model.dataset_folder / "imagesTs"), "-o", str(out),
                 "-d", str(DATASET_ID), "-c", "2d", "-f", str(FOLD), "-tr", TRAINER, "-device", "cpu",
                 "-npp", "1", "-nps", "1", "--disable_tta"], env)
    assert len(list(out.glob("*.nii.gz"))) == len(list((demo_model.dataset_folder / "labelsTs").glob("*.nii.gz")))


def test_train_rejects_unknown_trainer_clearly(demo_model):
    result = run_command(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, str(FOLD), "-tr",
                          "nnUNetTrainerDMAF_doesnotexist", "-device", "cpu"],
                         nnunet_env(demo_model.root, training=True), check=False)
    assert result.returncode != 0
    assert "Could not find requested nnunet trainer nnUNetTrainerDMAF_doesnotexist" in result.stderr + result.stdout


def test_demo_dataset_cli_refuses_to_overwrite(tmp_path):
    cmd = ["nnUNetv2_dmaf_make_demo_dataset", "-o", str(tmp_path), "-n", "2", "--num-test", "0",
           "--shape", "8", "8", "8"]
    subprocess.run(cmd, check=True, capture_output=True)
    marker = tmp_path / "Dataset990_DMAFDemo" / "imagesTr" / "DMAFDemo_000_0000.nii.gz"
    before = marker.read_bytes()
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0 and "already exists" in result.stderr
    assert marker.read_bytes() == before

"""Shared fixtures: a small generated dataset, planned, preprocessed and trained through nnU-Net's CLI.

The session fixture ``demo_model`` runs the real console commands once (about 2 minutes on 2 CPU
cores) and every end-to-end test reuses its folders. Tests must not modify these folders; write
their own outputs under ``tmp_path``.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nnunetv2_dmaf.demo_data import generate_demo_dataset

DATASET_ID = 990
DATASET_NAME = "Dataset990_DMAFDemo"
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainerDMAF_tiny"
FOLD = 0
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@dataclass
class DemoModel:
    """Paths of the trained demo model; ``env`` has the nnU-Net variables for subprocesses."""
    root: Path
    raw: Path
    preprocessed: Path
    results: Path
    dataset_folder: Path  # raw dataset folder (imagesTr, labelsTr, imagesTs, labelsTs)
    model_folder: Path  # nnUNet_results/Dataset.../TRAINER__nnUNetPlans__3d_fullres
    env: dict

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Runs a console command with this model's environment, capturing text output."""
        return run_command(list(cmd), self.env, check=check, **kwargs)


def nnunet_env(root: Path, training: bool = False) -> dict:
    """Environment for nnU-Net subprocesses on this 2-core CPU machine."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}  # the plugin registers itself
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", OMP_NUM_THREADS="2",
               nnUNet_compile="false")
    if training:
        env["nnUNet_n_proc_DA"] = "0"
    return env


def run_command(cmd: list[str], env: dict, check: bool = True, timeout: float = 900,
                **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"command failed ({result.returncode}): {' '.join(cmd)}\n"
                             f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> DemoModel:
    root = tmp_path_factory.mktemp("dmaf_demo")
    dataset_folder = generate_demo_dataset(root / "raw", DATASET_ID, num_training=8, num_test=3, seed=0)
    env = nnunet_env(root)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", CONFIGURATION,
                 "-np", "1", "1", "-npfp", "1"], env)
    train_env = nnunet_env(root, training=True)
    run_command(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, str(FOLD), "-tr", TRAINER,
                 "-device", "cpu"], train_env)
    model_folder = root / "results" / DATASET_NAME / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"
    return DemoModel(root, root / "raw", root / "preprocessed", root / "results", dataset_folder,
                     model_folder, env)


@pytest.fixture
def trainer_factory(demo_model, tmp_path, monkeypatch):
    """Builds a trainer (default: the tiny DMAF one) in-process for fold 1 (CPU, single-threaded data
    loading) on the demo model's preprocessed data, with a fresh results dir."""
    for key, value in nnunet_env(demo_model.root, training=True).items():
        if key.startswith("nnUNet") or key == "OMP_NUM_THREADS":
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    for key in ("nnUNet_dmaf_missing_rates", "nnUNet_dmaf_availability_table"):
        monkeypatch.delenv(key, raising=False)

    def make(trainer_name: str = TRAINER, **env: str):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from nnunetv2.run.run_training import get_trainer_from_args
        trainer = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, 1, trainer_name, device=torch.device("cpu"))
        trainer.print_to_log_file = lambda *a, **k: None
        return trainer

    return make

"""A trained model folder that is there but unusable ends nnUNetv2_dmaf_predict and
nnUNetv2_dmaf_evaluate_subsets with one line naming the file or folder (exit status 1) and nothing
written: checkpoints that are not nnU-Net checkpoints, of another configuration or of a trainer that
is not installed, weights that do not fit the plans, plans of an unsupported network."""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

from command_exit import exit_status
from conftest import CONFIGURATION, FOLD
from nnunetv2_dmaf.evaluation import subset_evaluation
from nnunetv2_dmaf.inference import predict

CASE = "DMAFDemo_008"  # a test case of the demo dataset


def _edit_checkpoint(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        content = torch.load(checkpoint, map_location="cpu", weights_only=False)
        torch.save(edit(content) or content, checkpoint)
    return apply


def _zip_without_torch_data(checkpoint: Path) -> None:
    checkpoint.unlink()
    with zipfile.ZipFile(checkpoint, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


def _unsupported_pickle_protocol(checkpoint: Path) -> None:
    """The torch archive of ``checkpoint`` with its pickle claiming protocol 9 (unpickling: ValueError)."""
    content = checkpoint.read_bytes()
    checkpoint.unlink()
    with zipfile.ZipFile(io.BytesIO(content)) as source, zipfile.ZipFile(checkpoint, "w") as archive:
        for entry in source.infolist():
            data = source.read(entry)
            archive.writestr(entry, b"\x80\x09" + data[2:] if entry.filename.endswith("data.pkl") else data)


def _drop_one_weight(content: dict) -> None:
    del content["network_weights"][next(iter(content["network_weights"]))]


CHECKPOINT_PROBLEMS = {
    "zip without torch data": (_zip_without_torch_data, "torch.load cannot read it"),
    "unsupported pickle protocol": (_unsupported_pickle_protocol,
                                    "torch.load cannot read it (ValueError: unsupported pickle protocol: 9)"),
    "a list": (lambda c: torch.save([1, 2], c), "holds a list, not an nnU-Net checkpoint"),
    "no weights": (_edit_checkpoint(lambda c: c.pop("network_weights") and None),
                   "not an nnU-Net checkpoint (no entries ['network_weights'])"),
    "other configuration": (_edit_checkpoint(lambda c: c["init_args"].update(configuration="2d_elsewhere")),
                            "trained with configuration '2d_elsewhere', which the model's plans.json does not have"),
    "trainer not installed": (_edit_checkpoint(lambda c: c.update(trainer_name="nnUNetTrainerNotInstalled")),
                              "the checkpoint's trainer class nnUNetTrainerNotInstalled is not installed"),
    "weights of another network": (_edit_checkpoint(_drop_one_weight),
                                   "do not fit the network that plans.json describes (Error(s) in loading state_dict"),
}


@pytest.fixture
def model_copy(demo_model, tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(demo_model.model_folder, model)
    return model


def _predict(demo_model, model: Path, output: Path, folds: tuple[str, ...] = ("-f", str(FOLD))) -> int:
    inputs = output.parent / "in"
    inputs.mkdir(exist_ok=True)
    for channel in range(4):
        name = f"{CASE}_{channel:04d}.nii.gz"
        shutil.copy(demo_model.dataset_folder / "imagesTs" / name, inputs / name)
    return exit_status(predict.main, ["-i", str(inputs), "-o", str(output), "-m", str(model), *folds,
                                      "-device", "cpu", "--disable_tta", "--disable_progress_bar"])


@pytest.mark.parametrize("problem", CHECKPOINT_PROBLEMS)
def test_unusable_checkpoint(demo_model, model_copy, tmp_path, capsys, problem):
    corrupt, message = CHECKPOINT_PROBLEMS[problem]
    corrupt(model_copy / f"fold_{FOLD}" / "checkpoint_final.pth")
    capsys.readouterr()
    assert _predict(demo_model, model_copy, tmp_path / "out") == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert str(model_copy) in error
    assert not (tmp_path / "out").exists()


def test_plans_of_an_unsupported_network_in_both_commands(demo_model, model_copy, tmp_path, capsys):
    plans = json.loads((model_copy / "plans.json").read_text())
    plans["configurations"][CONFIGURATION]["architecture"]["network_class_name"] = "my_networks.SwinUNETR"
    (model_copy / "plans.json").write_text(json.dumps(plans))
    message = (f"{model_copy / 'plans.json'}: nnUNetTrainerDMAF supports plans with PlainConvUNet or "
               f"ResidualEncoderUNet, got network class 'my_networks.SwinUNETR'")
    capsys.readouterr()
    assert _predict(demo_model, model_copy, tmp_path / "out") == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()
    data = demo_model.dataset_folder
    assert exit_status(subset_evaluation.main, ["-i", str(data / "imagesTs"), "-l", str(data / "labelsTs"), "-o",
                                                str(tmp_path / "eval"), "-m", str(model_copy), "-f", str(FOLD),
                                                "-device", "cpu", "--cases", CASE]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert not (tmp_path / "eval").exists()


def test_plans_whose_network_entries_do_not_fit_together(demo_model, model_copy, tmp_path, capsys):
    plans = json.loads((model_copy / "plans.json").read_text())
    arch_kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    arch_kwargs["n_stages"] += 1  # one stage more than kernel_sizes / strides describe
    (model_copy / "plans.json").write_text(json.dumps(plans))
    capsys.readouterr()
    assert _predict(demo_model, model_copy, tmp_path / "out") == 1
    error = capsys.readouterr().err
    assert f"{model_copy / 'plans.json'}: its PlainConvUNet arch_kwargs do not describe a network" in error
    assert error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def test_a_fold_folder_not_named_by_a_number_is_named_when_folds_are_detected(demo_model, model_copy, tmp_path,
                                                                              capsys):
    """Without -f, nnU-Net's fold detection reads the number after fold_ of every folder with a checkpoint."""
    shutil.copytree(model_copy / f"fold_{FOLD}", model_copy / f"fold_{FOLD}_old")
    capsys.readouterr()
    assert _predict(demo_model, model_copy, tmp_path / "out", folds=()) == 2
    error = capsys.readouterr().err
    assert f"{model_copy / f'fold_{FOLD}_old'}: not a fold folder name (fold_<number> or fold_all)" in error
    assert error.count("\n") == 1, error

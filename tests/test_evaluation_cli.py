"""End to end: nnUNetv2_dmaf_evaluate_subsets on the demo test set (real CLI, CPU)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import CONFIGURATION, DATASET_ID, FOLD, TRAINER
from nnunetv2_dmaf.evaluation.metrics import dice, hd95

CASE = "DMAFDemo_009"
SUBSETS = ["T1", "T1ce", "T2", "FLAIR", "T1+T1ce", "T1+T2", "T1+FLAIR", "T1ce+T2", "T1ce+FLAIR", "T2+FLAIR",
           "T1+T1ce+T2", "T1+T1ce+FLAIR", "T1+T2+FLAIR", "T1ce+T2+FLAIR", "T1+T1ce+T2+FLAIR"]
MODEL = ["-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", str(FOLD), "-tr", TRAINER, "-device", "cpu",
         "--disable_tta"]


@pytest.fixture(scope="module")
def evaluation(demo_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("subset_eval") / "eval"
    data = demo_model.dataset_folder
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l",
                            str(data / "labelsTs"), "-o", str(out), *MODEL, "--cases", CASE, "--save_predictions",
                            "--disable_progress_bar")
    return out, result


def test_writes_all_outputs_with_every_subset(evaluation):
    out, result = evaluation
    for name in ("per_case.csv", "summary.csv", "summary.json", "summary.md", "dice_heatmap.png"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv")
    assert summary["subset"].tolist() == SUBSETS + ["mean over subsets"]
    regions = ["whole tumor", "tumor core", "enhancing tumor"]
    for region in regions:
        assert summary[f"Dice {region}"].between(0, 1).all()
        assert (summary[f"HD95 {region}"] >= 0).all()
        subset_mean = summary[f"Dice {region}"].iloc[:-1].mean()
        assert summary[f"Dice {region}"].iloc[-1] == pytest.approx(subset_mean, abs=1e-5)
    per_case = pd.read_csv(out / "per_case.csv")
    assert len(per_case) == 15 and set(per_case["case"]) == {CASE}
    payload = json.loads((out / "summary.json").read_text())
    meta = payload["metadata"]
    assert meta["hd95_empty_penalty_mm"] == 373.13 and "373.13 mm" in meta["conventions"]["HD95 penalty"]
    assert "both empty = 1" in meta["conventions"]["Dice"]
    assert meta["channels"] == ["T1", "T1ce", "T2", "FLAIR"] and meta["subsets"] == SUBSETS
    assert len(payload["subsets"]) == 15 and "Dice mean" in payload["mean_over_subsets"]
    table = (out / "summary.md").read_text()
    assert "| T1+T2 |" in table and "**mean over subsets**" in table and "373.13 mm" in table
    assert (out / "dice_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "| **mean over subsets** |" in result.stdout


def test_saved_predictions_match_the_table_and_the_predict_command(demo_model, evaluation, tmp_path):
    out, _ = evaluation
    label = sitk.ReadImage(str(demo_model.dataset_folder / "labelsTs" / f"{CASE}.nii.gz"))
    reference = sitk.GetArrayFromImage(label)
    spacing = label.GetSpacing()[::-1]
    per_case = pd.read_csv(out / "per_case.csv").set_index("subset")
    for subset in ("T1ce", "T1+T2+FLAIR"):
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / subset / f"{CASE}.nii.gz")))
        whole_p, whole_r = predicted > 0, reference > 0
        assert per_case.loc[subset, "Dice whole tumor"] == pytest.approx(dice(whole_p, whole_r), abs=1e-6)
        assert per_case.loc[subset, "HD95 whole tumor"] == pytest.approx(hd95(whole_p, whole_r, spacing), abs=1e-4)

    # the subset without T1ce equals nnUNetv2_dmaf_predict with the T1ce file absent
    images = tmp_path / "in"
    images.mkdir()
    for c in (0, 2, 3):
        shutil.copy(demo_model.dataset_folder / "imagesTs" / f"{CASE}_{c:04d}.nii.gz", images)
    demo_model.run("nnUNetv2_dmaf_predict", "-i", str(images), "-o", str(tmp_path / "pred"), *MODEL, "-nps", "0")
    from_predict = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / f"{CASE}.nii.gz")))
    saved = out / "predictions" / "T1+T2+FLAIR" / f"{CASE}.nii.gz"
    from_evaluation = sitk.GetArrayFromImage(sitk.ReadImage(str(saved)))
    np.testing.assert_array_equal(from_evaluation, from_predict)


def test_refuses_to_overwrite_outputs(demo_model, evaluation):
    out, _ = evaluation
    before = (out / "summary.csv").read_bytes()
    data = demo_model.dataset_folder
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l",
                            str(data / "labelsTs"), "-o", str(out), *MODEL, check=False)
    assert result.returncode == 2 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert (out / "summary.csv").read_bytes() == before


def test_case_without_label_is_reported(demo_model, tmp_path):
    data = demo_model.dataset_folder
    labels = tmp_path / "labels"
    labels.mkdir()  # no label files at all
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l", str(labels),
                            "-o", str(tmp_path / "eval"), *MODEL, check=False)
    assert result.returncode == 1
    assert f"case '{CASE}', file {labels / (CASE + '.nii.gz')}: reference label file does not exist" in result.stderr
    assert not (tmp_path / "eval").exists()

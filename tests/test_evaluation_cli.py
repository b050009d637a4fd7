"""End to end: nnUNetv2_dmaf_evaluate_subsets on the demo test set (real CLI, CPU)."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from command_exit import exit_status
from conftest import CONFIGURATION, DATASET_ID, FOLD, TRAINER
from nnunetv2_dmaf.evaluation import paper_table
from nnunetv2_dmaf.evaluation.metrics import dice, hd95

CASE = "DMAFDemo_009"
SUBSETS = ["T1", "T1ce", "T2", "FLAIR", "T1+T1ce", "T1+T2", "T1+FLAIR", "T1ce+T2", "T1ce+FLAIR", "T2+FLAIR",
           "T1+T1ce+T2", "T1+T1ce+FLAIR", "T1+T2+FLAIR", "T1ce+T2+FLAIR", "T1+T1ce+T2+FLAIR"]
DIAGNOSTIC = Path(__file__).resolve().parents[1] / "benchmarks" / "unimodal_decoder_diagnostic.py"
MODEL = ["-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", str(FOLD), "-tr", TRAINER, "-device", "cpu",
         "--disable_tta"]


@pytest.fixture(scope="module")
def evaluation(demo_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("subset_eval") / "eval"
    data = demo_model.dataset_folder
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l",
                            str(data / "labelsTs"), "-o", str(out), *MODEL, "--cases", CASE, "--save_predictions",
                            "--disable_progress_bar", "--et_postprocess_voxels", "500")
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
    assert meta["hd95_empty_penalty_mm"] == "diagonal" and "image diagonal" in meta["conventions"]["HD95 penalty"]
    assert "both empty = 1" in meta["conventions"]["Dice"]
    assert meta["channels"] == ["T1", "T1ce", "T2", "FLAIR"] and meta["subsets"] == SUBSETS
    assert len(payload["subsets"]) == 15 and "Dice mean" in payload["mean_over_subsets"]
    table = (out / "summary.md").read_text()
    assert "| T1+T2 |" in table and "**mean over subsets**" in table and "image diagonal in mm" in table
    assert (out / "dice_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "| **mean over subsets** |" in result.stdout



def test_settings_record_the_folds_used_and_their_checkpoints(demo_model, evaluation):
    """--continue compares these: rows of other weights (another fold set, a fold trained again) are
    never mixed into one table."""
    out, _ = evaluation
    settings = json.loads((out / "evaluation_settings.json").read_text())
    checkpoint = demo_model.model_folder / f"fold_{FOLD}" / "checkpoint_final.pth"
    assert settings["folds"] == [str(FOLD)]
    assert settings["checkpoint_sha256"] == {str(FOLD): hashlib.sha256(checkpoint.read_bytes()).hexdigest()}


def test_saved_predictions_match_the_table_and_the_predict_command(demo_model, evaluation, tmp_path):
    out, _ = evaluation
    label = sitk.ReadImage(str(demo_model.dataset_folder / "labelsTs" / f"{CASE}.nii.gz"))
    reference = sitk.GetArrayFromImage(label)
    spacing = label.GetSpacing()[::-1]
    per_case = pd.read_csv(out / "per_case.csv").set_index("subset")
    # HD95's one-empty penalty defaults to the case's image diagonal in mm
    diagonal = float(np.sqrt(np.sum((np.array(reference.shape) * np.array(spacing)) ** 2)))
    assert per_case["hd95_empty_penalty_mm"].to_numpy() == pytest.approx(diagonal)
    # ET post-processed: a predicted ET under 500 voxels counts as empty, next to raw ET
    for subset in SUBSETS:
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / subset / f"{CASE}.nii.gz")))
        et_p, et_r = predicted == 3, reference == 3
        expected = dice(et_p if et_p.sum() >= 500 else np.zeros_like(et_p), et_r)
        assert per_case.loc[subset, "Dice enhancing tumor (post-processed)"] == pytest.approx(expected, abs=1e-6)
        assert per_case.loc[subset, "Dice enhancing tumor"] == pytest.approx(dice(et_p, et_r), abs=1e-6)
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
    tables_only = out.parent / "tables_only"  # a paper table (the user's, or left by a run) is an output too
    tables_only.mkdir()
    shutil.copy(out / "paper_table_Dice_paper.md", tables_only)
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l",
                            str(data / "labelsTs"), "-o", str(tables_only), *MODEL, check=False)
    assert result.returncode == 2 and "paper_table_Dice_paper.md already exists" in result.stderr
    assert [p.name for p in tables_only.iterdir()] == ["paper_table_Dice_paper.md"]


def test_case_without_label_is_reported(demo_model, tmp_path):
    data = demo_model.dataset_folder
    labels = tmp_path / "labels"
    labels.mkdir()  # no label files at all
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l", str(labels),
                            "-o", str(tmp_path / "eval"), *MODEL, check=False)
    assert result.returncode == 1
    assert f"case '{CASE}', file {labels / (CASE + '.nii.gz')}: reference label file does not exist" in result.stderr
    assert not (tmp_path / "eval").exists()


def test_unusable_checkpoint_is_a_data_error(demo_model, tmp_path):
    """A truncated checkpoint is a problem of the data on disk, not of the command line: exit status 1,
    one line naming the file (as nnUNetv2_dmaf_predict), nothing written."""
    model = tmp_path / "model"
    shutil.copytree(demo_model.model_folder, model)
    checkpoint = model / f"fold_{FOLD}" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    data = demo_model.dataset_folder
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l",
                            str(data / "labelsTs"), "-o", str(tmp_path / "eval"), "-m", str(model), "-f", str(FOLD),
                            "-device", "cpu", check=False)
    assert result.returncode == 1, result.stderr
    assert f"checkpoint {checkpoint}" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "eval").exists()


def test_model_option_and_model_file_errors_are_one_line_and_write_nothing(demo_model, tmp_path):
    """Bad model options exit 2, a model folder whose dataset.json has unusable channel names exits 1
    (it is data on disk, as in nnUNetv2_dmaf_predict), each with one line and no -o created."""
    data = demo_model.dataset_folder
    model = tmp_path / "model"
    shutil.copytree(demo_model.model_folder, model)
    common = ["-i", str(data / "imagesTs"), "-l", str(data / "labelsTs"), "-o", str(tmp_path / "eval"), "-device",
              "cpu"]
    checkpoint = model / "fold_3" / "checkpoint_final.pth"
    cases = {("-m", str(model), "-f", "3"): (2, f"checkpoint {checkpoint} does not exist (check -f and -chk)"),
             ("-m", str(model), "-f", str(FOLD), "-step_size", "0"): (2, "-step_size 0: must be in (0, 1]")}
    for extra, (status, message) in cases.items():
        result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", *common, *extra, check=False)
        assert result.returncode == status and message in result.stderr, (extra, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
    dataset_json = json.loads((model / "dataset.json").read_text())
    dataset_json["channel_names"] = {"first": "T1", "second": "T1ce"}
    (model / "dataset.json").write_text(json.dumps(dataset_json))
    result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", *common, "-m", str(model), "-f", str(FOLD), check=False)
    assert result.returncode == 1 and f"{model / 'dataset.json'}: channel_names:" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "eval").exists()


def test_paper_table_in_published_subset_order(demo_model, evaluation, tmp_path):
    out, result = evaluation
    table = pd.read_csv(out / "paper_table_Dice_paper.csv")
    paper_order = ["T2", "T1ce", "T1", "FLAIR", "T1ce+T2", "T1+T1ce", "T1+FLAIR", "T1+T2", "T2+FLAIR",
                   "T1ce+FLAIR", "T1+T1ce+FLAIR", "T1+T2+FLAIR", "T1ce+T2+FLAIR", "T1+T1ce+T2", "T1+T1ce+T2+FLAIR"]
    assert table["subset"].tolist() == paper_order + ["mean over subsets"]
    assert list(table.columns) == ["subset", "whole tumor", "tumor core", "enhancing tumor",
                                   "enhancing tumor (post-processed)", "cases"]
    summary = pd.read_csv(out / "summary.csv").set_index("subset")
    assert table.set_index("subset").loc["T1ce+T2", "tumor core"] == pytest.approx(
        summary.loc["T1ce+T2", "Dice tumor core"], abs=1e-5)
    assert "In the published papers' subset order" in result.stdout
    ours = demo_model.run("nnUNetv2_dmaf_paper_table", "-i", str(out), "--order", "ours", "--metric", "HD95",
                          "-o", str(tmp_path / "hd95"))
    assert "| **mean over subsets** |" in ours.stdout
    rows = pd.read_csv(tmp_path / "hd95.csv")["subset"].tolist()
    assert rows == SUBSETS + ["mean over subsets"]
    before = (tmp_path / "hd95.md").read_text()
    assert exit_status(paper_table.main, ["-i", str(out), "-o", str(tmp_path / "hd95")]) == 2  # Dice over HD95
    assert (tmp_path / "hd95.md").read_text() == before
    assert exit_status(paper_table.main, ["-i", str(out), "-o", str(tmp_path / "hd95"), "--overwrite"]) == 0
    assert (tmp_path / "hd95.md").read_text() != before


def test_overwrite_leaves_nothing_of_the_earlier_run(demo_model, evaluation, tmp_path):
    """--overwrite removes the earlier run's tables, plots and (with --save_predictions) saved predictions
    before it starts: a run that then evaluates no case leaves only its own settings, not a summary of
    other settings. Without --save_predictions it leaves a predictions/ folder alone (it may be the
    user's own)."""
    out, _ = evaluation
    data = demo_model.dataset_folder
    labels = tmp_path / "labels"
    labels.mkdir()
    content = (data / "labelsTs" / f"{CASE}.nii.gz").read_bytes()
    (labels / f"{CASE}.nii.gz").write_bytes(content[:len(content) // 2])
    for save, kept in ((["--save_predictions"], []), ([], ["predictions"])):
        again = tmp_path / f"eval{len(save)}"
        shutil.copytree(out, again)
        assert (again / "predictions").is_dir() and (again / "paper_table_Dice_paper.md").is_file()
        result = demo_model.run("nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l", str(labels),
                                "-o", str(again), *MODEL, "--cases", CASE, "--overwrite", *save, check=False)
        assert result.returncode == 1 and "no case could be evaluated" in result.stderr
        assert sorted(p.name for p in again.iterdir()) == ["evaluation_settings.json", *kept]


def bad_reference_labels(data, labels):
    """Copies labelsTs to ``labels`` and damages two of them; returns (undefined value, truncated) cases."""
    shutil.copytree(data / "labelsTs", labels)
    cases = sorted(p.name[:-len(".nii.gz")] for p in labels.iterdir() if p.name[:-len(".nii.gz")] != CASE)
    undefined, truncated = cases[0], cases[1]
    image = sitk.ReadImage(str(labels / f"{undefined}.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 5  # not a label of dataset.json
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(labels / f"{undefined}.nii.gz"), True)
    content = (labels / f"{truncated}.nii.gz").read_bytes()
    (labels / f"{truncated}.nii.gz").write_bytes(content[:len(content) // 2])
    return undefined, truncated


def test_continue_and_bad_reference_labels(demo_model, evaluation, tmp_path):
    """--continue predicts only the missing (case, subset) pairs; cases with a bad reference label fail
    alone (named with their file), the others are evaluated, exit status 1."""
    out, _ = evaluation
    resumed = tmp_path / "eval"
    resumed.mkdir()
    shutil.copy(out / "evaluation_settings.json", resumed)
    full = pd.read_csv(out / "per_case.csv")
    full.iloc[:12].to_csv(resumed / "per_case.csv", index=False)  # as if killed after 12 predictions
    data = demo_model.dataset_folder
    labels = tmp_path / "labels"
    undefined, truncated = bad_reference_labels(data, labels)
    args = ["nnUNetv2_dmaf_evaluate_subsets", "-i", str(data / "imagesTs"), "-l", str(labels),
            "-o", str(resumed), *MODEL, "--cases", CASE, undefined, truncated, "--et_postprocess_voxels", "500"]
    result = demo_model.run(*args, "--continue", check=False)
    assert result.returncode == 1
    assert "continuing: 12 prediction(s)" in result.stdout and "3/33" in result.stderr
    assert f"{labels / undefined}.nii.gz: label value(s) 5 not defined in dataset.json" in result.stderr
    assert f"{labels / truncated}.nii.gz" in result.stderr and "truncated" in result.stderr
    pd.testing.assert_frame_equal(pd.read_csv(resumed / "per_case.csv"), full, rtol=1e-5)
    assert json.loads((resumed / "summary.json").read_text())["metadata"]["cases"] == [CASE]
    # other settings are refused, naming them, in one line
    refused = demo_model.run(*args[:-1], "400", "--continue", check=False)
    assert refused.returncode == 2 and "et_postprocess_voxels" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_unimodal_decoder_diagnostic_blends_the_two_decoders_by_fusion_weight(demo_model, evaluation, tmp_path):
    """benchmarks/unimodal_decoder_diagnostic.py: --fusion_weight 1 is exactly the fusion decoder
    (nnUNetv2_dmaf_evaluate_subsets' table), 0 the uni-modal decoder (other predictions); out of
    [0, 1] is a usage error."""
    data = demo_model.dataset_folder
    out, _ = evaluation
    reference = pd.read_csv(out / "per_case.csv")
    predictions = {}
    for weight in ("1", "0"):
        folder = tmp_path / f"weight_{weight}"
        demo_model.run(sys.executable, str(DIAGNOSTIC), "-i", str(data / "imagesTs"), "-l", str(data / "labelsTs"),
                       "-o", str(folder), *MODEL, "--cases", CASE, "--save_predictions", "--disable_progress_bar",
                       "--et_postprocess_voxels", "500", "--fusion_weight", weight)
        predictions[weight] = sorted((folder / "predictions").rglob("*.nii.gz"))
        assert len(predictions[weight]) == 15
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "weight_1" / "per_case.csv"), reference)
    assert any(not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(b))))
               for a, b in zip(predictions["1"], predictions["0"]))
    bad = demo_model.run(sys.executable, str(DIAGNOSTIC), "-i", str(data / "imagesTs"), "-l", str(data / "labelsTs"),
                         "-o", str(tmp_path / "bad"), *MODEL, "--fusion_weight", "1.5", check=False)
    assert bad.returncode == 2 and "--fusion_weight" in bad.stderr and bad.stderr.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    other_blend = demo_model.run(sys.executable, str(DIAGNOSTIC), "-i", str(data / "imagesTs"), "-l",
                                 str(data / "labelsTs"), "-o", str(tmp_path / "weight_1"), *MODEL, "--cases", CASE,
                                 "--et_postprocess_voxels", "500", "--fusion_weight", "0.5", "--continue",
                                 check=False)  # the blend is part of the run settings: never mixed
    assert other_blend.returncode == 2 and "other settings (diagnostic)" in other_blend.stderr

"""End to end: nnUNetv2_dmaf_predict on cases with absent channels and bad input (real CLI, CPU).

Uses the trained ``demo_model`` (conftest); every test writes under its own ``tmp_path``.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CONFIGURATION, DATASET_ID, FOLD, TRAINER

FULL, PARTIAL = "DMAFDemo_008", "DMAFDemo_009"  # test cases of the demo dataset
T1CE = 1
COMMON = ["-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", str(FOLD), "-tr", TRAINER, "-device", "cpu",
          "--disable_tta", "-npp", "1"]


def images_ts(demo_model) -> Path:
    return demo_model.dataset_folder / "imagesTs"


def copy_case(source: Path, case_id: str, target: Path, new_id: str | None = None,
              channels=range(4)) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for c in channels:
        shutil.copy(source / f"{case_id}_{c:04d}.nii.gz", target / f"{new_id or case_id}_{c:04d}.nii.gz")


def write_like(reference: Path, array: np.ndarray, target: Path, spacing=None, origin=None) -> None:
    """Writes ``array`` with the geometry of ``reference`` (optionally changed)."""
    ref = sitk.ReadImage(str(reference))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing or ref.GetSpacing())
    image.SetOrigin(origin or ref.GetOrigin())
    image.SetDirection(ref.GetDirection())
    sitk.WriteImage(image, str(target), True)


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def dmaf_predict(demo_model, input_folder: Path, output_folder: Path, *extra: str,
                 check: bool = True) -> subprocess.CompletedProcess:
    return demo_model.run("nnUNetv2_dmaf_predict", "-i", str(input_folder), "-o", str(output_folder),
                          *COMMON, *extra, check=check)


@pytest.fixture(scope="module")
def absent_channel_prediction(demo_model, tmp_path_factory):
    """FULL complete and PARTIAL without its T1ce file, predicted by nnUNetv2_dmaf_predict."""
    root = tmp_path_factory.mktemp("absent")
    source = images_ts(demo_model)
    copy_case(source, FULL, root / "in")
    copy_case(source, PARTIAL, root / "in", channels=[0, 2, 3])
    result = dmaf_predict(demo_model, root / "in", root / "out", "-nps", "1")
    return root, result


def test_absent_channel_file_is_predicted_as_missing(absent_channel_prediction):
    root, result = absent_channel_prediction
    assert f"{PARTIAL}: present: T1, T2, FLAIR; missing (no file): T1ce" in result.stdout
    assert f"{FULL}: present: T1, T1ce, T2, FLAIR" in result.stdout
    assert sorted(p.name for p in (root / "out").glob("*.nii.gz")) == [f"{FULL}.nii.gz", f"{PARTIAL}.nii.gz"]
    for name in ("dataset.json", "plans.json", "dmaf_predict_args.json"):
        assert (root / "out" / name).is_file()


def test_nnunet_predict_with_zero_filled_channel_gives_the_same_segmentation(demo_model, absent_channel_prediction,
                                                                               tmp_path):
    """The documented convention for plain nnUNetv2_predict (zero image) == the plugin's absent file."""
    root, _ = absent_channel_prediction
    source = images_ts(demo_model)
    zero_in = tmp_path / "in"
    copy_case(source, FULL, zero_in)
    copy_case(source, PARTIAL, zero_in, channels=[0, 2, 3])
    t1 = source / f"{PARTIAL}_0000.nii.gz"
    write_like(t1, np.zeros_like(read(t1)[0]), zero_in / f"{PARTIAL}_0001.nii.gz")
    demo_model.run("nnUNetv2_predict", "-i", str(zero_in), "-o", str(tmp_path / "out"), *COMMON, "-nps", "1")
    for case in (FULL, PARTIAL):
        ours, ours_image = read(root / "out" / f"{case}.nii.gz")
        nnunet, nnunet_image = read(tmp_path / "out" / f"{case}.nii.gz")
        assert ours.dtype == nnunet.dtype and ours.shape == nnunet.shape
        assert ours_image.GetSpacing() == nnunet_image.GetSpacing()
        assert ours_image.GetOrigin() == nnunet_image.GetOrigin()
        assert ours_image.GetDirection() == nnunet_image.GetDirection()
        np.testing.assert_array_equal(ours, nnunet, err_msg=case)


def test_missing_option_equals_absent_file(demo_model, absent_channel_prediction, tmp_path):
    root, _ = absent_channel_prediction
    copy_case(images_ts(demo_model), PARTIAL, tmp_path / "in")  # all four files present
    result = dmaf_predict(demo_model, tmp_path / "in", tmp_path / "out", "--missing", "t1CE", "-nps", "0")
    assert f"{PARTIAL}: present: T1, T2, FLAIR; missing (--missing): T1ce" in result.stdout
    np.testing.assert_array_equal(read(tmp_path / "out" / f"{PARTIAL}.nii.gz")[0],
                                  read(root / "out" / f"{PARTIAL}.nii.gz")[0])


def test_bad_inputs_are_reported_by_case_and_file_and_other_cases_still_predicted(demo_model, tmp_path):
    source, folder = images_ts(demo_model), tmp_path / "in"
    copy_case(source, FULL, folder)
    # an extra channel beyond the model's four
    copy_case(source, PARTIAL, folder, "ExtraChannel_001")
    shutil.copy(source / f"{PARTIAL}_0000.nii.gz", folder / "ExtraChannel_001_0004.nii.gz")
    # one channel with another shape
    copy_case(source, PARTIAL, folder, "ShapeMismatch_002", channels=[0, 1, 3])
    t2 = read(source / f"{PARTIAL}_0002.nii.gz")[0]
    write_like(source / f"{PARTIAL}_0002.nii.gz", np.ascontiguousarray(t2[:, :, :-4]),
               folder / "ShapeMismatch_002_0002.nii.gz")
    # one channel with another spacing
    copy_case(source, PARTIAL, folder, "SpacingMismatch_003", channels=[0, 1, 2])
    flair = read(source / f"{PARTIAL}_0003.nii.gz")[0]
    write_like(source / f"{PARTIAL}_0003.nii.gz", flair, folder / "SpacingMismatch_003_0003.nii.gz",
               spacing=(1.0, 1.0, 1.5))
    # one channel with another origin
    copy_case(source, PARTIAL, folder, "OriginMismatch_004", channels=[1, 2, 3])
    write_like(source / f"{PARTIAL}_0000.nii.gz", read(source / f"{PARTIAL}_0000.nii.gz")[0],
               folder / "OriginMismatch_004_0000.nii.gz", origin=(5.0, 0.0, 0.0))
    # a file that is not an image
    copy_case(source, PARTIAL, folder, "NotAnImage_005", channels=[0, 2, 3])
    (folder / "NotAnImage_005_0001.nii.gz").write_bytes(b"this is not a NIfTI file\x00\x01\x02" * 10)
    # a channel cut to half its bytes (SimpleITK would read the lost half as zeros)
    copy_case(source, PARTIAL, folder, "Truncated_006")
    data = (folder / "Truncated_006_0001.nii.gz").read_bytes()
    (folder / "Truncated_006_0001.nii.gz").write_bytes(data[:len(data) // 2])
    # a 2D image for the 3D model
    for c in range(4):
        array = read(source / f"{PARTIAL}_{c:04d}.nii.gz")[0][16]
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / f"Slice2D_007_{c:04d}.nii.gz"), True)
    # NaN voxels (SimpleITK reads them as 0)
    copy_case(source, PARTIAL, folder, "NaN_008", channels=[0, 1, 2])
    flair = read(source / f"{PARTIAL}_0003.nii.gz")[0]
    flair[5:9, 5:9, 5:9] = np.nan
    write_like(source / f"{PARTIAL}_0003.nii.gz", flair, folder / "NaN_008_0003.nii.gz")
    # a channel file with another image ending (would silently count as missing)
    copy_case(source, PARTIAL, folder, "WrongEnding_009", channels=[0, 1, 2])
    sitk.WriteImage(sitk.ReadImage(str(source / f"{PARTIAL}_0003.nii.gz")), str(folder / "WrongEnding_009_0003.nii"))
    # a file without the _XXXX channel suffix, named like a case (e.g. an earlier output)
    shutil.copy(source / f"{PARTIAL}_0000.nii.gz", folder / f"{FULL}.nii.gz")

    result = dmaf_predict(demo_model, folder, tmp_path / "out", "-nps", "0", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = result.stderr
    expectations = {
        "ExtraChannel_001": ("ExtraChannel_001_0004.nii.gz", "channel index 0004 does not exist"),
        "ShapeMismatch_002": ("ShapeMismatch_002_0002.nii.gz", "shape"),
        "SpacingMismatch_003": ("SpacingMismatch_003_0003.nii.gz", "spacing"),
        "OriginMismatch_004": ("OriginMismatch_004_0000.nii.gz", "origin"),
        "NotAnImage_005": ("NotAnImage_005_0001.nii.gz", "corrupt or truncated gzip data"),
        "Truncated_006": ("Truncated_006_0001.nii.gz", "corrupt or truncated gzip data"),
        "Slice2D_007": ("Slice2D_007_0000.nii.gz", "2D image (shape (1, 32, 32)) but the model (3D configuration "
                                                   "3d_fullres, trained on 3D images) needs 3D images"),
        "NaN_008": ("NaN_008_0003.nii.gz", "voxel(s) are NaN or infinite"),
        "WrongEnding_009": ("WrongEnding_009_0003.nii", "file ending .nii but the model reads .nii.gz files"),
    }
    for case, (file_name, reason) in expectations.items():
        lines = [line for line in errors.splitlines() if line.startswith("ERROR") and f"case '{case}'" in line]
        assert lines, f"no error line for {case}:\n{errors}"
        assert file_name in lines[0] and reason in lines[0], lines[0]
        assert not (tmp_path / "out" / f"{case}.nii.gz").exists()
    assert "Traceback" not in errors
    assert "9 case(s) failed" in errors
    # the stray file is reported as an ignored file, not as a failure of the case FULL that was predicted
    assert f"IGNORED file {folder / FULL}.nii.gz: not a channel file" in errors
    assert f"case '{FULL}'" not in errors
    assert (tmp_path / "out" / f"{FULL}.nii.gz").is_file()
    assert f"predicted {FULL}" in result.stdout


def test_existing_output_is_not_overwritten_unless_asked(demo_model, tmp_path):
    source, folder, out = images_ts(demo_model), tmp_path / "in", tmp_path / "out"
    copy_case(source, FULL, folder)
    copy_case(source, PARTIAL, folder)
    out.mkdir()
    existing = out / f"{FULL}.nii.gz"
    write_like(source / f"{FULL}_0000.nii.gz", np.full(read(source / f"{FULL}_0000.nii.gz")[0].shape, 7, np.uint8),
               existing)
    before = existing.read_bytes()

    refused = dmaf_predict(demo_model, folder, out, "-nps", "0", check=False)
    assert refused.returncode == 1
    assert f"case '{FULL}', file {existing}: output already exists" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert existing.read_bytes() == before
    assert (out / f"{PARTIAL}.nii.gz").is_file()  # the other case is still predicted

    skipped = dmaf_predict(demo_model, folder, out, "-nps", "0", "--continue_prediction")
    assert f"skipped   {FULL}" in skipped.stdout and f"skipped   {PARTIAL}" in skipped.stdout
    assert existing.read_bytes() == before

    dmaf_predict(demo_model, folder, out, "-nps", "0", "--overwrite")
    assert set(np.unique(read(existing)[0])) <= {0, 1, 2, 3}


def test_usage_errors(demo_model, tmp_path):
    copy_case(images_ts(demo_model), FULL, tmp_path / "in")
    (tmp_path / "a_file").write_text("x")
    cases = {("--missing", "T3"): "--missing: unknown channel 'T3'; valid channels (index=name): 0=T1, 1=T1ce",
             ("--missing", "T1", "T1ce", "T2", "FLAIR"): "--missing declares every channel missing",
             ("-d", "999"): "-d 999: no such dataset",
             ("-step_size", "0"): "-step_size 0: must be in (0, 1]",
             ("-f", "x"): "-f x: folds are non-negative integers or 'all'",
             ("-npp", "0"): "-npp 0: must be at least 1",
             ("-f", "3"): f"checkpoint {demo_model.model_folder / 'fold_3' / 'checkpoint_final.pth'} does not exist "
                          f"(check -f and -chk)"}
    for extra, message in cases.items():
        result = dmaf_predict(demo_model, tmp_path / "in", tmp_path / "out", *extra, check=False)
        assert result.returncode == 2 and result.stderr == f"nnUNetv2_dmaf_predict: error: {message}" + \
            result.stderr.split(message, 1)[1], (extra, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
    result = demo_model.run("nnUNetv2_dmaf_predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "a_file"),
                            *COMMON, check=False)
    assert result.returncode == 2 and result.stderr.endswith(f"-o {tmp_path / 'a_file'}: exists and is not a folder\n")
    assert not (tmp_path / "out").exists()  # none of these errors created -o


def test_unusable_channel_names_of_the_model_are_a_data_error(demo_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(demo_model.model_folder, model)
    dataset_json = json.loads((model / "dataset.json").read_text())
    dataset_json["channel_names"] = {}
    (model / "dataset.json").write_text(json.dumps(dataset_json))
    copy_case(images_ts(demo_model), FULL, tmp_path / "in")
    result = demo_model.run("nnUNetv2_dmaf_predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m",
                            str(model), "-f", str(FOLD), "-device", "cpu", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"{model / 'dataset.json'}: channel_names: expected a non-empty object" in result.stderr
    assert not (tmp_path / "out").exists()


def test_continue_prediction_repairs_incomplete_outputs_and_keeps_settings_consistent(demo_model, tmp_path):
    source, folder, out = images_ts(demo_model), tmp_path / "in", tmp_path / "out"
    copy_case(source, FULL, folder)
    copy_case(source, PARTIAL, folder)
    dmaf_predict(demo_model, folder, out, "-nps", "0")
    good = (out / f"{PARTIAL}.nii.gz").read_bytes()
    data = (out / f"{FULL}.nii.gz").read_bytes()
    (out / f"{FULL}.nii.gz").write_bytes(data[:len(data) // 2])  # e.g. written by a killed nnUNetv2_predict
    (out / f".{FULL}.partial-0badf00d.nii.gz").write_bytes(b"left by a killed run")

    result = dmaf_predict(demo_model, folder, out, "-nps", "1", "--continue_prediction")
    assert f"{FULL}: predicting again, the existing output {FULL}.nii.gz is incomplete" in result.stdout
    assert f"Removed 1 leftover temporary file(s) of an interrupted earlier run in {out}" in result.stdout
    assert f"skipped   {PARTIAL}" in result.stdout and f"predicted {FULL}" in result.stdout
    assert (out / f"{FULL}.nii.gz").read_bytes() == data and (out / f"{PARTIAL}.nii.gz").read_bytes() == good
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    record = json.loads((out / "dmaf_predict_args.json").read_text())
    assert record["cases"] == {FULL: {"missing": []}, PARTIAL: {"missing": []}}

    # other settings into a folder with outputs: refused, nothing changed
    refused = dmaf_predict(demo_model, folder, out, "--continue_prediction", "--missing", "T1ce", check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "holds predictions made with other settings (declared_missing: [] before, ['T1ce'] now)" in refused.stderr
    assert json.loads((out / "dmaf_predict_args.json").read_text()) == record


def test_outputs_of_other_weights_are_not_continued(demo_model, tmp_path):
    """The run record holds the folds used and their checkpoints' SHA-256: leaving -f out resolves to
    the same (only) fold and continues; the same fold trained again (other weights, same file name)
    is other settings."""
    model = tmp_path / "model"
    shutil.copytree(demo_model.model_folder, model)
    copy_case(images_ts(demo_model), FULL, tmp_path / "in")
    base = ["nnUNetv2_dmaf_predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model),
            "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "0"]
    demo_model.run(*base, "-f", str(FOLD))
    again = demo_model.run(*base, "--continue_prediction")
    assert f"skipped   {FULL}" in again.stdout
    checkpoint = model / f"fold_{FOLD}" / "checkpoint_final.pth"
    content = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = content["network_weights"]
    first = next(iter(weights))
    weights[first] = weights[first] + 0.01
    torch.save(content, checkpoint)
    refused = demo_model.run(*base, "--continue_prediction", check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "other settings (checkpoint_sha256: {'0': '" in refused.stderr


def test_sigterm_leaves_only_complete_outputs(demo_model, tmp_path):
    source, folder, out = images_ts(demo_model), tmp_path / "in", tmp_path / "out"
    for i in range(8):
        copy_case(source, FULL, folder, f"Case_{i:03d}")
    process = subprocess.Popen(["nnUNetv2_dmaf_predict", "-i", str(folder), "-o", str(out), *COMMON, "-nps", "1"],
                               env=demo_model.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # stop it once the first case is being predicted
        if line.startswith("Case_000: present"):
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stdout + stderr
    assert stderr.splitlines()[-1] == "nnUNetv2_dmaf_predict: terminated (SIGTERM); temporary outputs were removed"
    assert "Traceback" not in stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    written = sorted(p.name[:-len(".nii.gz")] for p in out.glob("*.nii.gz"))
    assert len(written) < 8
    for name in written:
        assert read(out / f"{name}.nii.gz")[0].shape == (32, 32, 32)
    record = json.loads((out / "dmaf_predict_args.json").read_text())
    assert sorted(record["cases"]) == written  # the record lists exactly the finished cases


def test_inference_cost_benchmark_runs_and_cost_does_not_depend_on_the_mask(demo_model):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "inference_cost.py"
    plans = demo_model.preprocessed / "Dataset990_DMAFDemo" / "nnUNetPlans.json"
    result = subprocess.run([sys.executable, str(script), "--plans", str(plans), "--patch", "16", "16", "16",
                             "--repeats", "1"], capture_output=True, text=True, timeout=300, check=True)
    assert "4 modalities" in result.stdout and "patch [16, 16, 16]" in result.stdout
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ") and "present" not in line]
    assert [int(r[1]) for r in rows] == [1, 2, 3, 4]
    assert len({float(r[3]) for r in rows}) == 1  # one graph for every mask: same FLOPs
    assert 0 < float(rows[0][5]) < 1  # the encoders' share
    assert "could save at most" in result.stdout

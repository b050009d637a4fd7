"""Input verification, atomic outputs, CSV encodings and one-line errors, without a trained model."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunetv2_dmaf.atomic_files import atomic_output_set, partial_outputs
from nnunetv2_dmaf.availability import AvailabilityTableError, read_availability_table, unknown_case_rows
from nnunetv2_dmaf.inference.cases import CaseFiles, CaseInputError, StrayFileError, discover_cases, load_case
from nnunetv2_dmaf.inference.file_integrity import image_file_problem, output_file_problem
from nnunetv2_dmaf.inference.output_folder import (ARGS_FILE, check_settings_match, plan_jobs, read_run_record,
                                                   stale_case_ids, write_run_record)
from nnunetv2_dmaf.user_errors import UsageError

NAMES = ["T1", "T1ce", "T2", "FLAIR"]


def write_image(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), compress)
    return path


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).uniform(1, 100, (12, 14, 16)).astype(np.float32)


def test_truncated_empty_and_nan_images_are_detected(tmp_path, volume):
    complete = write_image(tmp_path / "ok.nii.gz", volume)
    assert image_file_problem(complete) is None
    assert "truncated gzip" in image_file_problem(cut(write_image(tmp_path / "a.nii.gz", volume), 0.5))
    assert "truncated NIfTI" in image_file_problem(cut(write_image(tmp_path / "b.nii", volume, False), 0.6))
    (tmp_path / "c.nii.gz").write_bytes(b"")
    assert "empty file" in image_file_problem(tmp_path / "c.nii.gz")
    (tmp_path / "d.nii.gz").write_bytes(gzip.compress(b"not a nifti" * 50))
    assert "not a valid NIfTI" in image_file_problem(tmp_path / "d.nii.gz")
    with_nan = volume.copy()
    with_nan[2:4, 2:4, 2:4] = np.nan
    # SimpleITK itself reads these NaN voxels as 0 without a word
    assert image_file_problem(write_image(tmp_path / "e.nii.gz", with_nan)) == "8 voxel(s) are NaN or infinite"


def test_truncated_prediction_outputs_are_not_complete(tmp_path, volume):
    np.savez_compressed(tmp_path / "p.npz", probabilities=volume)
    (tmp_path / "p.pkl").write_bytes(__import__("pickle").dumps({"spacing": [1, 1, 1]}))
    assert output_file_problem(tmp_path / "p.npz") is None and output_file_problem(tmp_path / "p.pkl") is None
    assert "zip archive" in output_file_problem(cut(tmp_path / "p.npz", 0.7))
    assert "truncated pickle" in output_file_problem(cut(tmp_path / "p.pkl", 0.8))


def test_discovery_reports_stray_files_and_wrong_endings_without_attributing_them_to_cases(tmp_path, volume):
    for c in range(2):
        write_image(tmp_path / f"A_{c:04d}.nii.gz", volume)
        write_image(tmp_path / f"B_{c:04d}.nii.gz", volume)
    write_image(tmp_path / "A.nii.gz", volume)  # e.g. an earlier output copied into the input folder
    write_image(tmp_path / "B_0002.nii", volume, False)  # B's T2 with the wrong ending
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden_0000.nii.gz").write_bytes(b"ignored")
    cases, errors = discover_cases(tmp_path, ".nii.gz")
    assert [c.case_id for c in cases] == ["A"]  # B fails as a whole instead of losing T2 silently
    stray = [e for e in errors if isinstance(e, StrayFileError)]
    assert len(stray) == 1 and str(stray[0]).startswith(f"file {tmp_path / 'A.nii.gz'}: not a channel file")
    wrong = [e for e in errors if not isinstance(e, StrayFileError)]
    assert len(wrong) == 1 and wrong[0].case_id == "B" and "file ending .nii but the model reads .nii.gz" in str(wrong[0])


def test_load_case_verifies_files_and_dimensionality(tmp_path, volume):
    reader = SimpleITKIO()
    files = {0: write_image(tmp_path / "X_0000.nii.gz", volume),
             1: cut(write_image(tmp_path / "X_0001.nii.gz", volume), 0.5)}
    with pytest.raises(CaseInputError, match=r"case 'X', file .*X_0001.nii.gz: corrupt or truncated gzip"):
        load_case(CaseFiles("X", files), NAMES, reader)
    loaded = load_case(CaseFiles("X", files), NAMES, reader, declared_missing=[1], allowed_dims={3})
    assert loaded.mask == (True, False, False, False) and loaded.data.shape == (4, 12, 14, 16)

    slice_file = write_image(tmp_path / "S_0000.nii.gz", volume[5])  # a 2D image
    with pytest.raises(CaseInputError, match=r"S_0000.nii.gz: 2D image \(shape \(1, 14, 16\)\) but the model needs 3D"):
        load_case(CaseFiles("S", {0: slice_file}), NAMES, reader, allowed_dims={3})
    assert load_case(CaseFiles("S", {0: slice_file}), NAMES, reader, allowed_dims={2, 3}).data.shape == (4, 1, 14, 16)


def test_atomic_output_set_leaves_nothing_on_failure_and_everything_on_success(tmp_path):
    final = tmp_path / "case"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_set(final, [".npz", ".nii.gz"]) as tmp:
            Path(f"{tmp}.npz").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_output_set(final, [".npz", ".nii.gz"]) as tmp:
        assert tmp.parent == tmp_path and partial_outputs(tmp_path) == []  # nothing visible yet
        Path(f"{tmp}.npz").write_bytes(b"p")
        Path(f"{tmp}.nii.gz").write_bytes(b"s")
        assert len(partial_outputs(tmp_path)) == 2  # recognisable as leftovers if killed now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "case.npz"]


def test_continue_prediction_predicts_incomplete_outputs_again(tmp_path, volume):
    out = tmp_path / "out"
    out.mkdir()
    write_image(out / "Done.nii.gz", volume.astype(np.uint8))
    cut(write_image(out / "Cut.nii.gz", volume.astype(np.uint8)), 0.5)
    cases = [CaseFiles("Done"), CaseFiles("Cut"), CaseFiles("New")]
    jobs, skipped, refused, notes = plan_jobs(cases, out, ".nii.gz", False, overwrite=False, continue_prediction=True)
    assert skipped == ["Done"] and [j.case.case_id for j in jobs] == ["Cut", "New"] and not refused
    assert "Cut: predicting again, the existing output Cut.nii.gz is incomplete" in notes[0]
    jobs, skipped, refused, _ = plan_jobs(cases, out, ".nii.gz", False, overwrite=False, continue_prediction=False)
    assert [e.case_id for e in refused] == ["Done", "Cut"] and [j.case.case_id for j in jobs] == ["New"]


def test_overwrite_with_other_settings_marks_the_cases_it_left_stale_and_continue_predicts_them(tmp_path, volume):
    """Run 1 (settings A) predicts X and Y; run 2 (--overwrite, settings B) only X: Y's file is A's,
    so the record lists it as stale and --continue_prediction with B predicts it again. Files the
    record knows nothing about (e.g. from plain nnUNetv2_predict) are skipped as by nnU-Net."""
    out = tmp_path / "out"
    out.mkdir()
    for case_id in ("X", "Y", "Foreign"):
        write_image(out / f"{case_id}.nii.gz", volume.astype(np.uint8))
    a, b = {"f": ["0"]}, {"f": ["1"]}
    write_run_record(out, {}, a, {"X": [], "Y": ["T2"]}, None)
    write_run_record(out, {}, b, {"X": []}, read_run_record(out))
    record = read_run_record(out)
    assert record["settings"] == b and list(record["cases"]) == ["X"] and record["stale"] == ["Y"]
    cases = [CaseFiles("X"), CaseFiles("Y"), CaseFiles("Foreign")]
    jobs, skipped, _, notes = plan_jobs(cases, out, ".nii.gz", False, overwrite=False, continue_prediction=True,
                                        stale_cases=stale_case_ids(record))
    assert skipped == ["X", "Foreign"] and [j.case.case_id for j in jobs] == ["Y"]
    assert f"Y: predicting again, Y.nii.gz was made with other settings (stale in {ARGS_FILE})" in notes[0]
    write_run_record(out, {}, b, {"Y": []}, record)  # predicted again: no longer stale
    assert "stale" not in read_run_record(out) and list(read_run_record(out)["cases"]) == ["X", "Y"]
    write_run_record(out, {}, b, {}, read_run_record(out))  # same settings, --overwrite or not: cases kept
    assert list(read_run_record(out)["cases"]) == ["X", "Y"]


def test_outputs_of_other_settings_are_refused(tmp_path):
    settings = {"model_folder": "/m", "f": ["0"], "declared_missing": []}
    record = {"settings": settings, "cases": {"A": {"missing": []}}}
    check_settings_match(tmp_path, settings, record, has_outputs=True)  # same settings: fine
    with pytest.raises(UsageError, match=r"declared_missing: \[\] before, \['T1ce'\] now"):
        check_settings_match(tmp_path, {**settings, "declared_missing": ["T1ce"]}, record, has_outputs=True)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "latin-1"])
def test_availability_table_encodings(tmp_path, encoding):
    path = tmp_path / "table.csv"
    path.write_bytes("case_id,T1,T1ce,T2,FLAIR\nPatiént_1,1,0,1,1\n".encode(encoding))
    table = read_availability_table(path, NAMES)
    assert list(table) == ["Patiént_1"] and table["Patiént_1"].tolist() == [True, False, True, True]


def test_availability_table_refuses_utf16_without_bom_and_reports_unknown_cases(tmp_path):
    path = tmp_path / "table.csv"
    path.write_bytes("case_id,T1,T1ce,T2,FLAIR\nA,1,0,1,1\n".encode("utf-16-le"))
    with pytest.raises(AvailabilityTableError, match=f"{path}: contains NUL bytes"):
        read_availability_table(path, NAMES)
    path.write_text("case_id,T1,T1ce,T2,FLAIR\nA,1,0,1,1\nB,1,1,1,1\nZ9,0,1,1,1\n")
    table = read_availability_table(path, NAMES)
    assert unknown_case_rows(path, table, ["A", "B", "C"]) == \
        f"{path}: 1 of 3 row(s) name cases that are not in the dataset: Z9"
    assert unknown_case_rows(path, table, ["A", "B", "Z9"]) is None


SCRIPT = textwrap.dedent("""
    import sys, time
    from nnunetv2_dmaf.user_errors import DataError, run_main
    def main(argv):
        if argv[0] == "data":
            raise DataError("/x/y.csv: not a CSV file")
        if argv[0] == "bug":
            raise KeyError("our bug")
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            print("cleanup ran", flush=True)
    run_main(main, sys.argv[1:])
""")


def test_run_main_one_line_errors_and_interrupts(tmp_path):
    script = tmp_path / "cmd.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    data = subprocess.run([sys.executable, str(script), "data"], capture_output=True, text=True, env=env)
    assert data.returncode == 1 and data.stderr == "cmd.py: error: /x/y.csv: not a CSV file\n"
    bug = subprocess.run([sys.executable, str(script), "bug"], capture_output=True, text=True, env=env)
    assert bug.returncode == 1 and "Traceback" in bug.stderr  # our own bugs keep their traceback
    for sig, word in ((signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGINT, "interrupted (Ctrl-C)")):
        # SIGINT's default action in the child even if this test runs where SIGINT is ignored (a
        # background job of a shell without job control): Python then installs its Ctrl-C handler
        process = subprocess.Popen([sys.executable, str(script), "wait"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert process.stdout.readline() == "ready\n"
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130 and "cleanup ran" in out
        assert err.count("\n") == 1 and word in err


def test_demo_dataset_is_staged_and_its_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from nnunetv2_dmaf import demo_data

    calls = []

    def interrupted_write(array, path, spacing):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing the dataset

    monkeypatch.setattr(demo_data, "_write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        demo_data.generate_demo_dataset(tmp_path, 991, "Cut", num_training=2, num_test=0, shape=(8, 8, 8))
    assert calls and list(tmp_path.iterdir()) == []  # neither a half-written dataset nor a staging folder
    monkeypatch.undo()

    with pytest.raises(SystemExit) as exit_info:
        demo_data.main(["-o", str(tmp_path), "--num-test", "-1", "-n", "2", "--shape", "8", "8", "8"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith("error: num_test must be >= 0, got -1\n")


def test_make_availability_table_cli_errors_are_one_line(tmp_path, capsys):
    from nnunetv2_dmaf.demo_data import generate_demo_dataset
    from nnunetv2_dmaf.training.make_availability_table import main

    folder = generate_demo_dataset(tmp_path / "raw", 991, "Tab", num_training=2, num_test=0, shape=(8, 8, 8))
    for argv, code, message in (
            (["-r", "T1:2"], 2, "-r T1:2: missing rate for 'T1' must be in [0, 1], got 2.0"),
            (["-r", "T1:0.5", "-o", str(tmp_path / "no" / "t.csv")], 2,
             f"-o {tmp_path / 'no' / 't.csv'}: the folder {tmp_path / 'no'} does not exist")):
        with pytest.raises(SystemExit) as exit_info:
            main(["-d", str(folder), *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == code and err.endswith(f"error: {message}\n") and err.count("\n") == 1

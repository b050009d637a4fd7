"""User errors and interruptions of the conversion commands: one line, documented exit status,
nothing half-written (SIGTERM included), leftovers of killed runs removed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from command_exit import exit_status

from nnunetv2_dmaf.availability import AVAILABILITY_FILENAME, read_availability_table
from nnunetv2_dmaf.dataset_conversion import import_imbalanced_split as imp
from nnunetv2_dmaf.dataset_conversion import published_protocol as protocol
from test_import_imbalanced_split import NNUNET_ORDER, make_dataset

TABLE = "data_name,mask\nHG_BraTS20_Training_002,\"[True, False, True, False]\"\n"  # flair, t1ce, t1, t2


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err, err
    return err


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_split_table_in_excel_encodings(tmp_path, encoding):
    dataset = make_dataset(tmp_path, "Dataset520_BraTS2020", NNUNET_ORDER, ["BraTS20_Training_002"])
    table = tmp_path / "table.csv"
    table.write_bytes(("data_name,mask,note\n" + TABLE.splitlines()[1] + ",Übersicht\n").encode(encoding))
    imp.import_split(table, dataset)
    masks = read_availability_table(dataset / AVAILABILITY_FILENAME, NNUNET_ORDER)
    assert masks["BraTS20_Training_002"].tolist() == [True, False, False, True]  # T1, T1ce, T2, FLAIR


def test_import_split_user_errors_are_one_line(tmp_path, capsys):
    make_dataset(tmp_path, "Dataset520_BraTS2020", NNUNET_ORDER, ["BraTS20_Training_002"])
    table = tmp_path / "table.csv"
    table.write_text(TABLE)
    base = ["-i", str(table), "--raw-root", str(tmp_path)]
    cases = [
        (["-d", "999"], 2, "no dataset with id 999"),
        (["-d", "520", "-o", str(tmp_path / "no" / "such" / "out.csv")], 2, "does not exist"),
        (["-d", "520", "-o", str(tmp_path)], 2, "is a folder"),
        (["-d", "520", "-o", str(table)], 1, "already exists; pass --overwrite"),
    ]
    for extra, status, message in cases:
        assert exit_status(imp.main, [*base, *extra]) == status, extra
        assert message in one_error_line(capsys)
    utf16_no_bom = tmp_path / "nobom.csv"
    utf16_no_bom.write_bytes(TABLE.encode("utf-16-le"))
    assert exit_status(imp.main, ["-i", str(utf16_no_bom), "-d", "520", "--raw-root", str(tmp_path)]) == 1
    assert str(utf16_no_bom) in one_error_line(capsys)
    assert table.read_text() == TABLE  # the existing file named by -o is untouched


def test_protocol_list_errors_are_one_line(tmp_path, capsys):
    make_dataset(tmp_path, "Dataset520_BraTS2020", NNUNET_ORDER, ["BraTS20_Training_002", "BraTS20_Training_003"])
    (tmp_path / "train.txt").write_text("HG_BraTS20_Training_002\n")
    (tmp_path / "test.txt").write_text("BraTS20_Training_003, BraTS20_Training_004\n")
    argv = ["-d", "520", "--raw-root", str(tmp_path), "--preprocessed-root", str(tmp_path / "pre"),
            "--train", str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt")]
    assert exit_status(protocol.main, argv) == 1
    assert "test.txt, line 1: expected one case name per line" in one_error_line(capsys)
    assert exit_status(protocol.main, [*argv[:-1], str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt: no such file" in one_error_line(capsys)


def brats_case(folder: Path, case_id: str, shape=(24, 32, 32)) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for modality in ("t1", "t1ce", "t2", "flair"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 1000, size=shape, dtype=np.int16)),
                        str(folder / f"{case_id}_{modality}.nii.gz"), True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.uint8)), str(folder / f"{case_id}_seg.nii.gz"), True)


def test_sigterm_during_conversion_leaves_nothing_and_leftovers_are_removed(tmp_path):
    data = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in range(1, 31):
        brats_case(data / f"BraTS20_Training_{i:03d}", f"BraTS20_Training_{i:03d}")
    root = tmp_path / "raw"
    root.mkdir()
    command = [sys.executable, "-c", "from nnunetv2_dmaf.dataset_conversion.convert_brats import main; main()",
               "-i", str(data), "-y", "2020", "--output-root", str(root), "-np", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    deadline = time.time() + 120
    while not any(p.name.startswith(".Dataset520_BraTS2020.partial-") for p in root.iterdir()):
        assert process.poll() is None and time.time() < deadline, "conversion ended before it could be interrupted"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.count("\n") == 1 and "terminated (SIGTERM)" in err, err
    assert list(root.iterdir()) == []  # no hidden half-written dataset

    # what a SIGKILLed run leaves is removed, with a note, by the next run for the same target
    leftover = root / ".Dataset520_BraTS2020.partial-0123abcd"
    (leftover / "imagesTr").mkdir(parents=True)
    other = root / ".Dataset999_Other.partial-0123abcd"
    other.mkdir()
    for i in range(3, 31):
        os.rename(data / f"BraTS20_Training_{i:03d}", tmp_path / f"moved_{i}")  # keep the rerun short
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert f"removed {leftover}, left over from an interrupted earlier run" in result.stderr
    assert sorted(p.name for p in root.iterdir()) == [".Dataset999_Other.partial-0123abcd", "Dataset520_BraTS2020"]

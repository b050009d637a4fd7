"""Published imbalanced split tables -> modality_availability.csv, and the availability table reader."""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from command_exit import exit_status

from nnunetv2_dmaf.availability import (AVAILABILITY_FILENAME, AvailabilityTableError, read_availability_table,
                                        write_availability_table)
from nnunetv2_dmaf.dataset_conversion import import_imbalanced_split as imp
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError

SPLITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "imbalanced_splits"
needs_splits = pytest.mark.skipif(not SPLITS_DIR.is_dir(), reason=f"published split tables not found at {SPLITS_DIR}")
NNUNET_ORDER = ["T1", "T1ce", "T2", "FLAIR"]


def published_masks(table: Path) -> dict[str, dict[str, bool]]:
    """Independent reading of a published table: case id -> {modality: available}."""
    with open(table, newline="") as f:
        return {row["data_name"].removeprefix("HG_").removeprefix("LG_"):
                dict(zip(["flair", "t1ce", "t1", "t2"], ast.literal_eval(row["mask"]))) for row in csv.DictReader(f)}


def make_dataset(root: Path, folder_name: str, channel_names: list[str], cases: list[str]) -> Path:
    """A raw dataset folder as far as the import needs it: dataset.json and imagesTr file names."""
    folder = root / folder_name
    (folder / "imagesTr").mkdir(parents=True)
    meta = {"channel_names": {str(i): n for i, n in enumerate(channel_names)}, "file_ending": ".nii.gz",
            "labels": {"background": 0}, "numTraining": len(cases)}
    (folder / "dataset.json").write_text(json.dumps(meta))
    for case in cases:
        for channel in range(len(channel_names)):
            (folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz").touch()
    return folder


def read_written(path: Path) -> tuple[list[str], dict[str, dict[str, int]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, {r["case_id"]: {k.lower(): int(v) for k, v in r.items() if k != "case_id"}
                                   for r in reader}


@needs_splits
@pytest.mark.parametrize("channel_names", [NNUNET_ORDER, ["flair", "T2", "t1ce", "T1"]])
def test_brats2020_table_mapped_by_name(tmp_path, channel_names, capsys):
    table = SPLITS_DIR / "Brats2020_imb_split_mr5528.csv"
    expected = published_masks(table)
    assert expected["BraTS20_Training_003"] == {"flair": True, "t1ce": False, "t1": False, "t2": False}
    # two training cases the table does not list (it covers the training split only)
    extra = [c for c in (f"BraTS20_Training_{i:03d}" for i in range(1, 370)) if c not in expected][:2]
    dataset = make_dataset(tmp_path, "Dataset520_BraTS2020", channel_names, sorted(expected) + extra)

    assert exit_status(imp.main, ["-i", str(table), "-d", "520", "--raw-root", str(tmp_path)]) == 0
    assert "2 training case(s) have no row" in capsys.readouterr().err
    header, rows = read_written(dataset / AVAILABILITY_FILENAME)
    assert header == ["case_id", *channel_names]
    assert rows["BraTS20_Training_003"] == {"flair": 1, "t1ce": 0, "t1": 0, "t2": 0}
    assert rows.keys() == expected.keys() and len(rows) == 219
    assert all(rows[c] == {m: int(v) for m, v in expected[c].items()} for c in expected)

    availability = read_availability_table(dataset / AVAILABILITY_FILENAME, NNUNET_ORDER)
    np.testing.assert_array_equal(availability["BraTS20_Training_003"], [False, False, False, True])

    with pytest.raises(SystemExit):  # existing table needs --overwrite
        imp.main(["-i", str(table), "-d", "520", "--raw-root", str(tmp_path)])
    assert "--overwrite" in capsys.readouterr().err
    assert exit_status(imp.main, ["-i", str(table), "-d", str(dataset), "--overwrite", "--complete-unlisted"]) == 0
    _, rows = read_written(dataset / AVAILABILITY_FILENAME)
    assert len(rows) == 221 and rows[extra[1]] == {"flair": 1, "t1ce": 1, "t1": 1, "t2": 1}


@needs_splits
@pytest.mark.parametrize("table_name", ["Brats2020_imb_split_mr2468.csv", "Brats2018_imb_split_mr1379.csv"])
def test_missing_rates_match_the_file_name(tmp_path, table_name):
    """The tables' names give the missing rates of T1, T1ce, FLAIR, T2: checks the name mapping end to end."""
    table = SPLITS_DIR / table_name
    dataset = make_dataset(tmp_path, "Dataset520_X", ["FLAIR", "T2", "T1", "T1ce"], sorted(published_masks(table)))
    availability = read_availability_table(imp.import_split(table, dataset).path, NNUNET_ORDER)
    missing = 1 - np.stack(list(availability.values())).mean(0)  # T1, T1ce, T2, FLAIR
    rates = [int(d) / 10 for d in table_name.split("_mr")[1][:4]]  # T1, T1ce, FLAIR, T2
    np.testing.assert_allclose(missing[[0, 1, 3, 2]], rates, atol=0.05)


@needs_splits
def test_brats2018_table_names_match_directly(tmp_path):
    table = SPLITS_DIR / "Brats2018_imb_split_mr2468.csv"
    expected = published_masks(table)
    assert "Brats18_2013_0_1" in expected
    dataset = make_dataset(tmp_path, "Dataset518_BraTS2018", NNUNET_ORDER, sorted(expected))
    result = imp.import_split(table, dataset)
    assert result.written == len(expected) == 199 and not result.unlisted and not result.skipped
    _, rows = read_written(result.path)
    assert rows["Brats18_2013_10_1"] == {"flair": 1, "t1ce": 0, "t1": 0, "t2": 0}
    assert all(rows[c] == {m: int(v) for m, v in expected[c].items()} for c in expected)


@needs_splits
def test_unmatched_cases_and_channel_mismatch(tmp_path, capsys):
    table = SPLITS_DIR / "Brats2020_imb_split_mr2468.csv"
    dataset = make_dataset(tmp_path, "Dataset520_BraTS2020", NNUNET_ORDER,
                           ["BraTS20_Training_002", "BraTS20_Training_003", "BraTS20_Training_355"])
    with pytest.raises(ConversionError, match=r"216 case\(s\) .* not training cases(.|\n)*BraTS20_Training_004"):
        imp.import_split(table, dataset)
    assert not (dataset / AVAILABILITY_FILENAME).exists()
    assert exit_status(imp.main, ["-i", str(table), "-d", "Dataset520_BraTS2020", "--raw-root", str(tmp_path), "--allow-missing-cases"]) == 0
    assert "skipped 216 table case(s)" in capsys.readouterr().err
    _, rows = read_written(dataset / AVAILABILITY_FILENAME)
    assert sorted(rows) == ["BraTS20_Training_002", "BraTS20_Training_003", "BraTS20_Training_355"]

    other = make_dataset(tmp_path, "Dataset521_Other", ["T1", "PD", "T2", "FLAIR"], ["BraTS20_Training_002"])
    with pytest.raises(ConversionError, match=r"no table modality for \['PD'\]; no channel for \['t1ce'\]"):
        imp.import_split(table, other, allow_missing_cases=True)


def test_split_table_errors(tmp_path):
    dataset = make_dataset(tmp_path, "Dataset520_X", NNUNET_ORDER, ["BraTS20_Training_002"])
    bad = tmp_path / "bad.csv"
    for content, message in [
        ("data_name,mask\nHG_BraTS20_Training_002,\"[True, False]\"\n", "line 2: mask must be a list of 4"),
        ("data_name,mask\nHG_BraTS20_Training_002,\"[False, False, False, False]\"\n", "no available modality"),
        ("data_name,mask\nHG_BraTS20_Training_002,\"[True, True, True, True]\"\n"
         "LG_BraTS20_Training_002,\"[True, True, True, True]\"\n", "line 3: case BraTS20_Training_002 also on line 2"),
        ("name,mask\nx,\"[True, True, True, True]\"\n", "expected columns data_name and mask"),
    ]:
        bad.write_text(content)
        with pytest.raises(ConversionError, match=message):
            imp.import_split(bad, dataset)
    assert imp.case_id_from_data_name("LG_BraTS20_Training_334") == "BraTS20_Training_334"
    assert imp.case_id_from_data_name("Brats18_2013_0_1") == "Brats18_2013_0_1"


def test_availability_roundtrip_by_name(tmp_path):
    path = tmp_path / AVAILABILITY_FILENAME
    write_availability_table(path, {"b": [True, False, True, True], "a": np.array([0, 1, 0, 0])}, NNUNET_ORDER)
    assert path.read_text().splitlines() == ["case_id,T1,T1ce,T2,FLAIR", "a,0,1,0,0", "b,1,0,1,1"]
    path.write_text("Case_ID,flair,T1,t2,T1CE\na,1,0,0,0\n")  # other order and case: mapped by name
    table = read_availability_table(path, NNUNET_ORDER)
    assert list(table) == ["a"] and table["a"].dtype == bool
    np.testing.assert_array_equal(table["a"], [False, False, False, True])


@pytest.mark.parametrize("content,message", [
    ("case_id,T1,T1ce,T2,FLAIR,PD\na,1,1,1,1,1\n", r"unknown column\(s\) \['PD'\]"),
    ("case_id,T1,T1ce,T2\na,1,1,1\n", r"missing column\(s\) \['FLAIR'\]"),
    ("T1,T1ce,T2,FLAIR\n1,1,1,1\n", "no 'case_id' column"),
    ("case_id,T1,T1ce,T2,FLAIR\na,1,1,2,1\n", r"line 2: values must be 0 or 1, got T2='2'"),
    ("case_id,T1,T1ce,T2,FLAIR\na,1,1,0,1\nb,1,1,1,1\na,1,1,1,1\n", "line 4: duplicate case 'a' .first on line 2"),
    ("case_id,T1,T1ce,T2,FLAIR\na,0,0,0,0\n", "no available modality"),
    ("case_id,T1,t1,T2,FLAIR\na,1,1,1,1\n", "duplicate column"),
    ("case_id,T1,T1ce,T2,FLAIR\n", "no cases"),
    ("case_id,T1,T1ce,T2,FLAIR\na,1,1\n", "line 2: 3 fields, expected 5"),
])
def test_availability_reader_errors(tmp_path, content, message):
    path = tmp_path / AVAILABILITY_FILENAME
    path.write_text(content)
    with pytest.raises(AvailabilityTableError, match=message):
        read_availability_table(path, NNUNET_ORDER)


def test_availability_writer_errors(tmp_path):
    path = tmp_path / AVAILABILITY_FILENAME
    with pytest.raises(AvailabilityTableError, match="no available modality"):
        write_availability_table(path, {"a": [False] * 4}, NNUNET_ORDER)
    with pytest.raises(AvailabilityTableError, match="expected 4 booleans"):
        write_availability_table(path, {"a": [True] * 3}, NNUNET_ORDER)
    with pytest.raises(AvailabilityTableError, match="unique"):
        write_availability_table(path, {"a": [True] * 4}, ["T1", "t1", "T2", "FLAIR"])
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):
        read_availability_table(path, NNUNET_ORDER)


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        imp.main(["--help"])
    assert exit_info.value.code == 0 and "modality_availability.csv" in capsys.readouterr().out

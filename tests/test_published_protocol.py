"""Published protocols on fake datasets with the real names: BraTS 2020 219/50/100 split, BraTS 2018
train/test lists, the MyoPS 2020 slice protocol (80 / 22 slices), and their error cases."""
from __future__ import annotations

import ast
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from command_exit import exit_status

from nnunetv2_dmaf.availability import AVAILABILITY_FILENAME, read_availability_table
from nnunetv2_dmaf.dataset_conversion import convert_myops2020 as myops
from nnunetv2_dmaf.dataset_conversion import published_protocol as protocol
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRATS_LISTS = DATA / "published_splits" / "brats2020_rfnet_split"
MYOPS_LISTS = DATA / "published_splits" / "myops2020"
needs_data = pytest.mark.skipif(not BRATS_LISTS.is_dir(), reason=f"published protocol data not found in {DATA}")
NNUNET_ORDER = ["T1", "T1ce", "T2", "FLAIR"]


def names(path: Path) -> list[str]:
    return [line.strip().removeprefix("HG_").removeprefix("LG_") for line in path.read_text().splitlines()
            if line.strip()]


def make_raw_dataset(root: Path, folder_name: str, channel_names: list[str], cases: list[str]) -> Path:
    """Raw dataset folder with (empty) image and label files: the protocol only moves files."""
    folder = root / folder_name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    meta = {"channel_names": {str(i): n for i, n in enumerate(channel_names)}, "file_ending": ".nii.gz",
            "labels": {"background": 0, "tumor": 1}, "numTraining": len(cases)}
    (folder / "dataset.json").write_text(json.dumps(meta))
    for case in cases:
        (folder / "labelsTr" / f"{case}.nii.gz").write_text(case)
        for channel in range(len(channel_names)):
            (folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz").write_text(case)
    return folder


def in_folds(splits: list[dict]) -> set[str]:
    return {c for fold in splits for part in ("train", "val") for c in fold[part]}


@needs_data
def test_brats2020_protocol_219_50_100_no_test_case_in_any_fold(tmp_path, capsys):
    train, val, test = (names(BRATS_LISTS / f"{k}.txt") for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (219, 50, 100)
    folder = make_raw_dataset(tmp_path / "raw", "Dataset520_BraTS2020", NNUNET_ORDER, sorted(train + val + test))
    table = DATA / "imbalanced_splits" / "Brats2020_imb_split_mr2468.csv"
    argv = ["-d", "520", "--raw-root", str(tmp_path / "raw"), "--preprocessed-root", str(tmp_path / "pre"),
            "--train", str(BRATS_LISTS / "train.txt"), "--val", str(BRATS_LISTS / "val.txt"),
            "--test", str(BRATS_LISTS / "test.txt"), "-t", str(table)]
    assert exit_status(protocol.main, argv) == 0
    splits = json.loads((tmp_path / "pre" / folder.name / "splits_final.json").read_text())
    assert len(splits) == 1 and sorted(splits[0]["train"]) == sorted(train) and sorted(splits[0]["val"]) == sorted(val)
    assert not in_folds(splits) & set(test)
    # test cases left training: images and labels in imagesTs/labelsTs, numTraining updated
    assert sorted(p.name[:-12] for p in (folder / "imagesTs").glob("*_0000.nii.gz")) == sorted(test)
    assert sorted(p.name[:-7] for p in (folder / "labelsTs").iterdir()) == sorted(test)
    assert not any(p.name.startswith(tuple(test)) for p in (folder / "imagesTr").iterdir())
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 269
    # availability: the published masks for the training cases (by name), every modality for val
    availability = read_availability_table(folder / AVAILABILITY_FILENAME, NNUNET_ORDER)
    assert set(availability) == set(train) | set(val)
    assert all(availability[c].all() for c in val)
    with open(table, newline="") as f:
        published = {r["data_name"][3:]: dict(zip(["flair", "t1ce", "t1", "t2"], ast.literal_eval(r["mask"])))
                     for r in csv.DictReader(f)}
    assert all(list(availability[c]) == [published[c][m] for m in ("t1", "t1ce", "t2", "flair")] for c in train)
    assert not all(availability[c].all() for c in train)
    # a second run with the same lists recognises the moved test cases and changes nothing
    assert exit_status(protocol.main, argv) == 0
    assert "moved 0 test case(s)" in capsys.readouterr().out


@needs_data
def test_brats2020_protocol_errors_name_the_cases(tmp_path, capsys):
    train, val, test = (names(BRATS_LISTS / f"{k}.txt") for k in ("train", "val", "test"))
    folder = make_raw_dataset(tmp_path, "Dataset520_BraTS2020", NNUNET_ORDER, sorted(train + val + test))
    before = sorted(p.name for p in folder.rglob("*"))
    typo = tmp_path / "val_typo.txt"
    typo.write_text("\n".join(["HG_BraTS20_Training_999", *val[1:]]) + "\n")
    with pytest.raises(ConversionError, match=r"1 case\(s\) of .*val_typo.txt \(val list\) are not cases(.|\n)*"
                                              r"BraTS20_Training_999"):
        protocol.plan_protocol(folder, BRATS_LISTS / "train.txt", BRATS_LISTS / "test.txt", typo)
    leak = tmp_path / "train_leak.txt"
    leak.write_text("\n".join(train + [test[0]]) + "\n")
    with pytest.raises(ConversionError, match=rf"also in the train list(.|\n)*{test[0]}"):
        protocol.plan_protocol(folder, leak, BRATS_LISTS / "test.txt", BRATS_LISTS / "val.txt")
    # a table that gives availability to a test case is refused (it applies to training cases only)
    bad_table = tmp_path / "table.csv"
    bad_table.write_text("data_name,mask\n" + "".join(f"{c},\"[True, True, True, True]\"\n" for c in train + test[:1]))
    with pytest.raises(ConversionError, match=rf"not in the train list(.|\n)*{test[0]} \(test list\)"):
        protocol.plan_protocol(folder, BRATS_LISTS / "train.txt", BRATS_LISTS / "test.txt", BRATS_LISTS / "val.txt",
                               bad_table)
    short = tmp_path / "test_short.txt"
    short.write_text("\n".join(test[1:]) + "\n")
    assert exit_status(protocol.main, ["-d", str(folder), "--preprocessed-root", str(tmp_path / "pre"), "--train",
                                       str(BRATS_LISTS / "train.txt"), "--val", str(BRATS_LISTS / "val.txt"),
                                       "--test", str(short)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in no list" in err and test[0] in err
    assert sorted(p.name for p in folder.rglob("*")) == before  # nothing moved or written


def test_brats2018_train_test_lists_five_folds_without_test_cases(tmp_path):
    cases = [f"Brats18_2013_{i}_1" for i in range(12)]
    folder = make_raw_dataset(tmp_path, "Dataset518_BraTS2018", NNUNET_ORDER, cases)
    (tmp_path / "train1.txt").write_text("\n".join(cases[:9]) + "\n")
    (tmp_path / "test1.txt").write_text("# split 1\n" + "\n".join(cases[9:]) + "\n")
    plan = protocol.plan_protocol(folder, tmp_path / "train1.txt", tmp_path / "test1.txt")
    written = protocol.apply_protocol(plan, tmp_path / "pre" / folder.name / "splits_final.json")
    splits = json.loads(written[0].read_text())
    assert len(splits) == 5 and in_folds(splits) == set(cases[:9])
    assert all(not set(f["train"]) & set(f["val"]) for f in splits)
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == sorted(f"{c}.nii.gz" for c in cases[9:])


def test_test_cases_already_preprocessed_are_not_moved(tmp_path, capsys):
    """nnU-Net's fold 'all' trains on every preprocessed case: moving test cases after
    nnUNetv2_plan_and_preprocess would leak them; refused, nothing changed."""
    cases = [f"Brats18_2013_{i}_1" for i in range(8)]
    folder = make_raw_dataset(tmp_path, "Dataset518_BraTS2018", NNUNET_ORDER, cases)
    (tmp_path / "train.txt").write_text("\n".join(cases[:6]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(cases[6:]) + "\n")
    stage = tmp_path / "pre" / folder.name / "nnUNetPlans_3d_fullres"
    stage.mkdir(parents=True)
    for case in cases:
        (stage / f"{case}.pkl").write_bytes(b"")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    argv = ["-d", str(folder), "--preprocessed-root", str(tmp_path / "pre"), "--train", str(tmp_path / "train.txt"),
            "--test", str(tmp_path / "test.txt")]
    assert exit_status(protocol.main, argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"2 of the test case(s) to move were already preprocessed, e.g. {stage}" in err
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert not (tmp_path / "pre" / folder.name / "splits_final.json").exists()
    for case in cases[6:]:
        (stage / f"{case}.pkl").unlink()
    assert exit_status(protocol.main, argv) == 0  # the training cases' preprocessed files do not matter
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == [f"{c}.nii.gz" for c in cases[6:]]


def test_exclude_unlisted_keeps_cases_out_of_the_folds_and_says_fold_all_does_not(tmp_path, capsys):
    cases = [f"Brats18_2013_{i}_1" for i in range(12)]
    folder = make_raw_dataset(tmp_path, "Dataset518_BraTS2018", NNUNET_ORDER, cases)
    (tmp_path / "train.txt").write_text("\n".join(cases[:8]) + "\n")  # cases[8] is in no list
    (tmp_path / "test.txt").write_text("\n".join(cases[9:]) + "\n")
    assert exit_status(protocol.main, ["-d", str(folder), "--preprocessed-root", str(tmp_path / "pre"), "--train",
                                       str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt"),
                                       "--exclude-unlisted"]) == 0
    splits = json.loads((tmp_path / "pre" / folder.name / "splits_final.json").read_text())
    assert in_folds(splits) == set(cases[:8])
    assert any(p.name.startswith(cases[8]) for p in (folder / "imagesTr").iterdir())  # still a training case
    captured = capsys.readouterr()
    assert "1 unlisted case(s) in none of folds 0-4" in captured.out
    assert "nnUNetv2_train ... all (which ignores splits_final.json) trains on them" in captured.err


# ------------------------------------------------------------------------------------------ MyoPS
def write_volume(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.25, 1.25, 8.0))
    image.SetOrigin((12.0, -30.0, 4.0))
    sitk.WriteImage(image, str(path), True)


@needs_data
def test_myops_slice_protocol_yields_80_train_and_22_test_slices(tmp_path):
    slice_lists = names(MYOPS_LISTS / "train.txt") + names(MYOPS_LISTS / "test.txt")
    num_slices = Counter(name.rsplit("_slice_", 1)[0] for name in slice_lists)
    data = tmp_path / "MyoPS2020"
    for sub in ("train25", "train25_myops_gd"):
        (data / sub).mkdir(parents=True)
    for case, n in num_slices.items():
        for value, channel in enumerate(("C0", "DE", "T2"), start=1):
            write_volume(data / "train25" / f"{case}_{channel}.nii.gz", np.full((n, 6, 5), value, np.int16))
        label = np.zeros((n, 6, 5), np.int16)
        label[:, 1], label[:, 2], label[:, 3] = 500, 200, 2221
        label[np.arange(n), 4] = 1220  # differs per slice position only through k
        write_volume(data / "train25_myops_gd" / f"{case}_gd.nii.gz", label)
    raw = tmp_path / "raw"
    assert exit_status(myops.main, ["-i", str(data), "--slices", "--output-root", str(raw), "-np", "1"]) == 0
    folder = raw / "Dataset531_MyoPS2020Slices"
    assert sorted(p.name[:-7] for p in (folder / "labelsTr").iterdir()) == sorted(slice_lists)
    first = sitk.ReadImage(str(folder / "imagesTr" / "myops_training_101_slice_2_0001.nii.gz"))
    assert first.GetSize() == (5, 6, 1) and first.GetSpacing() == (1.25, 1.25, 8.0)
    assert first.GetOrigin() == pytest.approx((12.0, -30.0, 4.0 + 2 * 8.0))
    assert np.all(sitk.GetArrayFromImage(first) == 2)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "myops_training_101_slice_2.nii.gz")))
    assert label[0, 1, 0] == 2 and label[0, 2, 0] == 1 and label[0, 3, 0] == 5 and label[0, 4, 0] == 4

    table = MYOPS_LISTS / "MyoPS2020_longtail_split_357.csv"
    assert exit_status(protocol.main, ["-d", str(folder), "--preprocessed-root", str(tmp_path / "pre"),
                                       "--train", str(MYOPS_LISTS / "train.txt"),
                                       "--test", str(MYOPS_LISTS / "test.txt"), "-t", str(table)]) == 0
    splits = json.loads((tmp_path / "pre" / folder.name / "splits_final.json").read_text())
    assert len(in_folds(splits)) == 80 and in_folds(splits) == set(names(MYOPS_LISTS / "train.txt"))
    assert len(list((folder / "labelsTs").iterdir())) == 22
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 80
    availability = read_availability_table(folder / AVAILABILITY_FILENAME, ["C0", "DE", "T2"])
    with open(table, newline="") as f:
        published = {r["data_name"]: ast.literal_eval(r["mask"]) for r in csv.DictReader(f)}
    assert {c: list(m) for c, m in availability.items()} == published  # [C0, DE, T2] = channel order


def test_myops_predictions_back_to_myops_values(tmp_path):
    (tmp_path / "pred").mkdir()
    write_volume(tmp_path / "pred" / "case.nii.gz", np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    assert exit_status(myops.main_to_submission, ["-i", str(tmp_path / "pred"), "-o", str(tmp_path / "sub")]) == 0
    out = sitk.ReadImage(str(tmp_path / "sub" / "case.nii.gz"))
    assert sitk.GetArrayFromImage(out).ravel().tolist() == [0, 200, 500, 600, 1220, 2221]
    assert out.GetSpacing() == (1.25, 1.25, 8.0)


# ------------------------------------------------------------------------------ MSD Task01 route
def test_msd_task01_channel_names_work_with_rates_tables_and_et(tmp_path):
    """nnU-Net's own MSD converter, then our availability import, missing rates and ET rule by name."""
    import os
    import subprocess

    from nnunetv2_dmaf.dataset_conversion import import_imbalanced_split as imp
    from nnunetv2_dmaf.evaluation.subset_evaluation import evaluation_regions
    from nnunetv2_dmaf.training.modality_dropout import parse_missing_rates

    task = tmp_path / "Task01_BrainTumour"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    cases = [f"BRATS_{i:03d}" for i in (1, 2, 3)]
    for case in cases:
        image = sitk.JoinSeries([sitk.GetImageFromArray(np.full((4, 5, 6), c + 1, np.float32)) for c in range(4)])
        sitk.WriteImage(image, str(task / "imagesTr" / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8)), str(task / "labelsTr" / f"{case}.nii.gz"))
    (task / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": 3, "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                                       for c in cases], "test": []}))
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "results")}
    subprocess.run(["nnUNetv2_convert_MSD_dataset", "-i", str(task), "-np", "1"], env=env, check=True,
                   capture_output=True, timeout=300)
    folder = tmp_path / "raw" / "Dataset001_BrainTumour"
    meta = json.loads((folder / "dataset.json").read_text())
    names_ = [meta["channel_names"][str(i)] for i in range(4)]
    assert names_ == ["FLAIR", "T1w", "t1gd", "T2w"]
    # a published-format table ([flair, t1ce, t1, t2]) lands in the right columns by name
    table = tmp_path / "table.csv"
    table.write_text("data_name,mask\nBRATS_001,\"[False, True, False, False]\"\nBRATS_002,\"[True, False, True, "
                     "True]\"\nBRATS_003,\"[False, False, False, True]\"\n")
    imp.import_split(table, folder)
    availability = read_availability_table(folder / AVAILABILITY_FILENAME, names_)
    assert availability["BRATS_001"].tolist() == [False, False, True, False]  # t1ce = t1gd
    assert availability["BRATS_002"].tolist() == [True, True, False, True]
    np.testing.assert_allclose(parse_missing_rates("flair:0.6,T1W:0.2,t1gd:0.4,t2w:0.8", names_),
                               [0.6, 0.2, 0.4, 0.8])
    regions = evaluation_regions(meta, et_postprocess_voxels=500)
    assert [r.name for r in regions][-2:] == ["enhancing tumour", "enhancing tumour (post-processed)"]


@needs_data
def test_paper_subset_order_is_the_published_mask_id_order():
    """Our copy of the papers' subset order equals the mask_id -> mask pairs of every published table."""
    from nnunetv2_dmaf.evaluation.paper_conventions import (BRATS_TABLE_MODALITIES, MYOPS_TABLE_MODALITIES,
                                                            PAPER_MASKS, paper_subset_order)
    for pattern, modalities in (("imbalanced_splits/*.csv", BRATS_TABLE_MODALITIES),
                                ("published_splits/myops2020/*.csv", MYOPS_TABLE_MODALITIES)):
        pairs = set()
        for table in DATA.glob(pattern):
            with open(table, newline="") as f:
                pairs |= {(int(r["mask_id"]), tuple(ast.literal_eval(r["mask"]))) for r in csv.DictReader(f)}
        assert pairs <= set(enumerate(PAPER_MASKS[modalities])) and len({i for i, _ in pairs}) >= 6
    # by name, whatever the channel order: dataset order T1, T1ce, T2, FLAIR; mask id 0 is T2 only
    order = paper_subset_order(["T1", "T1ce", "T2", "FLAIR"])
    assert order[0] == (False, False, True, False) and order[3] == (False, False, False, True)
    assert paper_subset_order(["C0", "LGE", "T2"])[:3] == [(False, False, True), (False, True, False),
                                                           (True, False, False)]
    assert paper_subset_order(["T1", "PD"]) is None

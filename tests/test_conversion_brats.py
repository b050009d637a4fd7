"""BraTS conversion: small fake case folders with the original file names -> nnU-Net raw, and back."""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from command_exit import exit_status
import SimpleITK as sitk

from nnunetv2_dmaf.dataset_conversion import convert_brats
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError

SHAPE = (6, 7, 8)  # numpy order (z, y, x)
SPACING = (0.9, 1.1, 1.3)
ORIGIN = (-10.0, 5.0, 2.5)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
#: constant value per modality, so the channel order can be checked by content
MODALITY_VALUES = {"t1": 10, "t1ce": 20, "t2": 30, "flair": 40}
EXPECTED_CHANNELS = {"0000": 10, "0001": 20, "0002": 30, "0003": 40}  # T1, T1ce, T2, FLAIR


def brats_seg() -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[1], seg[2], seg[3] = 1, 2, 4  # necrosis, edema, enhancing
    return seg


def write_image(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path), True)


def make_case(parent: Path, case_id: str, seg_name: str | None = None, with_seg: bool = True) -> Path:
    folder = parent / case_id
    folder.mkdir(parents=True)
    for modality, value in MODALITY_VALUES.items():
        write_image(folder / f"{case_id}_{modality}.nii.gz", np.full(SHAPE, value, dtype=np.int16))
    if with_seg:
        write_image(folder / (seg_name or f"{case_id}_seg.nii.gz"), brats_seg())
    return folder


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_geometry(image: sitk.Image) -> None:
    assert image.GetSize() == SHAPE[::-1]
    np.testing.assert_allclose(image.GetSpacing(), SPACING)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION)


def assert_converted_case(dataset: Path, case_id: str, labelled: bool = True) -> None:
    suffix = "Tr" if labelled else "Ts"
    for channel, value in EXPECTED_CHANNELS.items():
        image = sitk.ReadImage(str(dataset / f"images{suffix}" / f"{case_id}_{channel}.nii.gz"))
        assert_geometry(image)
        assert np.all(sitk.GetArrayFromImage(image) == value), f"{case_id} channel {channel}"
    if labelled:
        label = sitk.ReadImage(str(dataset / "labelsTr" / f"{case_id}.nii.gz"))
        assert_geometry(label)
        assert label.GetPixelID() == sitk.sitkUInt8
        array = sitk.GetArrayFromImage(label)
        assert (array[0] == 0).all() and (array[1] == 2).all() and (array[2] == 1).all() and (array[3] == 3).all()


def no_leftovers(root: Path) -> bool:
    return not root.exists() or not any(p.name.startswith(".") for p in root.iterdir())


def test_brats2020_with_misnamed_case_355(tmp_path):
    data = tmp_path / "MICCAI_BraTS2020_TrainingData"
    make_case(data, "BraTS20_Training_001")
    make_case(data, "BraTS20_Training_355", seg_name="W39_1998.09.19_Segm.nii")
    (data / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
    before = tree_digest(tmp_path)
    root = tmp_path / "raw"
    assert exit_status(convert_brats.main, ["-i", str(data), "-y", "2020", "--output-root", str(root), "-np", "1"]) == 0

    dataset = root / "Dataset520_BraTS2020"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3]
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == \
        ["BraTS20_Training_001.nii.gz", "BraTS20_Training_355.nii.gz"]
    assert len(list((dataset / "imagesTr").iterdir())) == 8 and not (dataset / "imagesTs").exists()
    for case_id in ("BraTS20_Training_001", "BraTS20_Training_355"):
        assert_converted_case(dataset, case_id)
    assert tree_digest(tmp_path / "MICCAI_BraTS2020_TrainingData") == \
        {k[len("MICCAI_BraTS2020_TrainingData/"):]: v for k, v in before.items()}  # inputs untouched
    assert no_leftovers(root)


def test_brats2018_hgg_lgg_and_validation_in_parallel(tmp_path):
    make_case(tmp_path / "train" / "HGG", "Brats18_2013_2_1")
    make_case(tmp_path / "train" / "LGG", "Brats18_2013_0_1")
    make_case(tmp_path / "val", "Brats18_CBICA_AAM_1", with_seg=False)
    root = tmp_path / "raw"
    dataset = convert_brats.convert_brats(tmp_path / "train", 2018, output_root_folder=root,
                                          validation_folder=tmp_path / "val", num_processes=2)
    assert dataset == root / "Dataset518_BraTS2018"
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 2
    assert_converted_case(dataset, "Brats18_2013_2_1")
    assert_converted_case(dataset, "Brats18_2013_0_1")
    assert_converted_case(dataset, "Brats18_CBICA_AAM_1", labelled=False)
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == \
        [f"Brats18_CBICA_AAM_1_{c}.nii.gz" for c in EXPECTED_CHANNELS]


def test_brats2021_custom_id_and_name(tmp_path):
    for case_id in ("BraTS2021_00000", "BraTS2021_00002"):
        make_case(tmp_path / "BraTS2021_Training_Data", case_id)
    root = tmp_path / "raw"
    assert exit_status(convert_brats.main, ["-i", str(tmp_path / "BraTS2021_Training_Data"), "-y", "2021", "-d", "137",
                        "-n", "BraTS21", "--output-root", str(root), "-np", "1"]) == 0
    dataset = root / "Dataset137_BraTS21"
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == \
        ["BraTS2021_00000.nii.gz", "BraTS2021_00002.nii.gz"]
    assert_converted_case(dataset, "BraTS2021_00002")


def make_case_2023(parent: Path, case_id: str, with_seg: bool = True, seg: np.ndarray | None = None) -> None:
    """A BraTS 2023+ case folder: BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz."""
    folder = parent / case_id
    folder.mkdir(parents=True)
    for suffix, modality in zip(("t1n", "t1c", "t2w", "t2f"), ("t1", "t1ce", "t2", "flair")):
        write_image(folder / f"{case_id}-{suffix}.nii.gz", np.full(SHAPE, MODALITY_VALUES[modality], dtype=np.int16))
    if with_seg:
        if seg is None:
            seg = np.zeros(SHAPE, dtype=np.uint8)
            seg[1], seg[2], seg[3] = 1, 2, 3  # NCR, ED, ET
        write_image(folder / f"{case_id}-seg.nii.gz", seg)


def test_brats2023_gli_training_validation_and_submission(tmp_path):
    train, val = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", tmp_path / "validation"
    make_case_2023(train, "BraTS-GLI-00000-000")
    make_case_2023(train, "BraTS-GLI-00002-000")
    make_case_2023(val, "BraTS-GLI-00001-000", with_seg=False)
    root = tmp_path / "raw"
    assert exit_status(convert_brats.main, ["-i", str(train), "-y", "2023", "--validation-input", str(val),
                                            "--output-root", str(root), "-np", "1"]) == 0
    dataset = root / "Dataset540_BraTS2023GLI"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"]["enhancing tumor"] == [3] and meta["numTraining"] == 2
    assert_converted_case(dataset, "BraTS-GLI-00002-000")  # ED -> 1, NCR -> 2, ET -> 3, channels by content
    assert_converted_case(dataset, "BraTS-GLI-00001-000", labelled=False)
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(train / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz")))
    out = tmp_path / "submission"
    assert exit_status(convert_brats.main_to_submission, ["-i", str(dataset / "labelsTr"), "-o", str(out),
                                                          "-y", "2023"]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "BraTS-GLI-00000-000.nii.gz"))),
                                  original)
    predictions = tmp_path / "predictions"  # as nnUNetv2_predict writes them: with the model's dataset.json
    shutil.copytree(dataset / "labelsTr", predictions)
    shutil.copy(dataset / "dataset.json", predictions / "dataset.json")
    assert exit_status(convert_brats.main_to_submission, ["-i", str(predictions), "-o", str(tmp_path / "sub2")]) == 0
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sub2" / "BraTS-GLI-00000-000.nii.gz"))), original)


def test_brats2024_task_detection_and_label_4_refused(tmp_path, capsys):
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[1] = 4  # post-treatment resection cavity
    make_case_2023(tmp_path / "men", "BraTS-MEN-00004-000")
    make_case_2023(tmp_path / "gli", "BraTS-GLI-02000-100", seg=seg)
    root = tmp_path / "raw"
    dataset = convert_brats.convert_brats(tmp_path / "men", 2024, output_root_folder=root)
    assert dataset == root / "Dataset551_BraTS2024MEN"
    with pytest.raises(ConversionError, match=r"BraTS-GLI-02000-100-seg\.nii\.gz: unexpected label values 4"):
        convert_brats.convert_brats(tmp_path / "gli", 2024, output_root_folder=root)
    make_case_2023(tmp_path / "men", "BraTS-GLI-00003-000")
    assert exit_status(convert_brats.main, ["-i", str(tmp_path / "men"), "-y", "2024", "--output-root",
                                            str(tmp_path / "raw2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "several tasks (GLI, MEN)" in err and "--task" in err


def test_label_mapping_is_nnunets_and_inverse_exact():
    nnunet = importlib.import_module("nnunetv2.dataset_conversion.Dataset137_BraTS21")
    brats = np.array([0, 1, 2, 4, 4, 2], dtype=np.uint8)
    converted = convert_brats.brats_to_nnunet_labels(brats)
    assert converted.tolist() == [0, 2, 1, 3, 3, 1]
    np.testing.assert_array_equal(nnunet.convert_labels_back_to_BraTS(converted), brats)
    np.testing.assert_array_equal(convert_brats.nnunet_to_brats_labels(converted), brats)
    predicted = np.array([0, 1, 2, 3], dtype=np.uint8)
    np.testing.assert_array_equal(convert_brats.nnunet_to_brats_labels(predicted),
                                  nnunet.convert_labels_back_to_BraTS(predicted))


def test_submission_roundtrip(tmp_path, capsys):
    make_case(tmp_path / "data", "BraTS20_Validation_001")
    dataset = convert_brats.convert_brats(tmp_path / "data", 2020, output_root_folder=tmp_path / "raw")
    predictions = dataset / "labelsTr"  # stands in for nnUNetv2_predict output
    out = tmp_path / "submission"
    assert exit_status(convert_brats.main_to_submission, ["-i", str(tmp_path / "absent"), "-o", str(out)]) == 2
    assert capsys.readouterr().err.endswith(f"error: input folder not found: {tmp_path / 'absent'}\n")
    assert exit_status(convert_brats.main_to_submission, ["-i", str(predictions), "-o", str(out)]) == 2
    err = capsys.readouterr().err  # no dataset.json beside the predictions: the release must be given
    assert err.count("\n") == 1 and "give the BraTS release with -y" in err and not out.exists()
    (predictions / "dataset.json").write_text("{")  # damaged: reported, not taken for a dataset without labels
    assert exit_status(convert_brats.main_to_submission, ["-i", str(predictions), "-o", str(out), "-y", "2023"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{predictions / 'dataset.json'}: not a readable JSON file" in err
    (predictions / "plans.json").write_text("{}")  # nnU-Net writes json files next to predictions,
    shutil.copy(dataset / "dataset.json", predictions / "dataset.json")  # the model's dataset.json among them
    before = tree_digest(predictions)
    assert exit_status(convert_brats.main_to_submission, ["-i", str(predictions), "-o", str(out), "-y", "2023"]) == 2
    err = capsys.readouterr().err  # 2023's labels (ET 3) for a 2020 dataset (ET 4): refused
    assert err.count("\n") == 1 and "-y 2023 writes enhancing tumour as 3" in err and not out.exists()
    assert exit_status(convert_brats.main_to_submission, ["-i", str(predictions), "-o", str(out), "-np", "1"]) == 0
    assert tree_digest(predictions) == before
    assert [p.name for p in out.iterdir()] == ["BraTS20_Validation_001.nii.gz"]
    image = sitk.ReadImage(str(out / "BraTS20_Validation_001.nii.gz"))
    assert_geometry(image)
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), brats_seg())

    with pytest.raises(SystemExit) as exit_info:  # existing output files need --overwrite
        convert_brats.main_to_submission(["-i", str(predictions), "-o", str(out)])
    assert exit_info.value.code == 1 and "--overwrite" in capsys.readouterr().err
    assert exit_status(convert_brats.main_to_submission, ["-i", str(predictions), "-o", str(out), "--overwrite",
                       "-np", "1"]) == 0
    with pytest.raises(ConversionError, match="must differ"):
        convert_brats.convert_predictions_to_brats(predictions, predictions)

    bad = tmp_path / "bad_predictions"
    bad.mkdir()
    write_image(bad / "case.nii.gz", brats_seg())  # contains 4: not an nnU-Net prediction
    with pytest.raises(ConversionError, match=r"case\.nii\.gz: unexpected label values 4"):
        convert_brats.convert_predictions_to_brats(bad, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and no_leftovers(tmp_path)


def test_missing_file_names_it_and_writes_nothing(tmp_path, capsys):
    make_case(tmp_path / "data", "BraTS20_Training_001")
    make_case(tmp_path / "data", "BraTS20_Training_002")
    (tmp_path / "data" / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii.gz").unlink()
    root = tmp_path / "raw"
    with pytest.raises(SystemExit) as exit_info:
        convert_brats.main(["-i", str(tmp_path / "data"), "-y", "2020", "--output-root", str(root), "-np", "1"])
    assert exit_info.value.code == 1
    assert "BraTS20_Training_002_t2.nii.gz" in capsys.readouterr().err
    assert not (root / "Dataset520_BraTS2020").exists() and no_leftovers(root)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file_names_it_and_writes_nothing(tmp_path, damage):
    make_case(tmp_path / "data", "BraTS20_Training_001")
    make_case(tmp_path / "data", "BraTS20_Training_002")
    bad = tmp_path / "data" / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
    content = bad.read_bytes()
    bad.write_bytes(b"this is not a nifti file" * 20 if damage == "garbage" else content[:len(content) // 2])
    root = tmp_path / "raw"
    with pytest.raises(ConversionError, match="BraTS20_Training_002_flair.nii.gz"):
        convert_brats.convert_brats(tmp_path / "data", 2020, output_root_folder=root)
    assert not (root / "Dataset520_BraTS2020").exists() and no_leftovers(root)


def test_unexpected_labels_and_geometry_mismatch_are_errors(tmp_path):
    folder = make_case(tmp_path / "a", "BraTS20_Training_001")
    seg = brats_seg()
    seg[4] = 3
    write_image(folder / "BraTS20_Training_001_seg.nii.gz", seg)
    with pytest.raises(ConversionError, match=r"BraTS20_Training_001_seg\.nii\.gz: unexpected label values 3"):
        convert_brats.convert_brats(tmp_path / "a", 2020, output_root_folder=tmp_path / "raw")

    folder = make_case(tmp_path / "b", "BraTS20_Training_001")
    write_image(folder / "BraTS20_Training_001_t2.nii.gz", np.full(SHAPE, 30, np.int16), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ConversionError, match=r"BraTS20_Training_001_t2\.nii\.gz: geometry differs .* spacing"):
        convert_brats.convert_brats(tmp_path / "b", 2020, output_root_folder=tmp_path / "raw")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_existing_output_wrong_year_and_id_clash(tmp_path):
    make_case(tmp_path / "data", "BraTS20_Training_001")
    root = tmp_path / "raw"
    dataset = convert_brats.convert_brats(tmp_path / "data", 2020, output_root_folder=root)
    (dataset / "marker").write_text("old")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_brats.convert_brats(tmp_path / "data", 2020, output_root_folder=root)
    assert (dataset / "marker").exists()
    convert_brats.convert_brats(tmp_path / "data", 2020, output_root_folder=root, overwrite=True)
    assert not (dataset / "marker").exists() and (dataset / "dataset.json").is_file() and no_leftovers(root)
    with pytest.raises(ConversionError, match="id 520 is already used by Dataset520_BraTS2020"):
        convert_brats.convert_brats(tmp_path / "data", 2020, name="Other", output_root_folder=root)
    with pytest.raises(ConversionError, match="no BraTS 2021 case folders"):
        convert_brats.convert_brats(tmp_path / "data", 2021, output_root_folder=root)


@pytest.mark.parametrize("entry", [convert_brats.main, convert_brats.main_to_submission])
def test_help(entry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry(["--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out

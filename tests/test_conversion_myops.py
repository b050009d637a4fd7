"""MyoPS 2020 conversion: fake train25 / train25_myops_gd / test20 folders with the original names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from command_exit import exit_status
import SimpleITK as sitk

from nnunetv2_dmaf.dataset_conversion import convert_myops2020 as myops
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError

SHAPE = (3, 10, 9)  # numpy order: few thick slices, as cardiac MR
SPACING = (1.25, 1.25, 8.0)
ORIGIN = (12.0, -30.0, 4.0)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
CHANNEL_VALUES = {"C0": 11, "DE": 22, "T2": 33}
MYOPS_VALUES = (0, 200, 500, 600, 1220, 2221)


def myops_label() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.int16)
    for i, value in enumerate(MYOPS_VALUES):
        label[:, i] = value  # row i of every slice
    return label


def write_image(path: Path, array: np.ndarray, origin=ORIGIN) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path), True)


def make_myops(root: Path, train=("101", "102"), test=("201",)) -> Path:
    for folder in ("train25", "train25_myops_gd", "test20"):
        (root / folder).mkdir(parents=True)
    for kind, folder, ids in (("training", "train25", train), ("test", "test20", test)):
        for case in ids:
            for channel, value in CHANNEL_VALUES.items():
                write_image(root / folder / f"myops_{kind}_{case}_{channel}.nii.gz", np.full(SHAPE, value, np.float32))
    for case in train:
        write_image(root / "train25_myops_gd" / f"myops_training_{case}_gd.nii.gz", myops_label())
    return root


def regions_to_labels(label: np.ndarray, regions: list[list[int]], order: list[int]) -> np.ndarray:
    """What nnU-Net does with region predictions: later regions overwrite earlier ones."""
    out = np.zeros_like(label)
    for region, value in zip(regions, order):
        out[np.isin(label, region)] = value
    return out


def test_conversion_labels_channels_geometry_regions(tmp_path):
    data = make_myops(tmp_path / "MyoPS2020")
    root = tmp_path / "raw"
    assert exit_status(myops.main, ["-i", str(data), "--output-root", str(root), "-np", "1"]) == 0
    dataset = root / "Dataset530_MyoPS2020"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "C0", "1": "DE", "2": "T2"}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == \
        [f"myops_test_201_000{i}.nii.gz" for i in range(3)]
    for case in ("myops_training_101", "myops_training_102"):
        for channel, value in enumerate(CHANNEL_VALUES.values()):
            image = sitk.ReadImage(str(dataset / "imagesTr" / f"{case}_{channel:04d}.nii.gz"))
            assert np.all(sitk.GetArrayFromImage(image) == value)
            np.testing.assert_allclose(image.GetSpacing(), SPACING)
            np.testing.assert_allclose(image.GetOrigin(), ORIGIN)
            np.testing.assert_allclose(image.GetDirection(), DIRECTION)
        label_image = sitk.ReadImage(str(dataset / "labelsTr" / f"{case}.nii.gz"))
        assert label_image.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(label_image.GetOrigin(), ORIGIN)
        np.testing.assert_allclose(label_image.GetSpacing(), SPACING)
        label = sitk.GetArrayFromImage(label_image)
        assert [int(label[0, i, 0]) for i in range(len(MYOPS_VALUES))] == [0, 1, 2, 3, 4, 5]
        np.testing.assert_array_equal(myops.nnunet_to_myops_labels(label), myops_label())

    # the regions with regions_class_order give back every label (nnU-Net's region -> label export)
    regions = [v for k, v in meta["labels"].items() if k != "background"]
    assert regions == [[2], [3], [1, 4, 5], [4, 5], [5]]
    assert meta["regions_class_order"] == [2, 3, 1, 4, 5]
    np.testing.assert_array_equal(regions_to_labels(label, regions, meta["regions_class_order"]), label)


def test_no_regions_and_explicit_folders(tmp_path):
    data = make_myops(tmp_path / "d", test=())
    dataset = myops.convert_myops2020(train_images=data / "train25", train_labels=data / "train25_myops_gd",
                                      dataset_id=531, name="MyoPSPlain", output_root_folder=tmp_path / "raw",
                                      use_regions=False)
    meta = json.loads((dataset / "dataset.json").read_text())
    assert dataset.name == "Dataset531_MyoPSPlain" and "regions_class_order" not in meta
    assert meta["labels"] == {"background": 0, "normal myocardium": 1, "LV blood pool": 2, "RV blood pool": 3,
                              "edema": 4, "scar": 5}
    assert not (dataset / "imagesTs").exists()


def test_channel_geometry_mismatch_names_file(tmp_path):
    data = make_myops(tmp_path / "d")
    write_image(data / "train25" / "myops_training_102_DE.nii.gz", np.full(SHAPE, 22, np.float32),
                origin=(13.0, -30.0, 4.0))
    root = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"myops_training_102_DE\.nii\.gz: geometry differs .*origin"):
        myops.convert_myops2020(data, output_root_folder=root)
    assert not root.exists() or not any(root.iterdir())


def test_missing_label_and_bad_values_and_corrupt_file(tmp_path, capsys):
    data = make_myops(tmp_path / "d")
    (data / "train25_myops_gd" / "myops_training_102_gd.nii.gz").unlink()
    root = tmp_path / "raw"
    with pytest.raises(SystemExit) as exit_info:
        myops.main(["-i", str(data), "--output-root", str(root), "-np", "1"])
    assert exit_info.value.code == 1 and "myops_training_102_gd.nii.gz" in capsys.readouterr().err

    label = myops_label()
    label[0, 0, 0] = 300
    write_image(data / "train25_myops_gd" / "myops_training_102_gd.nii.gz", label)
    with pytest.raises(ConversionError, match=r"myops_training_102_gd\.nii\.gz: unexpected label values 300"):
        myops.convert_myops2020(data, output_root_folder=root)

    write_image(data / "train25_myops_gd" / "myops_training_102_gd.nii.gz", myops_label())
    (data / "test20" / "myops_test_201_T2.nii.gz").write_bytes(b"\x1f\x8b garbage" * 10)
    with pytest.raises(ConversionError, match=r"myops_test_201_T2\.nii\.gz"):
        myops.convert_myops2020(data, output_root_folder=root)
    assert not root.exists() or not any(root.iterdir())


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        myops.main(["--help"])
    assert exit_info.value.code == 0 and "myocardium" in capsys.readouterr().out

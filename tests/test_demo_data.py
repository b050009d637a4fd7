"""The generated dataset: nnU-Net raw layout and modality-specific information."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from nnunetv2_dmaf.demo_data import CHANNEL_NAMES, generate_demo_dataset, make_case


def test_layout_and_dataset_json(tmp_path):
    folder = generate_demo_dataset(tmp_path, 991, "Tiny", num_training=4, num_test=2, shape=(12, 14, 16))
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["regions_class_order"] == [1, 2, 3] and meta["numTraining"] == 4
    assert len(list((folder / "imagesTr").glob("*.nii.gz"))) == 16
    assert len(list((folder / "labelsTs").glob("*.nii.gz"))) == 2
    image = sitk.ReadImage(str(folder / "imagesTr" / "Tiny_000_0003.nii.gz"))
    assert image.GetSize() == (16, 14, 12)


def test_modalities_carry_different_information():
    images, labels = make_case((32, 32, 32), np.random.default_rng(1))
    t1ce, t2 = images[CHANNEL_NAMES.index("T1ce")], images[CHANNEL_NAMES.index("T2")]
    enhancing, edema = labels == 3, labels == 1
    assert enhancing.any() and edema.any()
    # T1ce separates enhancing tumour from edema; T2 does not
    assert t1ce[enhancing].mean() - t1ce[edema].mean() > 100
    assert abs(t2[enhancing].mean() - t2[edema].mean()) < 10
    assert (images[:, labels == 0].min() >= 0) and (images[:, 0, 0, 0] == 0).all()  # zero background

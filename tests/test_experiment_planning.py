"""nnUNetv2_dmaf_plan_experiment: nnU-Net's planners sized for DMAF-Net (BraTS-sized fingerprint)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import nnunet_env, run_command

DATASET = "Dataset991_PlanBraTS"
PROPS = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": -3.0, "max": 3.0, "percentile_99_5": 2.5,
         "percentile_00_5": -2.5}


@pytest.fixture(scope="module")
def brats_sized(tmp_path_factory) -> tuple[Path, dict]:
    """A raw dataset of placeholder images with the fingerprint of BraTS (140x170x140 after cropping,
    1 mm, 4 channels): planning reads only the fingerprint and one image."""
    root = tmp_path_factory.mktemp("planning")
    raw, pre = root / "raw" / DATASET, root / "preprocessed" / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    pre.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "regions_class_order": [1, 2, 3], "numTraining": 4, "file_ending": ".nii.gz"}))
    for i in range(4):
        for c in range(4):
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32)), str(raw / "imagesTr" / f"c{i}_{c:04d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.uint8)), str(raw / "labelsTr" / f"c{i}.nii.gz"))
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [[1.0, 1.0, 1.0]] * 4, "shapes_after_crop": [[140, 170, 140]] * 4,
        "foreground_intensity_properties_per_channel": {str(c): PROPS for c in range(4)},
        "median_relative_size_after_cropping": 0.7}))
    env = nnunet_env(root)
    run_command(["nnUNetv2_plan_experiment", "-d", "991"], env)
    return root, env


def fullres(root: Path, plans: str) -> dict:
    return json.loads((root / "preprocessed" / DATASET / f"{plans}.json").read_text())["configurations"]["3d_fullres"]


def test_dmaf_plans_fit_nnunets_memory_budget_with_dmaf_net(brats_sized):
    from nnunetv2_dmaf.experiment_planning import estimate_dmaf_feature_map_size
    root, env = brats_sized
    nnunet_plans = (root / "preprocessed" / DATASET / "nnUNetPlans.json").read_text()
    result = run_command(["nnUNetv2_dmaf_plan_experiment", "-d", "991"], env)
    assert "plans nnUNetDMAFPlans written" in result.stdout
    assert (root / "preprocessed" / DATASET / "nnUNetPlans.json").read_text() == nnunet_plans  # untouched
    unet, dmaf = fullres(root, "nnUNetPlans"), fullres(root, "nnUNetDMAFPlans")
    assert dmaf["architecture"]["network_class_name"] == unet["architecture"]["network_class_name"]

    def estimate(config: dict, patch) -> int:
        arch = config["architecture"]
        return int(estimate_dmaf_feature_map_size(patch, 4, 3, arch["network_class_name"], arch["arch_kwargs"],
                                                  arch["_kw_requires_import"]))

    budget = 560000000 * (8 / 8)  # nnU-Net's 3d reference value for its 8 GB default target, batch 2
    # DMAF-Net at nnU-Net's patch would exceed the budget; the DMAF plans' patch fits it
    assert estimate(unet, unet["patch_size"]) > budget >= estimate(dmaf, dmaf["patch_size"])
    assert np.prod(dmaf["patch_size"]) < np.prod(unet["patch_size"])


def test_plan_experiment_errors_are_one_line(brats_sized, tmp_path):
    root, env = brats_sized
    missing = run_command(["nnUNetv2_dmaf_plan_experiment", "-d", "992"], env, check=False)
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0 and "-d 992" in missing.stderr
    bad = run_command(["nnUNetv2_dmaf_plan_experiment", "-d", "991", "-pl", "Nope"], env, check=False)
    assert bad.returncode == 2 and "Nope" in bad.stderr and "Traceback" not in bad.stderr
    (root / "preprocessed" / DATASET / "dataset_fingerprint.json").rename(tmp_path / "fp.json")
    try:
        nofp = run_command(["nnUNetv2_dmaf_plan_experiment", "-d", "991"], env, check=False)
    finally:
        (tmp_path / "fp.json").rename(root / "preprocessed" / DATASET / "dataset_fingerprint.json")
    assert nofp.returncode == 1 and "nnUNetv2_extract_fingerprint -d 991" in nofp.stderr

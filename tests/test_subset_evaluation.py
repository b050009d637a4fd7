"""Unit tests: Dice/HD95 conventions on hand-computable masks, regions, subsets, report files."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from nnunetv2_dmaf.evaluation.metrics import BRATS_HD95_PENALTY_MM, dice, hd95, image_diagonal_mm, surface
from nnunetv2_dmaf.evaluation.regions import Region, regions_from_dataset_json
from nnunetv2_dmaf.evaluation.report import (MEAN_ROW, OUTPUT_FILES, markdown_table, read_per_case, summarize,
                                             write_per_case, write_report)
from nnunetv2_dmaf.evaluation.subset_evaluation import parse_penalty, score_case
from nnunetv2_dmaf.modalities import (all_modality_subsets, channel_names_from_dataset_json,
                                                mask_from_missing, parse_channels, subset_name)
from nnunetv2_dmaf.user_errors import UsageError

NAMES = ["T1", "T1ce", "T2", "FLAIR"]


def box(shape, low, high) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(lo, hi) for lo, hi in zip(low, high))] = True
    return mask


# ------------------------------------------------------------------------------------------ Dice
def test_dice_both_empty_is_one_and_one_empty_is_zero():
    empty = np.zeros((4, 4, 4), bool)
    full = box((4, 4, 4), (1, 1, 1), (3, 3, 3))
    assert dice(empty, empty) == 1.0
    assert dice(full, empty) == 0.0
    assert dice(empty, full) == 0.0
    assert dice(full, full) == 1.0


def test_dice_known_overlap():
    a = box((10, 10, 10), (0, 0, 0), (2, 2, 2))  # 8 voxels
    b = box((10, 10, 10), (1, 0, 0), (3, 2, 2))  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------ HD95
def test_hd95_both_empty_is_zero_and_one_empty_is_the_penalty():
    empty = np.zeros((5, 5, 5), bool)
    full = box((5, 5, 5), (1, 1, 1), (3, 3, 3))
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert hd95(full, empty, (1, 1, 1)) == BRATS_HD95_PENALTY_MM == 373.13
    assert hd95(empty, full, (1, 1, 1), empty_penalty=12.5) == 12.5


def test_brats_penalty_is_the_brats_volume_diagonal():
    assert image_diagonal_mm((240, 240, 155), (1, 1, 1)) == pytest.approx(BRATS_HD95_PENALTY_MM, abs=0.01)
    assert image_diagonal_mm((3, 4), (1.0, 1.0)) == pytest.approx(5.0)


def test_hd95_identical_masks_is_zero():
    mask = box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    assert hd95(mask, mask, (1, 1, 1)) == 0.0


def test_hd95_single_voxels_uses_spacing():
    a = np.zeros((5, 5, 5), bool)
    b = np.zeros((5, 5, 5), bool)
    a[0, 0, 0] = True
    b[0, 0, 3] = True
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    b[:] = False
    b[0, 4, 0] = True  # 4 voxels along axis 1 at 0.75 mm = 3 mm
    a[:] = False
    a[0, 0, 0] = True
    assert hd95(a, b, (1.0, 0.75, 1.0)) == pytest.approx(3.0)


def test_hd95_shifted_slabs_all_distances_equal_shift():
    # two one-voxel-thick planes, 3 voxels apart along axis 0 with 2 mm spacing: every surface
    # distance is 6 mm in both directions
    a = box((10, 6, 6), (2, 0, 0), (3, 6, 6))
    b = box((10, 6, 6), (5, 0, 0), (6, 6, 6))
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)


def test_hd95_is_a_percentile_not_the_maximum():
    # a 4x4x4 cube (56 surface voxels) and the same cube plus one voxel 10 voxels away:
    # 56 + 56 zero distances and one of 10 -> the 95th percentile is 0, the Hausdorff maximum 10
    reference = box((20, 6, 6), (0, 0, 0), (4, 4, 4))
    prediction = reference.copy()
    prediction[13, 0, 0] = True
    assert surface(reference).sum() == 56
    assert hd95(prediction, reference, (1, 1, 1)) == 0.0
    # with few surface voxels the outlier dominates: two single voxels 10 apart
    a = np.zeros((20, 3, 3), bool)
    b = np.zeros((20, 3, 3), bool)
    a[0, 1, 1] = True
    b[10, 1, 1] = True
    assert hd95(a, b, (1, 1, 1)) == pytest.approx(10.0)


def test_hd95_2d_data_with_singleton_axis():
    a = np.zeros((1, 6, 6), bool)
    b = np.zeros((1, 6, 6), bool)
    a[0, 1, 1] = True
    b[0, 1, 4] = True
    # nnU-Net's 2D spacing has a huge dummy first entry; it must not matter
    assert hd95(a, b, (999.0, 1.0, 0.5)) == pytest.approx(1.5)


def test_hd95_cropping_does_not_change_distances():
    rng = np.random.default_rng(0)
    a = rng.random((30, 30, 30)) > 0.995
    b = rng.random((30, 30, 30)) > 0.995
    from scipy import ndimage
    sa, sb = surface(a), surface(b)
    expected = np.percentile(np.concatenate([ndimage.distance_transform_edt(~sb, sampling=(1, 2, 3))[sa],
                                             ndimage.distance_transform_edt(~sa, sampling=(1, 2, 3))[sb]]), 95)
    assert hd95(a, b, (1, 2, 3)) == pytest.approx(expected)


# -------------------------------------------------------------------------------- regions / cases
BRATS_JSON = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
              "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
              "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}


def test_regions_from_region_based_and_label_based_dataset_json():
    assert regions_from_dataset_json(BRATS_JSON) == [Region("whole tumor", (1, 2, 3)), Region("tumor core", (2, 3)),
                                                     Region("enhancing tumor", (3,))]
    plain = {"labels": {"background": 0, "myocardium": 1, "scar": 2, "ignore": 3}}
    assert regions_from_dataset_json(plain) == [Region("myocardium", (1,)), Region("scar", (2,))]


def test_score_case_brats_rule_for_an_absent_region():
    reference = np.zeros((6, 6, 6), np.uint8)
    reference[2:4, 2:4, 2:4] = 2  # necrosis only: WT and TC present, ET empty
    prediction = reference.copy()
    scores = score_case(prediction, reference, (1, 1, 1), regions_from_dataset_json(BRATS_JSON), 373.13)
    assert scores["Dice enhancing tumor"] == 1.0 and scores["HD95 enhancing tumor"] == 0.0
    prediction[0, 0, 0] = 3  # a false-positive enhancing voxel
    scores = score_case(prediction, reference, (1, 1, 1), regions_from_dataset_json(BRATS_JSON), "diagonal")
    assert scores["Dice enhancing tumor"] == 0.0
    assert scores["HD95 enhancing tumor"] == pytest.approx(math.sqrt(3 * 36))


def test_parse_penalty():
    assert parse_penalty("diagonal") == "diagonal"
    assert parse_penalty("373.13") == 373.13
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        parse_penalty("big")


def test_subsets_and_names():
    subsets = all_modality_subsets(4)
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subsets[0] == (True, False, False, False) and subsets[-1] == (True,) * 4
    assert [sum(s) for s in subsets] == sorted(sum(s) for s in subsets)
    assert subset_name((True, False, True, False), NAMES) == "T1+T2"
    assert channel_names_from_dataset_json(BRATS_JSON) == NAMES


def test_parse_channels_names_case_insensitive_and_indices():
    assert parse_channels(["t1CE", "3"], NAMES) == [1, 3]
    assert parse_channels(["FLAIR", "flair"], NAMES) == [3]
    assert mask_from_missing(4, [1, 3]) == (True, False, True, False)
    with pytest.raises(ValueError, match="T1ce"):
        parse_channels(["T3"], NAMES)
    with pytest.raises(ValueError, match="unknown channel '4'"):
        parse_channels(["4"], NAMES)


# ------------------------------------------------------------------------------------------ report
def _per_case() -> pd.DataFrame:
    rows = []
    for subset, k, base in (("T1", 1, 0.2), ("T1+T2", 2, 0.6)):
        for case, shift in (("a", 0.0), ("b", 0.1)):
            rows.append({"subset": subset, "num_modalities": k, "case": case, "Dice WT": base + shift,
                         "Dice ET": 1.0, "HD95 WT": 10 * (base + shift), "HD95 ET": 0.0})
    return pd.DataFrame(rows)


def test_summary_means_per_subset_and_over_subsets():
    summary = summarize(_per_case(), ["T1", "T1+T2"], ["WT", "ET"])
    assert list(summary.index) == ["T1", "T1+T2", MEAN_ROW]
    assert summary.loc["T1", "Dice WT"] == pytest.approx(0.25)
    assert summary.loc["T1+T2", "Dice WT"] == pytest.approx(0.65)
    assert summary.loc[MEAN_ROW, "Dice WT"] == pytest.approx(0.45)
    assert summary.loc["T1", "Dice mean"] == pytest.approx((0.25 + 1.0) / 2)
    assert summary.loc[MEAN_ROW, "HD95 WT"] == pytest.approx(4.5)
    table = markdown_table(summary, ["WT", "ET"])
    assert table.splitlines()[0].startswith("| Subset | Dice WT | Dice ET | Dice mean | HD95 WT (mm)")
    assert "| T1+T2 | 0.650 |" in table and f"| **{MEAN_ROW}** | **0.450** |" in table


def test_write_report_files(tmp_path):
    per_case = _per_case()
    summary = summarize(per_case, ["T1", "T1+T2"], ["WT", "ET"])
    paths = write_report(tmp_path, per_case, summary, ["WT", "ET"], {"conventions": {"Dice": "both empty = 1"}})
    assert sorted(p.name for p in paths.values()) == sorted(OUTPUT_FILES)
    payload = json.loads((tmp_path / "summary.json").read_text())
    assert [s["subset"] for s in payload["subsets"]] == ["T1", "T1+T2"]
    assert payload["mean_over_subsets"]["Dice WT"] == pytest.approx(0.45)
    assert len(payload["per_case"]) == 4
    assert (tmp_path / "dice_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "both empty = 1" in (tmp_path / "summary.md").read_text()
    assert pd.read_csv(tmp_path / "summary.csv")["subset"].tolist() == ["T1", "T1+T2", MEAN_ROW]


def test_postprocessed_et_counts_small_predictions_as_empty():
    from nnunetv2_dmaf.evaluation.subset_evaluation import evaluation_regions
    dataset_json = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                               "enhancing tumor": [3]}}
    regions = evaluation_regions(dataset_json, et_postprocess_voxels=5)
    assert [r.name for r in regions] == ["whole tumor", "tumor core", "enhancing tumor",
                                         "enhancing tumor (post-processed)"]
    reference = np.zeros((1, 10, 10), np.uint8)
    small = reference.copy()
    small[0, :2, :2] = 3  # 4 voxels of predicted ET, none in the reference
    scores = score_case(small, reference, (1.0, 1.0, 1.0), regions, 10.0)
    assert scores["Dice enhancing tumor"] == 0.0 and scores["HD95 enhancing tumor"] == 10.0
    assert scores["Dice enhancing tumor (post-processed)"] == 1.0  # under 5 voxels: empty, as the reference
    assert scores["HD95 enhancing tumor (post-processed)"] == 0.0
    large = reference.copy()
    large[0, :3, :3] = 3
    assert score_case(large, reference, (1.0, 1.0, 1.0), regions, 10.0)["Dice enhancing tumor (post-processed)"] == 0
    with pytest.raises(UsageError, match="no region named"):
        evaluation_regions({"labels": {"background": 0, "a": 1}}, et_postprocess_voxels=5)
    assert [r.name for r in evaluation_regions({"labels": {"background": 0, "a": 1}}, "myops")] == \
        ["LV blood pool", "RV blood pool", "myocardium", "edema+scar", "scar"]


def test_per_case_table_keeps_numeric_looking_case_ids(tmp_path):
    """Case '001' read back from per_case.csv is still '001' (as a number it would be 1, and --continue
    would predict it again and list it twice)."""
    path = tmp_path / "per_case.csv"
    write_per_case(path, pd.DataFrame({"case": ["001", "010"], "subset": ["T1", "T1+T2"], "Dice WT": [0.5, 0.7]}))
    table = read_per_case(path)
    assert list(table["case"]) == ["001", "010"] and list(table["subset"]) == ["T1", "T1+T2"]

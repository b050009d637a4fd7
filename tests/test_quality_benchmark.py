"""benchmarks/quality.py building blocks (no training): the mr2468 availability table, the plans variant, run records and the report."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import SHARED_DIR

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)

PUBLISHED = SHARED_DIR / "data" / "imbalanced_splits" / "Brats2020_imb_split_mr2468.csv"
pytestmark = pytest.mark.skipif(not PUBLISHED.is_file(), reason=f"published table not found: {PUBLISHED}")


def test_availability_reproduces_published_mr2468_rates(tmp_path):
    channels = ["T1", "T1ce", "T2", "FLAIR"]  # dataset order differs from the table's [flair, t1ce, t1, t2]
    cases = [f"Q_{i:03d}" for i in range(40)]
    table = quality.write_mr2468_availability(tmp_path, cases, channels, seed=0)
    masks = np.array([table[c] for c in cases])
    missing = dict(zip(channels, 1 - masks.mean(0)))
    # published realised rates: FLAIR 59 %, T1ce 38 %, T1 16 %, T2 80 % missing
    for name, rate in {"FLAIR": 0.59, "T1ce": 0.38, "T1": 0.16, "T2": 0.80}.items():
        assert abs(missing[name] - rate) < 0.025, (name, missing[name])
    assert len({tuple(m) for m in masks}) == 15 and masks.any(1).all()
    header, first = (tmp_path / "modality_availability.csv").read_text().splitlines()[:2]
    assert header == "case_id,T1,T1ce,T2,FLAIR" and first.startswith("Q_000,")
    (tmp_path / "again").mkdir()
    again = quality.write_mr2468_availability(tmp_path / "again", cases, channels, seed=0)
    assert all((again[c] == table[c]).all() for c in cases)


def test_quality_configuration_resolves_through_nnunet_plans(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    arch = {"network_class_name": "PlainConvUNet", "arch_kwargs": {"n_stages": 3, "features_per_stage": [32, 64, 128]},
            "_kw_requires_import": []}
    plans_file = tmp_path / "nnUNetPlans.json"
    plans_file.write_text(json.dumps({"configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [28, 32, 28], "batch_size": 5,
        "architecture": arch}}}))
    quality.add_quality_configuration(plans_file, features=16, batch_size=2)
    quality.add_quality_configuration(plans_file, features=16, batch_size=2)  # idempotent
    plans = json.loads(plans_file.read_text())
    resolved = PlansManager(plans).get_configuration(quality.CONFIGURATION)
    assert resolved.batch_size == 2 and list(resolved.patch_size) == [28, 32, 28]
    assert resolved.network_arch_init_kwargs["features_per_stage"] == [16, 32, 64]
    assert resolved.data_identifier == "nnUNetPlans_3d_fullres"  # reuses 3d_fullres' preprocessed data


def test_resuming_with_other_settings_is_refused(tmp_path):
    args = quality.build_parser().parse_args(["--work-dir", str(tmp_path)])
    quality.check_settings(tmp_path, args)
    quality.check_settings(tmp_path, args)  # same settings: fine
    args.epochs += 1
    with pytest.raises(quality.UsageError, match="epochs"):
        quality.check_settings(tmp_path, args)


def test_full_size_plans_train_nnunets_own_configuration_with_records_of_their_own(tmp_path, capsys):
    default = quality.build_parser().parse_args(["--work-dir", str(tmp_path / "quality"), "--epochs", "200"])
    full = quality.build_parser().parse_args(["--work-dir", str(tmp_path / "full"), "--epochs", "200",
                                              "--full-size-plans"])
    assert "full_size_plans" not in quality.settings_of(default)  # names of the existing records unchanged
    assert quality.records_folder(Path(), quality.settings_of(default)).name == \
        "train120-test10-6mm-data0-width16-batch2-200x25-val4"
    assert quality.records_folder(Path(), quality.settings_of(full)).name == "train120-test10-6mm-data0-fullsize-200x25-val4"
    for args, configuration in ((default, "3d_quality"), (full, "3d_fullres")):
        quality.check_settings(args.work_dir, args)
        assert quality.model_folder(args.work_dir, "nnUNetTrainerDMAF", 1).parent.name == \
            f"nnUNetTrainerDMAF__nnUNetPlans__{configuration}"
    full.work_dir = default.work_dir  # a 3d_quality work dir is not resumed with the full-size plans
    with pytest.raises(quality.UsageError, match="full_size_plans None -> True"):
        quality.check_settings(full.work_dir, full)
    with pytest.raises(quality.UsageError, match="--full-size-plans"):
        quality.main(["--work-dir", str(tmp_path / "x"), "--full-size-plans", "--features", "32"])
    # --report-only takes the plans from the work dir, not from the flag
    assert quality.main(["--work-dir", str(default.work_dir), "--epochs", "200", "--report-only", "--no-docs",
                         "--full-size-plans", "--records", str(tmp_path / "records")]) is None
    assert f"run records: {tmp_path / 'records' / 'train120-test10-6mm-data0-width16-batch2-200x25-val4'}\n" in \
        capsys.readouterr().out


def fake_finished_run(work_dir: Path, trainer: str, seed: int, dice: float) -> None:
    """What a finished (trainer, seed) leaves in a work dir: its evaluation summary, curves, provenance."""
    regions = ["whole tumor", "tumor core", "enhancing tumor"]
    rows = [{"subset": s, **{f"Dice {r}": dice for r in regions}} for s in ("T1", "T2", "FLAIR", "T1+T2")]
    summary = quality.evaluation_summary(work_dir, trainer, seed)
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"metadata": {"regions": regions}, "subsets": rows,
                                   "mean_over_subsets": {f"Dice {r}": dice for r in regions}}))
    curves = work_dir / "curves" / f"{trainer}_seed{seed}.json"
    curves.parent.mkdir(parents=True, exist_ok=True)
    curves.write_text(json.dumps({"epoch_seconds": [60.0, 60.0], "train_losses": [0.5, 0.4], "mean_fg_dice": [0.1, 0.2],
                                  "dice_per_class_or_region": [[0.1], [0.2]]}))
    quality.note_code_version(work_dir, trainer, seed, "trained")


def test_run_records_keep_results_when_the_work_dir_is_gone(tmp_path):
    work_dir, records_root = tmp_path / "work", tmp_path / "records"
    args = quality.build_parser().parse_args(["--work-dir", str(work_dir), "--num-training", "120", "--epochs", "100"])
    quality.check_settings(work_dir, args)
    records = quality.records_folder(records_root, quality.settings_of(args))
    assert records.name == "train120-test10-6mm-data0-width16-batch2-100x25-val4"
    for seed, dice in ((0, 0.6), (1, 0.7)):
        fake_finished_run(work_dir, "nnUNetTrainerChannelDropout", seed, dice)
    results = quality.collect(work_dir, records, ["nnUNetTrainerChannelDropout"], [0, 1, 2])
    assert sorted(results["nnUNetTrainerChannelDropout"]) == [0, 1]
    record = json.loads(quality.record_path(records, "nnUNetTrainerChannelDropout", 1).read_text())
    assert record["settings"]["num_training"] == 120 and record["code"]["trained"] == [quality.code_version()]
    assert record["curves"]["epoch_seconds"] == [60.0, 60.0]

    shutil.rmtree(work_dir)  # a later session: the work dir is gone, the records are committed
    again = quality.collect(work_dir, records, ["nnUNetTrainerChannelDropout"], [0, 1, 2])
    assert again == results
    table = quality.report(again, args)
    assert "| (b) (a) + channel dropout | 0,1 | 2.0 |" in table and "**0.650 ± 0.071**" in table
    assert f"trained with {quality.code_version()}" in table
    # a recorded run is not trained again (here it would fail: the work dir holds no data)
    quality.run_one(work_dir, records, "nnUNetTrainerChannelDropout", 0, args)
    assert not work_dir.exists()


def per_case_record(dice_per_case: list[float]) -> dict:
    """A run record whose evaluation has one subset row and one per-case row per test case."""
    regions = ["whole tumor", "tumor core", "enhancing tumor"]
    mean = {f"Dice {r}": float(np.mean(dice_per_case)) for r in regions}
    per_case = [{"subset": "T2", "case": f"case_{i}", **{f"Dice {r}": d for r in regions}}
                for i, d in enumerate(dice_per_case)]
    return {"summary": {"metadata": {"regions": regions}, "subsets": [{"subset": "T2", **mean}],
                        "mean_over_subsets": mean, "per_case": per_case}}


def test_target_check_compares_the_same_test_cases_pairwise():
    baseline = np.linspace(0.5, 0.7, 10)
    results = {"nnUNetTrainerChannelDropout": {s: per_case_record(list(baseline)) for s in (0, 1)},
               "nnUNetTrainerDMAF": {0: per_case_record(list(baseline + 0.05)),
                                     1: per_case_record(list(baseline + 0.03 - 0.1 * (np.arange(10) == 0)))}}
    lines = quality.target_check(results, ["T2"])
    # per case, mean over seeds: +0.04 on nine cases, -0.01 on case 0 (+0.05, -0.07): 9 of 10 above, W- = 1
    paired = [line for line in lines if line.startswith("- per test case")]
    assert paired == ["- per test case (Dice over regions, subsets and seeds): above the baseline on 9 of 10 cases, "
                      "mean difference +0.035, Wilcoxon signed-rank p = 0.0039"]
    results["nnUNetTrainerDMAF"] = {0: per_case_record([0.9])}  # one test case: nothing to pair
    assert not [line for line in quality.target_check(results, ["T2"]) if line.startswith("- per test case")]


def test_whole_target_needs_the_mean_margin_and_the_rare_subsets():
    results = {"nnUNetTrainerChannelDropout": {s: per_case_record([0.50 + 0.01 * s] * 10) for s in (0, 1, 2)},
               "nnUNetTrainerDMAF": {s: per_case_record([0.60 + 0.01 * s] * 10) for s in (0, 1, 2)}}
    lines = quality.target_check(results, ["T2"])
    assert lines[0].endswith("difference +0.100, 2 x seed std 0.020: met")
    assert lines[-1] == "- whole target: **met**"
    results["nnUNetTrainerDMAF"] = {s: per_case_record([0.45 + 0.01 * s] * 10) for s in (0, 1, 2)}
    lines = quality.target_check(results, ["T2"])  # T2 alone is the one subset: below the baseline
    assert lines[0].endswith(": not met") and "- T2 alone: 0.460 vs 0.510 (below the baseline)" in lines
    assert lines[-1] == "- whole target: **not met** (T2 alone below the baseline)"


def test_plateau_is_the_change_over_the_last_tenth_of_the_schedule():
    rising = np.linspace(0.2, 0.7, 100)  # still rising at the end: not converged
    end, change = quality.plateau(rising)
    assert end == pytest.approx(rising[90:].mean()) and change == pytest.approx(rising[90:].mean() - rising[80:90].mean())
    assert change > 0.04
    flat = np.concatenate([np.linspace(0.2, 0.7, 150), np.full(50, 0.7)])  # plateau over the last 50 of 200 epochs
    assert quality.plateau(flat) == pytest.approx((0.7, 0.0))
    assert np.isnan(quality.plateau([0.3])[1])  # one epoch: nothing to compare against


def test_other_settings_get_their_own_docs_block_and_figures(tmp_path):
    default = quality.settings_of(quality.build_parser().parse_args([]))
    longer = quality.settings_of(quality.build_parser().parse_args(["--epochs", "200"]))
    assert quality.docs_variant(default) == ""
    variant = quality.docs_variant(longer)
    assert variant == "train120-test10-6mm-data0-width16-batch2-200x25-val4"
    begin, end = quality.docs_markers(variant)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("\n".join(["intro", quality.DOCS_BEGIN, "old 100", quality.DOCS_END, "between", begin, "old 200",
                               end, "outro"]) + "\n")
    quality.write_docs(tmp_path, "new 200\n", variant)
    quality.write_docs(tmp_path, "new 100\n")
    assert docs.read_text().split("\n") == ["intro", quality.DOCS_BEGIN, "new 100", quality.DOCS_END, "between", begin,
                                            "new 200", end, "outro", ""]
    with pytest.raises(quality.UsageError, match="no quality block"):  # no place for a new block
        quality.write_docs(tmp_path, "x\n", quality.docs_variant({**longer, "epochs": 300}))
    docs.write_text(docs.read_text() + quality.DOCS_NEW_BLOCK_BEFORE + "\nconclusions\n")
    new = quality.docs_variant({**longer, "epochs": 300})  # its first run: a new section before the conclusions
    quality.write_docs(tmp_path, "new 300\n", new)
    quality.write_docs(tmp_path, "newer 300\n", new)
    begin300, end300 = quality.docs_markers(new)
    assert docs.read_text().endswith(f"outro\n### Results: {new}\n\n{begin300}\nnewer 300\n{end300}\n\n"
                                     f"{quality.DOCS_NEW_BLOCK_BEFORE}\nconclusions\n")
    results = {"nnUNetTrainerChannelDropout": {0: {"summary": per_case_record([0.5, 0.6])["summary"], "curves": {
        "train_losses": [0.5, 0.4], "mean_fg_dice": [0.1, 0.2], "dice_per_class_or_region": [[0.1], [0.2]]}}}}
    names = [p.name for p in quality.plot(results, tmp_path / "figures", 24, variant)]
    assert names == [f"quality_subsets_{variant}.png", f"quality_curves_{variant}.png"]


def write_labels(folder: Path, labels_per_case: dict[str, list[int]]) -> None:
    """Tiny reference label maps (labelsTs) holding the given label values."""
    import SimpleITK as sitk
    folder.mkdir(parents=True)
    for case, values in labels_per_case.items():
        image = np.zeros((2, 2, 2), dtype=np.uint8)
        image.flat[:len(values)] = values
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / f"{case}.nii.gz"))


def test_table_without_empty_references_leaves_no_et_cases_out_of_et_only(tmp_path):
    regions = {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    # case_1: no ET in its reference
    write_labels(tmp_path / "raw" / quality.DATASET / "labelsTs", {"case_0": [0, 1, 2, 3], "case_1": [0, 1, 2]})
    skipped = quality.cases_without_region(tmp_path, regions, ["case_0", "case_1"], 12.0, 0)
    assert skipped == {"whole tumor": set(), "tumor core": set(), "enhancing tumor": {"case_1"}}
    assert quality.cases_without_region(tmp_path, regions, [], 12.0, 0) is None
    assert quality.cases_without_region(tmp_path, list(regions), ["case_0"], 12.0, 0) is None  # no label ids

    # case_1's ET is the 0/1 of an empty reference; the run's WT/TC are 0.8 on both cases, ET 0.6 on case_0
    rows = [{"subset": s, "case": c, "Dice whole tumor": 0.8, "Dice tumor core": 0.8, "Dice enhancing tumor": et}
            for s, et1 in (("T2", 0.0), ("FLAIR", 1.0)) for c, et in (("case_0", 0.6), ("case_1", et1))]
    summary = {"metadata": {"regions": regions, "cases": ["case_0", "case_1"]}, "per_case": rows,
               "subsets": [{"subset": s, "Dice whole tumor": 0.8, "Dice tumor core": 0.8, "Dice enhancing tumor": et}
                           for s, et in (("T2", 0.3), ("FLAIR", 0.8))],
               "mean_over_subsets": {"Dice whole tumor": 0.8, "Dice tumor core": 0.8, "Dice enhancing tumor": 0.55}}
    everything = quality.subset_dice_without(summary, {})
    for subset, scores in quality.subset_dice(summary).items():  # nothing skipped: the evaluation's own means
        assert everything[subset] == pytest.approx(scores)
    without = quality.subset_dice_without(summary, skipped)
    assert without["T2"] == pytest.approx({"whole tumor": 0.8, "tumor core": 0.8, "enhancing tumor": 0.6,
                                           "mean": 2.2 / 3})
    assert without["mean over subsets"]["enhancing tumor"] == pytest.approx(0.6)

    results = {"nnUNetTrainerDMAF": {0: {"summary": summary, "code": {"trained": ["abc"], "evaluated": ["abc"]},
                                         "curves": {"epoch_seconds": [60.0], "mean_fg_dice": [0.5]}}}}
    row = "| (c) DMAF-Net | 0 | 0.800 | 0.800 | 0.600 | **0.733** | 0.733 | 0.733 |"
    lines = quality.without_empty_references(results, ["nnUNetTrainerDMAF"], skipped)
    assert "enhancing tumor: case_1;" in lines[0] and lines[-2] == row
    assert quality.without_empty_references(results, ["nnUNetTrainerDMAF"], {"enhancing tumor": set()}) == []
    # the report reads the work dir's references and adds the table after the first overview
    report = quality.report(results, quality.build_parser().parse_args(["--work-dir", str(tmp_path)]))
    assert "| (c) DMAF-Net | 0 | 1.0 | 0.800 | 0.800 | 0.550 | **0.717** |" in report
    assert "Without empty references (test cases left out of a region whose reference lacks it: enhancing tumor: " \
           "case_1;" in report and f"\n{row}\n" in report
    without_rows = {"nnUNetTrainerDMAF": {0: {"summary": {**summary, "per_case": []}}}}
    assert quality.without_empty_references(without_rows, ["nnUNetTrainerDMAF"], skipped)[0].startswith(
        "(No run record has per-case rows")


def test_references_without_the_work_dir_are_regenerated_from_the_seeded_generator(tmp_path):
    from nnunetv2_dmaf import anatomical_phantom
    try:
        anatomical_phantom.template_folder()
    except anatomical_phantom.TemplateNotFoundError as e:  # nilearn is in the "test" extra
        pytest.skip(str(e))
    regions = {"whole tumor": [1, 2, 3], "enhancing tumor": [3]}
    regenerated = quality.cases_without_region(tmp_path / "gone", regions, ["Q_002", "Q_003"], 12.0, 0)
    assert regenerated == {"whole tumor": set(), "enhancing tumor": {"Q_003"}}  # every 4th case has no ET


def test_records_keep_the_empty_references_for_the_report_without_the_work_dir(tmp_path):
    work_dir, records = tmp_path / "work", tmp_path / "records"
    args = quality.build_parser().parse_args(["--work-dir", str(work_dir)])
    quality.check_settings(work_dir, args)
    regions = {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    write_labels(work_dir / "raw" / quality.DATASET / "labelsTs", {"case_0": [0, 1, 2, 3], "case_1": [0, 1, 2]})
    for seed in (0, 1):
        fake_finished_run(work_dir, "nnUNetTrainerDMAF", seed, 0.8)
        path = quality.evaluation_summary(work_dir, "nnUNetTrainerDMAF", seed)
        summary = json.loads(path.read_text())
        summary["metadata"] = {"regions": regions, "cases": ["case_0", "case_1"]}
        summary["per_case"] = [{"subset": row["subset"], "case": case, **{k: v for k, v in row.items() if k != "subset"}}
                               for row in summary["subsets"] for case in ("case_0", "case_1")]
        path.write_text(json.dumps(summary))
    results = quality.collect(work_dir, records, ["nnUNetTrainerDMAF"], [0, 1])
    assert results["nnUNetTrainerDMAF"][1]["empty_references"] == {
        "whole tumor": [], "tumor core": [], "enhancing tumor": ["case_1"]}

    shutil.rmtree(work_dir)  # no labels left; regenerating would give other references (or none)
    again = quality.collect(work_dir, records, ["nnUNetTrainerDMAF"], [0, 1])
    assert quality.recorded_empty_references(again) == {"whole tumor": set(), "tumor core": set(),
                                                        "enhancing tumor": {"case_1"}}
    assert "left out of a region whose reference lacks it: enhancing tumor: case_1;" in quality.report(again, args)
    again["nnUNetTrainerDMAF"][1]["empty_references"] = {"enhancing tumor": []}
    with pytest.raises(quality.DataError, match="nnUNetTrainerDMAF seed 0 and nnUNetTrainerDMAF seed 1 disagree"):
        quality.recorded_empty_references(again)
    del again["nnUNetTrainerDMAF"][1]["empty_references"]  # an older record: the references are looked up
    assert quality.recorded_empty_references(again) is None


def test_records_of_one_data_setting_refuse_a_work_dir_with_other_data(tmp_path):
    import SimpleITK as sitk
    from nnunetv2_dmaf import anatomical_phantom
    try:
        anatomical_phantom.template_folder()
    except anatomical_phantom.TemplateNotFoundError as e:  # nilearn is in the "test" extra
        pytest.skip(str(e))
    records = tmp_path / "records" / "train2-test1-12mm-data0-width16-batch2-100x25-val4"
    table = {"DMAFQuality_000": [True, True, False, True], "DMAFQuality_001": [True, False, True, False]}

    def work_dir(name: str, data_seed: int = 0, table: dict[str, list[bool]] = table,
                 change: Callable[[Path], None] | None = None) -> Path:
        """A work dir of 2 + 1 generated cases at 12 mm (settings.json, raw data, table), then ``change``d."""
        args = quality.build_parser().parse_args(["--work-dir", str(tmp_path / name), "--num-training", "2",
                                                  "--num-test", "1", "--spacing", "12"])
        quality.check_settings(tmp_path / name, args)
        raw = anatomical_phantom.generate_dataset(tmp_path / name / "raw", quality.DATASET_ID, quality.DATASET_NAME,
                                                  2, 1, 12.0, data_seed)
        quality.write_availability_table(quality.availability_table_path(raw), table, anatomical_phantom.CHANNEL_NAMES)
        if change is not None:
            change(raw)
        return tmp_path / name

    def rewrite(path: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
        image = sitk.ReadImage(str(path))
        changed = sitk.GetImageFromArray(edit(sitk.GetArrayFromImage(image)))
        changed.CopyInformation(image)
        sitk.WriteImage(changed, str(path))

    def refused(match: str, **kwargs) -> None:
        with pytest.raises(quality.DataError, match=match):
            quality.check_data(records, work_dir(f"case{len(list(tmp_path.iterdir()))}", **kwargs))

    first = work_dir("first")
    quality.check_data(records, first)  # the first run of the data setting stores the fingerprint
    path = quality.data_path(records, first)
    assert path == tmp_path / "records" / "data-train2-test1-12mm-data0.json"
    stored = json.loads(path.read_text())
    assert len(stored["files"]) == 3 * 5 and stored["availability"][0] == "case_id,T1,T1ce,T2,FLAIR"
    quality.check_data(records, work_dir("regenerated"))  # a later session's work dir: the same data
    assert json.loads(path.read_text()) == stored

    def flip_one_label_voxel(raw: Path) -> None:  # a last-bit difference at a threshold: tolerated
        def edit(labels: np.ndarray) -> np.ndarray:
            labels.flat[np.flatnonzero(labels == 1)[0]] = 0
            return labels
        rewrite(raw / "labelsTr" / "DMAFQuality_000.nii.gz", edit)
    quality.check_data(records, work_dir("one_voxel", change=flip_one_label_voxel))

    refused("not the data the run records of data-train2-test1-12mm-data0.json were made on .*", data_seed=1)
    refused(r"availability table line 2: 'DMAFQuality_000,1,1,0,1' in the records, 'DMAFQuality_000,1,0,1,1'",
            table={case: mask[::-1] for case, mask in table.items()})
    refused(r"imagesTs/DMAFQuality_002_0002.nii.gz: intensities centred at .* in the work dir \(voxels\)",
            change=lambda raw: rewrite(raw / "imagesTs" / "DMAFQuality_002_0002.nii.gz", lambda a: a[:, :, ::-1]))
    refused(r"imagesTr/DMAFQuality_001_0003.nii.gz: intensity mean",
            change=lambda raw: rewrite(raw / "imagesTr" / "DMAFQuality_001_0003.nii.gz", lambda a: a * 1.01))
    def halve_the_edema(labels: np.ndarray) -> np.ndarray:
        labels.flat[np.flatnonzero(labels == 1)[::2]] = 0
        return labels
    refused(r"labelsTs/DMAFQuality_002.nii.gz: \d+ voxels of label 0 in the records",
            change=lambda raw: rewrite(raw / "labelsTs" / "DMAFQuality_002.nii.gz", halve_the_edema))
    refused(r"incomplete \(imagesTr does not hold the 4 channels .*: imagesTr/DMAFQuality_001_0001.nii.gz is missing\)",
            change=lambda raw: (raw / "imagesTr" / "DMAFQuality_001_0001.nii.gz").unlink())

    other = work_dir("recorded_elsewhere", data_seed=1)
    fake_finished_run(other, "nnUNetTrainerDMAF", 0, 0.8)
    with pytest.raises(quality.DataError, match="not the data the run records"):
        quality.write_record(other, records, "nnUNetTrainerDMAF", 0)
    shutil.rmtree(other / "raw")
    with pytest.raises(quality.DataError, match="no generated data left to check against"):
        quality.write_record(other, records, "nnUNetTrainerDMAF", 0)
    assert not quality.record_path(records, "nnUNetTrainerDMAF", 0).exists()
    # the last bits of the floating point generator may differ between machines: not a difference
    close = json.loads(json.dumps(stored))
    close["files"]["imagesTr/DMAFQuality_000_0000.nii.gz"]["mean"] *= 1 + 1e-5
    assert quality.data_difference(stored, close) is None


def test_the_benchmark_checks_the_data_before_it_plans_and_trains(tmp_path, monkeypatch):
    work_dir, records = tmp_path / "work", tmp_path / "records"
    argv = ["--work-dir", str(work_dir), "--records", str(records), "--no-docs"]
    (records / "data-train120-test10-6mm-data0.json").parent.mkdir(parents=True)
    (records / "data-train120-test10-6mm-data0.json").write_text(json.dumps(
        {"dataset": {"numTraining": 0}, "availability": None, "files": {}}))

    def generate(work_dir: Path, args) -> None:  # stands in for the generator: other data
        raw = work_dir / "raw" / quality.DATASET
        raw.mkdir(parents=True)
        (raw / "dataset.json").write_text(json.dumps({"numTraining": 0}))
        write_labels(raw / "labelsTs", {"case_0": [0, 1]})

    def plan(*args) -> None:
        raise AssertionError("planned data that are not the records' data")

    def run_all(*args) -> None:
        raise AssertionError("trained on data that are not the records' data")
    monkeypatch.setattr(quality, "generate", generate)
    monkeypatch.setattr(quality, "plan", plan)
    monkeypatch.setattr(quality, "run_all", run_all)
    with pytest.raises(quality.DataError, match=r"\(1 case file\(s\) on one side only, e.g. labelsTs/case_0.nii.gz\)"):
        quality.main(argv)


def test_readme_comparison_table_is_made_from_the_run_records(tmp_path):
    root = tmp_path / "records"
    (cpu_title, cpu_flags, _), (_, gpu_flags, _) = quality.README_COLUMNS
    cpu, gpu = (quality.records_folder(root, quality.settings_of(quality.build_parser().parse_args(list(flags))))
                for flags in (cpu_flags, gpu_flags))
    for folder, trainer, seed, dice in ((cpu, "nnUNetTrainerZeroFilled", 0, 0.6), (cpu, "nnUNetTrainerZeroFilled", 1, 0.7),
                                        (cpu, "nnUNetTrainerDMAF", 0, 0.8), (cpu, "nnUNetTrainerDMAF", 1, 0.9),
                                        (cpu, "nnUNetTrainerDMAF_noDTM", 0, 1.0), (gpu, "nnUNetTrainerDMAF", 3, 0.5)):
        work_dir = tmp_path / "work" / folder.name
        fake_finished_run(work_dir, trainer, seed, dice)
        folder.mkdir(parents=True, exist_ok=True)
        quality.record_path(folder, trainer, seed).write_text(json.dumps(
            {"summary": json.loads(quality.evaluation_summary(work_dir, trainer, seed).read_text()),
             "curves": json.loads((work_dir / "curves" / f"{trainer}_seed{seed}.json").read_text()),
             "code": {"trained": ["abc"], "evaluated": ["abc"]}}))
    lines = quality.readme_summary(root).splitlines()
    assert lines[0].startswith(f"| trainer | {cpu_title}: seeds | mean over 15 subsets | T2 alone | FLAIR alone |")
    # an ablation's record (noDTM, 1.0) is not a row; the best value of each column is bold
    assert lines[2:] == ["| `nnUNetTrainerZeroFilled` | 2 | 0.650 ± 0.071 | 0.650 | 0.650 | not run |  |  |",
                         "| `nnUNetTrainerChannelDropout` | not run |  |  |  | not run |  |  |",
                         "| `nnUNetTrainerDMAF` | 2 | **0.850 ± 0.071** | **0.850** | **0.850** | 1 | **0.500** | **0.500** |",
                         "| `nnUNetTrainerDMAF_singleModalityFusion_025` | not run |  |  |  | not run |  |  |"]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{quality.README_BEGIN}\nold table\n{quality.README_END}\noutro\n")
    quality.write_readme(readme, "new table\n")
    assert readme.read_text() == f"intro\n{quality.README_BEGIN}\nnew table\n{quality.README_END}\noutro\n"
    # writing the docs from the records remakes the README's table too
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text(f"{quality.DOCS_NEW_BLOCK_BEFORE}\n")
    quality.main(["--work-dir", str(tmp_path / "gone"), "--epochs", "400", "--report-only", "--records", str(root),
                  "--docs-dir", str(docs), "--readme", str(readme)])
    assert readme.read_text() == f"intro\n{quality.README_BEGIN}\n" + "\n".join(lines) + f"\n{quality.README_END}\noutro\n"
    readme.write_text("no block\n")
    with pytest.raises(quality.UsageError, match="no quality summary block"):
        quality.write_readme(readme, "new table\n")
    with pytest.raises(quality.UsageError, match="no run record of the README's trainers"):
        quality.readme_summary(tmp_path / "elsewhere")


def test_every_benchmark_trainer_is_found_by_nnunets_trainer_lookup():
    code = ("import sys; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
            "[print('found', f(n).__name__) for n in sys.argv[1:]]")  # nnU-Net prints its search too
    out = subprocess.run([sys.executable, "-c", code, *quality.TRAINERS], capture_output=True, text=True, check=True)
    found = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("found ")]
    assert found == list(quality.TRAINERS)

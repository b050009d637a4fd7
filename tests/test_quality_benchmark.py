"""benchmarks/quality.py building blocks (no training): the mr2468 availability table and the plans variant."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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

"""Modality dropout: configuration parsing, mask sampling, the transform, the data loader collation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_dmaf.availability import write_availability_table
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2_dmaf.training.channel_presence import ChannelPresenceTransform
from nnunetv2_dmaf.training.data_loader import DMAFDataLoader
from nnunetv2_dmaf.training.modality_dropout import (ENV_AVAILABILITY_TABLE, ENV_MISSING_RATES,
                                                     ModalityDropoutConfig, ModalityDropoutTransform,
                                                     load_dropout_config, parse_missing_rates,
                                                     sample_modality_mask)

NAMES = ("T1", "T1ce", "T2", "FLAIR")
DATASET_JSON = {"channel_names": {str(i): n for i, n in enumerate(NAMES)}}


def test_rates_are_mapped_by_name_case_insensitively():
    rates = parse_missing_rates("flair:0.6, T1=0.2", NAMES)
    np.testing.assert_allclose(rates, [0.2, 0.0, 0.0, 0.6])
    np.testing.assert_allclose(parse_missing_rates({"T2": 1.0}, NAMES), [0, 0, 1.0, 0])
    np.testing.assert_allclose(parse_missing_rates(None, NAMES), [0, 0, 0, 0])


@pytest.mark.parametrize("spec,message", [
    ("DWI:0.5", "is not a channel name"),
    ("FLAIR:1.5", "must be in [0, 1]"),
    ("FLAIR:-0.1", "must be in [0, 1]"),
    ("FLAIR:abc", "is not a number"),
    ("FLAIR 0.5", "NAME:RATE"),
    ("FLAIR:0.2,flair:0.3", "given twice"),
    ("T1:1,T1ce:1,T2:1,FLAIR:1", "at least one modality"),
])
def test_bad_rates_give_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_missing_rates(spec, NAMES)


def test_unknown_name_error_lists_channel_names():
    with pytest.raises(ValueError, match="FLAIR"):
        parse_missing_rates("DWI:0.5", NAMES)


def test_sampled_masks_never_empty_and_follow_rates():
    rng = np.random.default_rng(0)
    rates = torch.tensor([0.9, 1.0, 0.0, 0.5])
    masks = torch.stack([sample_modality_mask(torch.ones(4, dtype=torch.bool), rates, rng) for _ in range(4000)])
    assert masks.any(1).all()
    assert not masks[:, 1].any()  # rate 1.0: never present
    assert masks[:, 2].all()  # rate 0: always present
    np.testing.assert_allclose(1 - masks.float().mean(0).numpy(), [0.9, 1.0, 0.0, 0.5], atol=0.03)


def test_extreme_rates_resample_instead_of_emptying():
    rng = np.random.default_rng(1)
    rates = torch.tensor([0.99, 0.99, 1.0, 1.0])
    masks = torch.stack([sample_modality_mask(torch.ones(4, dtype=torch.bool), rates, rng) for _ in range(300)])
    assert masks.any(1).all() and not masks[:, 2:].any()
    # only rate-1 modalities available: the case keeps what it has
    available = torch.tensor([False, False, True, False])
    assert torch.equal(sample_modality_mask(available, rates, rng), available)


def test_transform_rates_mode_zeroes_dropped_channels():
    np.random.seed(0)
    image = torch.rand(4, 6, 6, 6) + 1
    out = ModalityDropoutTransform([1.0, 0.0, 0.0, 0.0])(image=image.clone(), segmentation=torch.zeros(1, 6, 6, 6))
    assert out["modality_mask"].dtype == torch.bool and out["modality_mask"].tolist() == [False, True, True, True]
    assert out["available_mask"].all()
    assert (out["image"][0] == 0).all() and torch.equal(out["image"][1:], image[1:])


def test_transform_table_mode_uses_case_rows():
    table = {"a": np.array([1, 0, 1, 1], bool), "b": np.array([0, 0, 0, 1], bool)}
    transform = ModalityDropoutTransform(np.zeros(4), table)
    for case_id, row in table.items():
        out = transform(image=torch.ones(4, 5, 5, 5), case_id=case_id)
        assert out["modality_mask"].tolist() == row.tolist() == out["available_mask"].tolist()
        assert torch.equal(out["image"].flatten(1).amax(1) > 0, torch.from_numpy(row))
    with pytest.raises(KeyError, match="not in the availability table"):
        transform(image=torch.ones(4, 5, 5, 5), case_id="zzz")
    with_rates = ModalityDropoutTransform([0.5, 0.5, 0.5, 0.5], table)
    for _ in range(50):
        out = with_rates(image=torch.ones(4, 5, 5, 5), case_id="a")
        assert out["available_mask"].tolist() == table["a"].tolist()
        assert not (out["modality_mask"] & ~out["available_mask"]).any() and out["modality_mask"].any()
        assert torch.equal(out["image"].flatten(1).amax(1) > 0, out["modality_mask"])


def test_presence_is_read_before_augmentation():
    """A zero-filled channel counts as missing even after augmentation made it non-zero."""
    image = torch.rand(4, 6, 6, 6) + 1
    image[2] = 0
    pipeline = ComposeTransforms([ChannelPresenceTransform(), _AddNoise(), ModalityDropoutTransform(np.zeros(4))])
    out = pipeline(image=image.clone())
    assert out["modality_mask"].tolist() == [True, True, False, True]
    assert (out["image"][2] == 0).all() and (out["image"][[0, 1, 3]] != image[[0, 1, 3]]).any()
    everything_zero = pipeline(image=torch.zeros(4, 6, 6, 6))  # a background patch: nothing to tell apart
    assert everything_zero["modality_mask"].all()


def test_validation_subset_is_fixed_per_case_and_follows_rates():
    transform = ModalityDropoutTransform([0.5, 0.5, 0.5, 0.5], fixed_per_case=True)
    masks = {}
    for case in [f"case_{i}" for i in range(200)]:
        first = transform(image=torch.ones(4, 3, 3, 3), case_id=case)["modality_mask"]
        again = transform(image=torch.ones(4, 3, 3, 3), case_id=case)["modality_mask"]
        assert torch.equal(first, again) and first.any()
        masks[case] = first
    stacked = torch.stack(list(masks.values())).float()
    assert 0.4 < 1 - stacked.mean() < 0.6  # realised missing fraction near the rate
    assert len({tuple(m.tolist()) for m in masks.values()}) == 15  # different cases, different subsets


class _AddNoise(BasicTransform):
    def apply(self, data_dict, **params):
        data_dict["image"] = data_dict["image"] + 0.01 * torch.randn_like(data_dict["image"])
        return data_dict


def _write_table(path, columns, rows):
    path.write_text(",".join(["case_id", *columns]) + "\n" + "".join(
        ",".join([k, *map(str, v)]) + "\n" for k, v in rows.items()))
    return path


def test_config_from_environment_and_table(tmp_path):
    raw = tmp_path / "raw" / "Dataset990_X"
    raw.mkdir(parents=True)
    env = {"nnUNet_raw": str(tmp_path / "raw"), ENV_MISSING_RATES: "FLAIR:0.6,T1:0.2"}
    config = load_dropout_config(DATASET_JSON, "Dataset990_X", env)
    assert config.mode == "rates" and config.rates_by_name()["FLAIR"] == 0.6

    # auto-discovered table in the raw dataset folder, columns in another order than the channels
    _write_table(raw / "modality_availability.csv", ["flair", "T2", "t1ce", "T1"],
                 {"c1": [1, 0, 0, 0], "c2": [0, 1, 1, 1]})
    config = load_dropout_config(DATASET_JSON, "Dataset990_X", env)
    assert config.mode == "table+rates" and config.table_path.endswith("modality_availability.csv")
    assert config.availability["c1"].tolist() == [False, False, False, True]
    assert config.availability["c2"].tolist() == [True, True, True, False]
    assert "table+rates" in config.describe()
    with pytest.raises(ValueError, match="no row for 1 case"):
        config.check_cases(["c1", "c2", "c3"])

    assert load_dropout_config(DATASET_JSON, "Dataset990_X", {**env, ENV_AVAILABILITY_TABLE: "none"}).mode == "rates"
    other = write_availability_table(tmp_path / "other.csv", {"c9": [True, False, True, True]}, NAMES)
    config = load_dropout_config(DATASET_JSON, "Dataset990_X", {ENV_AVAILABILITY_TABLE: str(other)})
    assert config.mode == "table" and list(config.availability) == ["c9"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dropout_config(DATASET_JSON, "Dataset990_X", {ENV_AVAILABILITY_TABLE: str(tmp_path / "nope.csv")})
    with pytest.raises(ValueError, match=ENV_MISSING_RATES):
        load_dropout_config(DATASET_JSON, "Dataset990_X", {ENV_MISSING_RATES: "DWI:0.3"})


def test_config_record_round_trip():
    config = ModalityDropoutConfig(NAMES, np.array([0.2, 0, 0, 0.6]), {"a": np.array([1, 1, 0, 1], bool)}, "t.csv")
    restored = ModalityDropoutConfig.from_dict(config.to_dict())
    assert restored.same_setup(config) and restored.mode == "table+rates"
    assert not restored.same_setup(ModalityDropoutConfig(NAMES, np.array([0.2, 0, 0, 0.5])))


class _FakeDataset:
    """Just enough of nnUNetBaseDataset for nnUNetDataLoader: case i has all channels = i + 1."""

    def __init__(self, identifiers):
        self.identifiers = list(identifiers)

    def load_case(self, identifier):
        value = self.identifiers.index(identifier) + 1
        data = np.full((4, 8, 8, 8), value, dtype=np.float32)
        seg = np.zeros((1, 8, 8, 8), dtype=np.int16)
        return data, seg, None, {"class_locations": {1: np.zeros((0, 4), dtype=int)}}


def test_data_loader_collates_masks_matching_the_table():
    table = {"a": np.array([1, 0, 1, 1], bool), "b": np.array([0, 1, 0, 0], bool), "c": np.array([1, 1, 1, 1], bool)}
    label_manager = LabelManager({"background": 0, "tumour": 1}, regions_class_order=None)
    loader = DMAFDataLoader(_FakeDataset(table), 5, (8, 8, 8), (8, 8, 8), label_manager,
                            transforms=ComposeTransforms([ModalityDropoutTransform(np.zeros(4), table)]))
    for _ in range(3):
        batch = next(loader)
        assert batch["modality_mask"].shape == (5, 4) and batch["modality_mask"].dtype == torch.bool
        for j, key in enumerate(batch["keys"]):
            assert batch["modality_mask"][j].tolist() == table[key].tolist()
            assert batch["available_mask"][j].tolist() == table[key].tolist()
            present = batch["data"][j].flatten(1).amax(1) > 0
            assert present.tolist() == table[key].tolist()
    plain = DMAFDataLoader(_FakeDataset(table), 2, (8, 8, 8), (8, 8, 8), label_manager,
                           transforms=ComposeTransforms([]))
    assert "modality_mask" not in next(plain)


def test_make_availability_table_script_is_reproducible(tmp_path, capsys):
    from nnunetv2_dmaf.availability import read_availability_table
    from nnunetv2_dmaf.demo_data import generate_demo_dataset
    from nnunetv2_dmaf.training.make_availability_table import main, sample_availability_table

    folder = generate_demo_dataset(tmp_path / "raw", 991, "Tab", num_training=6, num_test=0, shape=(8, 8, 8))
    main(["-d", str(folder), "-r", "flair:0.9,T1:0.5", "-s", "3"])
    table_file = folder / "modality_availability.csv"
    first = table_file.read_text()
    assert first.splitlines()[0] == "case_id,T1,T1ce,T2,FLAIR"
    table = read_availability_table(table_file, NAMES)
    assert sorted(table) == [f"Tab_{i:03d}" for i in range(6)] and all(m.any() for m in table.values())
    assert "missing fraction per modality" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # refuses to overwrite
        main(["-d", str(folder), "-r", "FLAIR:0.9", "-s", "3"])
    main(["-d", str(folder), "-r", "FLAIR:0.9,T1:0.5", "-s", "3", "--overwrite"])
    assert table_file.read_text() == first
    with pytest.raises(SystemExit):
        main(["-d", str(folder), "-r", "DWI:0.9", "-o", str(tmp_path / "x.csv")])
    assert "not a channel name" in capsys.readouterr().err

    ids = [f"c{i}" for i in range(2000)]
    big = sample_availability_table(ids, np.array([0.2, 0.4, 0.6, 0.8]), seed=1)
    masks = np.stack(list(big.values()))
    assert masks.any(1).all()
    rates = np.array([0.2, 0.4, 0.6, 0.8])
    conditional = (rates - rates.prod()) / (1 - rates.prod())  # P(dropped | not all dropped)
    np.testing.assert_allclose(1 - masks.mean(0), conditional, atol=0.03)
    assert sample_availability_table(ids[:50], np.array([0.5] * 4), 7).keys() == \
        sample_availability_table(ids[:50], np.array([0.5] * 4), 7).keys()

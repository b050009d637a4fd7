"""Channel file names: what this package writes is what nnU-Net's own folder readers find."""
from pathlib import Path

from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

from nnunetv2_dmaf.channel_files import CASE_FILE_PATTERN, cases_in_folder, channel_file_name


def test_nnunet_finds_the_channels_of_each_case_by_our_names(tmp_path: Path):
    cases = ["BraTS_001", "case_7_slice_12"]
    for case in cases:
        for channel in range(4):
            (tmp_path / channel_file_name(case, channel, ".nii.gz")).touch()
    assert list(get_identifiers_from_splitted_dataset_folder(str(tmp_path), ".nii.gz")) == sorted(cases)
    files = sorted(p.name for p in tmp_path.iterdir())
    for case in cases:
        found = create_paths_fn(str(tmp_path), files, ".nii.gz", case)
        assert [Path(f).name for f in found] == [f"{case}_{c:04d}.nii.gz" for c in range(4)]


def test_the_pattern_reads_back_case_and_channel():
    stem = channel_file_name("case_7_slice_12", 11, ".nii.gz")[:-len(".nii.gz")]
    match = CASE_FILE_PATTERN.fullmatch(stem)
    assert (match["case"], int(match["channel"])) == ("case_7_slice_12", 11)
    assert CASE_FILE_PATTERN.fullmatch("case_7_slice_12") is None  # no 4-digit channel suffix


def test_the_cases_of_a_folder_are_those_with_a_channel_0_file(tmp_path: Path):
    for name in ("B_7_0000.nii.gz", "B_7_0001.nii.gz", "A_0000.nii.gz", "C_0001.nii.gz", "D_0000.nii", "notes.txt"):
        (tmp_path / name).touch()
    assert cases_in_folder(tmp_path, ".nii.gz") == ["A", "B_7"]

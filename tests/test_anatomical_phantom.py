"""The quality benchmark's data generator: reproducible from its seed, real anatomy, BraTS layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("nibabel")
from nnunetv2_dmaf import anatomical_phantom as phantom  # noqa: E402

try:
    phantom.template_folder()
except phantom.TemplateNotFoundError as e:  # nilearn is in the "test" extra; skip cleanly without it
    pytest.skip(str(e), allow_module_level=True)

SPACING = 8.0  # coarse grid: ~20x25x21 voxels, a case takes well under a second


def test_case_is_reproducible_from_seed_and_index():
    images, labels = phantom.make_case(SPACING, seed=3, case_index=5)
    again_images, again_labels = phantom.make_case(SPACING, seed=3, case_index=5)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    other_seed, _ = phantom.make_case(SPACING, seed=4, case_index=5)
    other_case, _ = phantom.make_case(SPACING, seed=3, case_index=6)
    assert not np.allclose(images, other_seed) and not np.allclose(images, other_case)
    assert images.shape == (4, *phantom.output_shape(SPACING)) and images.dtype == np.float32
    assert labels.shape == images.shape[1:] and labels.dtype == np.uint8


def test_modalities_carry_complementary_tumour_information():
    images, labels = phantom.make_case(3.0, seed=0, case_index=0)
    channel = {name: images[i] for i, name in enumerate(phantom.CHANNEL_NAMES)}
    edema, necrosis, enhancing = (labels == k for k in (1, 2, 3))
    assert edema.any() and necrosis.any() and enhancing.any()
    brain = images[0] > 0
    healthy = brain & (labels == 0)

    def contrast(name: str, a: np.ndarray, b: np.ndarray) -> float:
        """Mean difference of two regions in units of the healthy-brain standard deviation."""
        return (channel[name][a].mean() - channel[name][b].mean()) / channel[name][healthy].std()

    assert contrast("T1ce", enhancing, edema) > 2.0  # the rim shows in T1ce ...
    for name in ("T1", "T2", "FLAIR"):  # ... and in no other channel
        assert abs(contrast(name, enhancing, edema)) < 0.8, name
    assert contrast("FLAIR", edema, healthy) > 1.5 and contrast("T2", edema, healthy) > 1.0
    assert contrast("T1", necrosis, edema) < -1.5 and contrast("T1ce", necrosis, edema) < -1.5
    csf_like = brain & (labels == 0) & (channel["T2"] > np.percentile(channel["T2"][healthy], 95))
    assert channel["FLAIR"][csf_like].mean() < channel["FLAIR"][healthy].mean()  # CSF: bright T2, dark FLAIR
    assert (images[:, ~brain] == 0).all() and (labels[~brain] == 0).all()  # skull-stripped, zero background


def test_every_fourth_case_has_no_enhancing_tumour():
    for index in range(4):
        _, labels = phantom.make_case(SPACING, seed=0, case_index=index)
        assert (labels == 3).any() == (index % 4 != 3)
        assert (labels == 1).any()


def test_dataset_layout_and_reproducibility(tmp_path):
    folder = phantom.generate_dataset(tmp_path / "a", 995, "Quality", num_training=3, num_test=1, spacing=SPACING,
                                      seed=1)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"]["enhancing tumor"] in ([3], 3) and meta["regions_class_order"] == [1, 2, 3]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"Quality_003_000{c}.nii.gz" for c in range(4)]
    label = sitk.ReadImage(str(folder / "labelsTr" / "Quality_001.nii.gz"))
    assert label.GetSpacing() == (SPACING,) * 3 and label.GetSize() == phantom.output_shape(SPACING)
    _, expected = phantom.make_case(SPACING, seed=1, case_index=1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label).transpose(2, 1, 0), expected)
    with pytest.raises(FileExistsError):
        phantom.generate_dataset(tmp_path / "a", 995, "Quality", num_training=3, num_test=1, spacing=SPACING)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [folder.name]  # nothing half-written left

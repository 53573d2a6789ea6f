"""Re-opening an exported review (ichdemo.reopen): labels uploaded beside their CT become the edits again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ichdemo.errors import UnsupportedInputError
from ichdemo.export import export
from ichdemo.io import load_volume
from ichdemo.reopen import review_from_files, split_uploads


@pytest.fixture(scope="module")
def exported(dicom_series, labels_for, stamp, tmp_path_factory):
    folder, vol = dicom_series
    labels = labels_for(vol.shape)
    out = tmp_path_factory.mktemp("exp")
    export(labels, vol, "nifti,dicom-seg", out, model_info=stamp[0], thresholds=stamp[1])
    slices = ["draft", "edited", "reviewed", "draft", "no-hemorrhage", "edited"]
    report = out / "report.json"
    report.write_text(json.dumps({"review": {"slices": slices}}))
    nifti = next((out / "nifti").glob("*.nii.gz"))
    seg = next((out / "dicom-seg").glob("*.dcm"))
    return folder, vol, labels, slices, nifti, seg, report


def test_uploads_split_into_the_ct_and_its_labels(exported):
    folder, _, _, _, nifti, seg, report = exported
    ct = sorted(str(p) for p in folder.iterdir())
    got_ct, got_labels = split_uploads([*ct, str(nifti), str(seg), str(report)])
    assert got_ct == ct and got_labels == [str(nifti), str(seg), str(report)]


@pytest.mark.parametrize("kind", ["nifti", "seg"])
def test_a_review_comes_back_slice_by_slice(exported, kind):
    folder, vol, labels, slices, nifti, seg, report = exported
    edits, note = review_from_files([nifti if kind == "nifti" else seg, report], load_volume(folder))
    assert edits.provenance() == slices
    draft = np.full(vol.shape, 3, np.uint8)  # a model's draft: SAH everywhere
    back = edits.apply(draft)
    for i, status in enumerate(slices):  # the person's slices exactly as exported, the others the draft
        np.testing.assert_array_equal(back[i], draft[i] if status == "draft" else labels[i])
    assert "4 of 6 slices" in note


def test_without_a_report_every_slice_is_edited(exported):
    _, vol, labels, _, nifti, _, _ = exported
    edits, note = review_from_files([nifti], vol)
    np.testing.assert_array_equal(edits.apply(np.zeros(vol.shape, np.uint8)), labels)
    assert edits.provenance() == ["edited"] * vol.shape[0] and "no report.json" in note


def test_labels_of_another_series_or_a_bad_report_are_refused(exported, tmp_path):
    from ichdemo.io.dicom_write import write_dicom_series

    _, vol, _, _, nifti, seg, report = exported
    other = load_volume(write_dicom_series(np.zeros((6, 40, 48), np.float32), (5.0, 0.8, 0.7), tmp_path / "o"))
    with pytest.raises(UnsupportedInputError, match="another series"):
        review_from_files([seg], other)
    short = tmp_path / "report.json"
    short.write_text(json.dumps({"review": {"slices": ["edited"] * 3}}))
    with pytest.raises(UnsupportedInputError, match="covers 3 slices"):
        review_from_files([nifti, short], vol)
    for odd in (["approved"] * vol.shape[0], [{"status": "edited"}] * vol.shape[0], "edited"):
        short.write_text(json.dumps({"review": {"slices": odd}}))
        with pytest.raises(UnsupportedInputError, match="statuses must be among"):
            review_from_files([nifti, short], vol)
    with pytest.raises(UnsupportedInputError, match="one label map"):
        review_from_files([nifti, seg, report], vol)
    with pytest.raises(UnsupportedInputError, match="one label map"):
        review_from_files([report], vol)

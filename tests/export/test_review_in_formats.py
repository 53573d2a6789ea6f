"""A person's review travels with the labels into the formats that have room for it (issue 17)."""

from __future__ import annotations

import io
import json
import zipfile

import highdicom as hd
import pytest

from ichdemo.export import export

REVIEW = ["draft", "edited", "reviewed", "draft", "no-hemorrhage", "draft"]


def _export(vol, labels, stamp, out, review):
    return dict(export(labels, vol, "dicom-seg,labelstudio,cvat", out, model_info=stamp[0], thresholds=stamp[1],
                       review=review))


@pytest.mark.parametrize("review", [None, REVIEW])
def test_review_in_seg_labelstudio_and_cvat(dicom_series, labels_for, stamp, tmp_path, review):
    _, vol = dicom_series
    written = _export(vol, labels_for(vol.shape), stamp, tmp_path, review)
    seg = hd.seg.segread(written["dicom-seg"])
    kinds = {d.SegmentAlgorithmType for d in seg.SegmentSequence}
    tasks = json.loads(written["labelstudio"].read_text())
    with zipfile.ZipFile(io.BytesIO(written["cvat"].read_bytes())) as zf:
        labelmap = zf.read("labelmap.txt").decode()
    if review is None:
        assert kinds == {"AUTOMATIC"} and "person" not in seg.ContentDescription
        assert [t["data"]["review"] for t in tasks] == ["draft"] * 6 and not any("annotations" in t for t in tasks)
        assert "# review" not in labelmap
        return
    assert kinds == {"SEMIAUTOMATIC"} and seg.ContentDescription.startswith("3 of 6 slices person-reviewed")
    assert [t["data"]["review"] for t in tasks] == REVIEW
    assert [i for i, t in enumerate(tasks) if "annotations" in t] == [1, 2, 4]
    assert tasks[1]["annotations"][0]["result"] == tasks[1]["predictions"][0]["result"]
    assert [line.split(": ")[1] for line in labelmap.splitlines() if line.startswith("# review")] == [
        "edited", "reviewed", "no-hemorrhage"]


def test_a_review_of_another_length_is_refused(dicom_series, labels_for, stamp, tmp_path):
    _, vol = dicom_series
    with pytest.raises(ValueError, match="one status"):
        _export(vol, labels_for(vol.shape), stamp, tmp_path, ["edited"] * 3)
    with pytest.raises(ValueError, match="one status"):
        _export(vol, labels_for(vol.shape), stamp, tmp_path, ["checked"] * 6)

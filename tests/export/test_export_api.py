"""The export entry point: format names, manifest, provenance in every format, image input, label checks."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.export import FORMATS, export, parse_formats
from ichdemo.export.nifti import labels_from_nifti, source_grid
from ichdemo.io import load_volume


def test_parse_formats():
    assert parse_formats("nifti, DICOM-SEG,nifti") == ["nifti", "dicom-seg"]
    assert parse_formats("all") == list(FORMATS)
    assert list(FORMATS) == ["nifti", "dicom-seg", "seg-nrrd", "cvat", "labelstudio", "coco", "overlay"]
    with pytest.raises(ConfigError, match="unknown export format.*png.*choose from"):
        parse_formats("nifti,png")
    with pytest.raises(ConfigError, match="no export format"):
        parse_formats(" , ")


def test_manifest_lists_written_and_skipped_with_reasons(nifti_file, stamp, labels_for, tmp_path):
    _, vol = nifti_file
    paths = export(
        labels_for(vol.shape),
        vol,
        "nifti,dicom-seg,coco",
        tmp_path,
        model_info=stamp[0],
        thresholds=stamp[1],
        skip_unsupported=True,
        name="a/b c",
    )
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert set(paths) == {"nifti", "coco"} and set(manifest["written"]) == {"nifti", "coco"}
    assert "not offered for a NIfTI file" in manifest["skipped"]["dicom-seg"]
    assert manifest["provenance"]["model"] == "tiny_lse" and manifest["de_identified"] is True
    assert paths["nifti"].name == "a_b_c.nii.gz"  # the name is made file-name safe


def test_every_format_is_stamped_draft_with_model_and_thresholds(dicom_series, stamp, labels_for, tmp_path):
    _, vol = dicom_series
    paths = export(labels_for(vol.shape), vol, "all", tmp_path, model_info=stamp[0], thresholds=stamp[1])
    texts = {
        "nifti": paths["nifti"].with_name("labels.labels.json").read_text(),
        "seg-nrrd": paths["seg-nrrd"].read_bytes()[:4000].decode("latin-1"),
        "cvat": zipfile.ZipFile(paths["cvat"]).read("labelmap.txt").decode(),
        "labelstudio": paths["labelstudio"].read_text()[:20000],
        "coco": json.dumps(json.loads(paths["coco"].read_text())["info"]),
        "overlay": Image.open(next(paths["overlay"].glob("*.png"))).text["Description"],
        "dicom-seg": paths["dicom-seg"].read_bytes().decode("latin-1"),
    }
    for fmt, text in texts.items():
        assert "DRAFT" in text, fmt
        assert "tiny_lse" in text, fmt
        assert "0.4" in text and "75" in text, fmt  # class and mask thresholds


def test_image_input_names_slices_after_the_source_files(tmp_path, stamp):
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("scan_b.png", "scan_a.png", "scan_c.png"):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / name)
    vol = load_volume(folder)
    labels = np.zeros(vol.shape, np.uint8)
    labels[1, 2:5, 3:9] = 3
    paths = export(
        labels, vol, "coco,labelstudio,cvat,nifti", tmp_path / "out", model_info=stamp[0], thresholds=stamp[1]
    )
    coco = json.loads(paths["coco"].read_text())
    stems = [img["file_name"] for img in coco["images"]]
    assert stems == [f"images/{p.stem}.png" for p in sorted(folder.glob("*.png"))]  # load order = sorted names
    (ann,) = coco["annotations"]
    assert ann["image_id"] == 2 and ann["category_id"] == 3 and ann["area"] == 18
    grey = np.asarray(Image.open(tmp_path / "out" / stems[0]))
    source = np.asarray(Image.open(folder / "scan_a.png")).astype(int)
    # the images the user gave, through their own window: grey kept to the 8-bit rounding (the black border,
    # read as air, comes back black)
    assert np.abs(grey.astype(int) - source).max() <= 2


def test_labels_are_checked(dicom_series, stamp, tmp_path):
    _, vol = dicom_series
    with pytest.raises(ValueError, match="labels shape"):
        export(np.zeros((2, 3, 4), np.uint8), vol, "nifti", tmp_path, model_info=stamp[0], thresholds=stamp[1])
    bad = np.full(vol.shape, 6, np.uint8)
    with pytest.raises(ValueError, match="label values must be 0..5"):
        export(bad, vol, "nifti", tmp_path, model_info=stamp[0], thresholds=stamp[1])


@pytest.mark.parametrize("source", ["dicom", "nifti"])
def test_labels_from_nifti_undoes_source_grid(source, dicom_series, nifti_file, labels_for, tmp_path):
    _, vol = dicom_series if source == "dicom" else nifti_file
    labels = labels_for(vol.shape, seed=11)
    _, _, img = source_grid(labels, vol)
    img.to_filename(tmp_path / "l.nii.gz")
    np.testing.assert_array_equal(labels_from_nifti(tmp_path / "l.nii.gz", vol), labels)


def test_labels_from_nifti_refuses_another_grid(dicom_series, nifti_file, labels_for, tmp_path):
    _, dvol = dicom_series
    _, nvol = nifti_file
    _, _, img = source_grid(labels_for(nvol.shape), nvol)
    img.to_filename(tmp_path / "l.nii.gz")
    with pytest.raises(UnsupportedInputError, match="does not match the source volume"):
        labels_from_nifti(tmp_path / "l.nii.gz", dvol)

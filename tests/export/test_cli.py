"""`python -m ichdemo export PRED_DIR` and `predict --format`, with a tiny untrained model."""

import json
import zipfile

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest

from ichdemo.cli import main
from ichdemo.export.nifti import labels_from_nifti

# thresholds that make an untrained model segment something: every class gated in, mask above level 128
# an untrained model segments something with Algorithm 1 alone (its drafts need not hold blood-density regions)
LOW = ["--class-thresholds", "0,0,0,0,0", "--mask-thresholds", "128,128,128,128,128", "--refine", "none"]


def test_predict_with_formats_writes_exports_matching_labels(tiny_model, dicom_series, tmp_path, capsys):
    folder, vol = dicom_series
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(folder),
                "--model",
                str(tiny_model),
                "--out",
                str(out),
                *LOW,
                "--format",
                "nifti,dicom-seg,coco",
            ]
        )
        == 0
    )
    labels = labels_from_nifti(out / "labels.nii.gz", vol)
    assert labels.any()
    exported = nib.load(next((out / "nifti").glob("*.nii.gz")))
    np.testing.assert_array_equal(np.asarray(exported.dataobj).transpose(2, 1, 0), labels)
    seg = hd.seg.segread(next((out / "dicom-seg").glob("*.dcm")))
    pixels = seg.get_pixels_by_source_instance(
        vol.dicom.sop_instance_uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(pixels > 0, labels > 0)
    assert "dicom-seg:" in capsys.readouterr().out


def test_export_command_rereads_the_source(tiny_model, dicom_series, tmp_path):
    folder, vol = dicom_series
    pred = tmp_path / "pred"
    assert main(["predict", str(folder), "--model", str(tiny_model), "--out", str(pred), *LOW]) == 0
    out = tmp_path / "exp"
    assert main(["export", str(pred), "--format", "seg-nrrd,dicom-seg,cvat", "--out", str(out)]) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert set(manifest["written"]) == {"seg-nrrd", "dicom-seg", "cvat"}
    seg = hd.seg.segread(out / manifest["written"]["dicom-seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.dicom.series_instance_uid
    with zipfile.ZipFile(out / manifest["written"]["cvat"]) as zf:
        assert len(zf.read("ImageSets/Segmentation/default.txt").split()) == vol.shape[0]


def test_export_from_a_zip_input_references_the_series(tiny_model, dicom_series, tmp_path):
    folder, vol = dicom_series
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.glob("*.dcm")):
            zf.write(f, f"inner/{f.name}")
    pred = tmp_path / "pred"
    assert main(["predict", str(archive), "--model", str(tiny_model), "--out", str(pred), *LOW]) == 0
    assert main(["export", str(pred), "--format", "dicom-seg", "--out", str(tmp_path / "exp")]) == 0
    seg = hd.seg.segread(next((tmp_path / "exp" / "dicom-seg").glob("*.dcm")))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.dicom.series_instance_uid
    assert seg.PatientIdentityRemoved == "YES"


def test_dicom_seg_for_nifti_is_refused_with_the_reason(tiny_model, nifti_file, tmp_path, capsys):
    path, _ = nifti_file
    code = main(
        ["predict", str(path), "--model", str(tiny_model), "--out", str(tmp_path / "p"), "--format", "nifti,dicom-seg"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "DICOM SEG is not offered for a NIfTI file" in err and "seg-nrrd" in err
    assert not (tmp_path / "p").exists()  # refused before the network ran


def test_export_nifti_input_keeps_the_files_grid(tiny_model, nifti_file, tmp_path):
    path, _ = nifti_file
    pred = tmp_path / "pred"
    assert main(["predict", str(path), "--model", str(tiny_model), "--out", str(pred), *LOW]) == 0
    assert main(["export", str(pred), "--format", "nifti,seg-nrrd", "--out", str(tmp_path / "e")]) == 0
    out = nib.load(next((tmp_path / "e" / "nifti").glob("*.nii.gz")))
    src = nib.load(path)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(nib.load(pred / "labels.nii.gz").dataobj))


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "nifti", "--out", str(tmp_path / "o")]) == 2
    assert "not a predict output folder" in capsys.readouterr().err
    (tmp_path / "report.json").write_text(json.dumps({"input": {}}))
    assert main(["export", str(tmp_path), "--format", "nifti", "--out", str(tmp_path / "o")]) == 2
    assert "source.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path)])  # --format and --out are required


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_phantom_folder_is_one_predict_input(tiny_model, fmt, tmp_path, capsys):
    phantom, pred = tmp_path / "phantom", tmp_path / "pred"
    assert main(["phantom", str(phantom), "--seed", "3", "--subtypes", "IPH,SDH", "--format", fmt,
                 "--shape", "12x128x128"]) == 0
    shown = json.loads(capsys.readouterr().out)
    truth = json.loads((phantom / ".truth" / "truth.json").read_text())
    assert shown["truth"] == str(phantom / ".truth" / "truth.json") and (phantom / truth["labels"]).is_file()
    assert main(["predict", str(phantom), "--model", str(tiny_model), "--out", str(pred), *LOW]) == 0
    report = json.loads((pred / "report.json").read_text())
    assert report["input"]["source"] == fmt and report["input"].get("warnings", []) == []
    truth_labels = np.asarray(nib.load(phantom / truth["labels"]).dataobj)
    assert nib.load(pred / "labels.nii.gz").shape == truth_labels.shape  # on the phantom's own grid

"""DICOM SEG content: coding, algorithm identification, draft labels, de-identification and refusals."""

import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ichdemo.errors import UnsupportedInputError
from ichdemo.export import export
from ichdemo.export.codes import CATEGORY, PRIVATE_SCHEME, TYPES
from ichdemo.io import load_volume


def _all_text(ds):
    """Every string value in a dataset, sequences included."""
    out = []
    for elem in ds.iterall():
        if elem.VR in ("PN", "LO", "SH", "DA", "LT", "ST", "UT", "CS"):
            out.append(str(elem.value))
    return " ".join(out)


@pytest.fixture(scope="module")
def seg_default(dicom_series, stamp, labels_for, tmp_path_factory):
    _, vol = dicom_series
    labels = labels_for(vol.shape, seed=7)
    paths = export(labels, vol, ["dicom-seg"], tmp_path_factory.mktemp("seg"), model_info=stamp[0], thresholds=stamp[1])
    return labels, pydicom.dcmread(paths["dicom-seg"])


def test_segments_are_coded_automatic_and_name_the_model(seg_default):
    _, seg = seg_default
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, 6))
    for desc, (name, code) in zip(seg.SegmentSequence, TYPES.items()):
        assert desc.SegmentLabel == name
        assert desc.SegmentAlgorithmType == "AUTOMATIC"
        cat, typ = desc.SegmentedPropertyCategoryCodeSequence[0], desc.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodeValue, cat.CodingSchemeDesignator) == (CATEGORY.value, "SCT")
        assert (typ.CodeValue, typ.CodingSchemeDesignator) == (code.value, code.scheme_designator)
        algo = desc.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "tiny_lse"
        assert algo.AlgorithmVersion.startswith("v0.test") and "c0.4/0.5/0.6/0.7/0.8" in algo.AlgorithmVersion
        assert "75,125,125,75,25" in algo.AlgorithmParameters
    cat = seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0]
    assert cat.CodeMeaning == "Morphologically Abnormal Structure"  # DICOM CID 7150, as pydicom gives it
    sdh = seg.SegmentSequence[3].SegmentedPropertyTypeCodeSequence[0]
    assert (sdh.CodeValue, sdh.CodingSchemeDesignator, sdh.CodeMeaning) == (
        "95453001",
        "SCT",
        "Subdural intracranial hematoma",
    )
    # IVH and EDH are present, and coded in the private scheme, which the SEG must then declare
    assert PRIVATE_SCHEME in {i.CodingSchemeDesignator for i in seg.CodingSchemeIdentificationSequence}


def test_draft_and_research_labels(seg_default):
    _, seg = seg_default
    assert seg.ContentLabel == "DRAFT_ICH"
    assert "DRAFT" in seg.SeriesDescription and "research" in seg.SeriesDescription
    assert "DRAFT" in seg.ContentDescription and "tiny_lse" in seg.ContentDescription
    assert seg.ContentQualification == "RESEARCH"
    assert seg.Manufacturer == "ichdemo"


def test_only_segments_present_are_written(dicom_series, stamp, tmp_path):
    _, vol = dicom_series
    labels = np.zeros(vol.shape, np.uint8)
    labels[2, 3:9, 4:12] = 4  # SDH only
    seg = hd.seg.segread(
        export(labels, vol, ["dicom-seg"], tmp_path, model_info=stamp[0], thresholds=stamp[1])["dicom-seg"]
    )
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["SDH"]
    assert seg.NumberOfFrames == 1  # empty frames omitted
    assert "CodingSchemeIdentificationSequence" not in seg  # only SNOMED CT used: no private scheme to declare


def test_deidentified_by_default(dicom_series, seg_default):
    folder, _ = dicom_series
    source = pydicom.dcmread(min(folder.glob("*.dcm")))
    assert str(source.PatientName) == "DOE^JANE" and source.PatientBirthDate == "19700101"  # really there
    _, seg = seg_default
    assert str(seg.get("PatientName", "")) == "" and str(seg.get("PatientID", "")) == ""
    assert str(seg.get("PatientBirthDate", "")) == "" and str(seg.get("StudyDate", "")) == ""
    text = _all_text(seg)
    for secret in ("DOE", "PID-4711", "1970", "Example", "PRIVATE-SECRET"):
        assert secret not in text
    assert seg.PatientIdentityRemoved == "YES"
    assert {i.CodeValue for i in seg.DeidentificationMethodCodeSequence} == {"113100", "113110"}
    assert seg.StudyInstanceUID == source.StudyInstanceUID  # Retain UIDs: still references the source


def test_keep_phi_keeps_patient_identifiers(dicom_series, stamp, labels_for, tmp_path):
    _, vol = dicom_series
    path = export(
        labels_for(vol.shape), vol, ["dicom-seg"], tmp_path, model_info=stamp[0], thresholds=stamp[1], keep_phi=True
    )["dicom-seg"]
    seg = pydicom.dcmread(path)
    assert str(seg.PatientName) == "DOE^JANE" and seg.PatientID == "PID-4711" and seg.PatientBirthDate == "19700101"
    assert "PatientIdentityRemoved" not in seg or seg.PatientIdentityRemoved != "YES"


def test_source_files_gone_rebuilds_references_from_dicomref(dicom_series, stamp, labels_for, tmp_path):
    folder, _ = dicom_series
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    vol = load_volume(copy)
    shutil.rmtree(copy)  # like a zip upload extracted to a temporary folder
    labels = labels_for(vol.shape, seed=3)
    seg = hd.seg.segread(
        export(labels, vol, ["dicom-seg"], tmp_path / "out", model_info=stamp[0], thresholds=stamp[1])["dicom-seg"]
    )
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.dicom.series_instance_uid
    pixels = seg.get_pixels_by_source_instance(
        vol.dicom.sop_instance_uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(pixels > 0, labels > 0)
    assert seg.PatientIdentityRemoved == "YES"


def test_not_offered_for_nifti_with_a_reason(nifti_file, stamp, labels_for, tmp_path):
    _, vol = nifti_file
    with pytest.raises(UnsupportedInputError, match="DICOM SEG is not offered for a NIfTI file.*reference"):
        export(labels_for(vol.shape), vol, ["nifti", "dicom-seg"], tmp_path, model_info=stamp[0], thresholds=stamp[1])
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_empty_label_map_gets_no_seg(dicom_series, stamp, tmp_path):
    _, vol = dicom_series
    empty = np.zeros(vol.shape, np.uint8)
    with pytest.raises(UnsupportedInputError, match="no hemorrhage was segmented"):
        export(empty, vol, ["dicom-seg"], tmp_path, model_info=stamp[0], thresholds=stamp[1])
    paths = export(
        empty, vol, ["dicom-seg", "nifti"], tmp_path, model_info=stamp[0], thresholds=stamp[1], skip_unsupported=True
    )
    assert set(paths) == {"nifti"}

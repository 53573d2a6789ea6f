"""DICOM Segmentation (SEG) through highdicom, referencing the source CT series.

What is in the file:
- one BINARY segment per subtype present (numbered 1..n in class order), category SCT 49755003 "Morphologically
  Abnormal Structure", type from ``ichdemo.export.codes`` (SNOMED CT where verified, the sources are cited there);
  SegmentAlgorithmType AUTOMATIC with AlgorithmName = model name, AlgorithmVersion = model version plus the
  thresholds (compact form; the full values are also in AlgorithmParameters), AlgorithmFamily DCM 123110 "Artificial
  Intelligence"; the display colour of each class;
- one frame per source slice that has the segment (empty frames omitted), each referencing its source image by
  SOP Instance UID, in the source's frame of reference (Study/Series/FrameOfReference UIDs come from the source);
- SeriesDescription, ContentLabel "DRAFT_ICH" and ContentDescription saying draft / research use only with the
  model, ContentQualification RESEARCH, Manufacturer "ichdemo", SoftwareVersions = the ichdemo version, and, when a
  segment present uses it (IVH, EDH), the private coding scheme ``99ICHDEMO`` in CodingSchemeIdentificationSequence.

Source headers are re-read from ``DicomRef.files``. Where the files are no longer there (a zip extracted to a
temporary folder), minimal source headers are rebuilt from ``DicomRef`` (UIDs and geometry, nothing else).
Privacy: the copied attributes would carry the patient's identity into the SEG, so unless ``keep_phi`` they go
through the Basic Application Level Confidentiality Profile with the Retain UIDs Option (``ichdemo.export.deid``).

A series with no segmented voxel gets no SEG (a SEG must hold at least one segment); ``unsupported`` says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import generate_uid

from ichdemo import __version__
from ichdemo.atomic import atomic_path
from ichdemo.constants import CLASS_COLORS, CLASSES
from ichdemo.errors import CorruptInputError, UnsupportedInputError
from ichdemo.export import codes
from ichdemo.export.deid import PATIENT_STUDY_TYPE2, basic_profile, mark_deidentified
from ichdemo.export.job import ExportJob
from ichdemo.export.provenance import DRAFT_LABEL
from ichdemo.volume import DicomRef, Volume

FOLDER = "dicom-seg"
CONTENT_LABEL = "DRAFT_ICH"
SERIES_DESCRIPTION = "DRAFT ICH segmentation - research use only"
_LO = 64  # maximum length of LO values (AlgorithmName, AlgorithmVersion, ContentDescription...)


def _hd():
    try:
        import highdicom
    except ImportError as err:  # pragma: no cover - highdicom is a runtime requirement
        raise ImportError("the dicom-seg export needs highdicom: pip install highdicom") from err
    return highdicom


def unsupported(volume: Volume) -> str | None:
    """Why this volume cannot get a DICOM SEG, or None when it can."""
    if volume.source != "dicom" or volume.dicom is None:
        kind = {"nifti": "a NIfTI file", "image": "PNG/JPG images"}.get(volume.source, f"{volume.source} input")
        return (
            f"DICOM SEG is not offered for {kind}: a SEG must reference the DICOM images it segments (their Study, "
            "Series and SOP Instance UIDs and frame of reference), and this input has none. Use the nifti or "
            "seg-nrrd export, which keep the input's own geometry."
        )
    if not volume.dicom.sop_instance_uids or not all(volume.dicom.sop_instance_uids):
        return "DICOM SEG is not offered: the source series lacks SOP Instance UIDs to reference"
    return None


def _check(job: ExportJob) -> None:
    reason = unsupported(job.volume)
    if reason:
        raise UnsupportedInputError(reason)
    if not job.present:
        raise UnsupportedInputError("no DICOM SEG written: no hemorrhage was segmented, and a SEG needs a segment")


# ------------------------------------------------------------------------------------------------- source headers
def _read_headers(ref: DicomRef) -> list[Dataset] | None:
    """Source headers from ``ref.files`` in slice order, or None when they are gone or are not the same images."""
    if len(ref.files) != len(ref.sop_instance_uids) or not all(Path(f).is_file() for f in ref.files):
        return None
    try:
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in ref.files]
    except FileNotFoundError:  # removed meanwhile (the app's upload cache is cleaned on a schedule)
        return None
    if [str(h.get("SOPInstanceUID", "")) for h in headers] != list(ref.sop_instance_uids):
        return None
    return headers


def _rebuilt_header(ref: DicomRef, volume: Volume, i: int) -> Dataset:
    """A minimal CT image header holding only what a SEG copies or references: UIDs and geometry."""
    ds = Dataset()
    ds.SOPClassUID = ref.sop_class_uid or pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = ref.sop_instance_uids[i]
    ds.StudyInstanceUID = ref.study_instance_uid
    ds.SeriesInstanceUID = ref.series_instance_uid
    ds.FrameOfReferenceUID = ref.frame_of_reference_uid or generate_uid()
    ds.Modality = "CT"
    for keyword in PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, None)
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.PixelSpacing = [f"{volume.spacing[1]:.6g}", f"{volume.spacing[2]:.6g}"]
    ds.SliceThickness = f"{volume.spacing[0]:.6g}"
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in ref.image_orientation]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ref.image_positions[i]]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.InstanceNumber = i + 1
    return ds


def source_headers(volume: Volume, keep_phi: bool) -> tuple[list[Dataset], bool]:
    """Headers of the source images in slice order, de-identified unless ``keep_phi``.

    Returns:
        (headers, rebuilt): ``rebuilt`` is True when the files were gone and headers were rebuilt from DicomRef.
    """
    ref = volume.dicom
    assert ref is not None
    headers = _read_headers(ref)
    rebuilt = headers is None
    if headers is None:
        headers = [_rebuilt_header(ref, volume, i) for i in range(volume.shape[0])]
    if not keep_phi:
        headers = [basic_profile(h) for h in headers]
    return headers, rebuilt


# ---------------------------------------------------------------------------------------------------- segments
def _fit(text: str, limit: int = _LO) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def algorithm(job: ExportJob):
    """AlgorithmIdentificationSequence: model name, version + thresholds, AI family, full thresholds as parameters."""
    hd = _hd()
    prov = job.provenance
    t = prov.thresholds
    compact = f"{prov.version} c{'/'.join(f'{v:g}' for v in t.class_thresholds)}"
    compact += f" m{'/'.join(f'{v:g}' for v in t.mask_thresholds)}"
    return hd.AlgorithmIdentificationSequence(
        name=_fit(prov.model),
        family=dcm_codes.cid7162.ArtificialIntelligence,
        version=compact if len(compact) <= _LO else _fit(prov.version),
        source="ichdemo",
        parameters={
            "class_thresholds": ",".join(f"{v:g}" for v in t.class_thresholds),
            "mask_thresholds": ",".join(f"{v:g}" for v in t.mask_thresholds),
            "scale_mode": t.scale_mode,
            "status": DRAFT_LABEL,
        },
    )


def segment_descriptions(job: ExportJob) -> list:
    """One SegmentDescription per subtype present, numbered 1..n in class order."""
    hd = _hd()
    algo = algorithm(job)
    out = []
    for number, value in enumerate(job.present, start=1):
        c = CLASSES[value - 1]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=c,
                segmented_property_category=codes.CATEGORY,
                segmented_property_type=codes.TYPES[c],
                # a person's edits or review make the segments semi-automatic (model draft, person's corrections)
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if job.touched
                else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                display_color=hd.color.CIELabColor.from_rgb(*CLASS_COLORS[c]),
            )
        )
    return out


def segment_array(job: ExportJob) -> np.ndarray:
    """(S, H, W) uint8 map of segment numbers 1..n (label values renumbered to the segments present)."""
    lut = np.zeros(len(CLASSES) + 1, np.uint8)
    for number, value in enumerate(job.present, start=1):
        lut[value] = number
    return lut[job.labels]


def build(job: ExportJob) -> Dataset:
    """The SEG dataset (not written). Raises UnsupportedInputError for non-DICOM input or an empty map."""
    _check(job)
    hd = _hd()
    headers, _ = source_headers(job.volume, job.keep_phi)
    prov = job.provenance
    try:
        seg = _segmentation(hd, headers, job, prov)
    except ValueError as err:  # highdicom validates copied attributes (e.g. a malformed birth date with --keep-phi)
        raise CorruptInputError(f"cannot build a DICOM SEG from this series: {err}".splitlines()[0]) from None
    if not job.keep_phi:
        mark_deidentified(seg)
    return seg


def _segmentation(hd, headers: list[Dataset], job: ExportJob, prov) -> Dataset:
    return hd.seg.Segmentation(
        source_images=headers,
        pixel_array=segment_array(job),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(job),
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ichdemo",
        manufacturer_model_name=_fit(prov.model),
        software_versions=__version__,
        device_serial_number=prov.weights_sha256 or "unknown",
        content_label=CONTENT_LABEL,
        content_description=_fit(
            f"{job.touched} of {len(job.review)} slices person-reviewed, rest model draft; research use"
            if job.touched else f"{DRAFT_LABEL}: {prov.model_text}"
        ),
        series_description=SERIES_DESCRIPTION,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=_coding_schemes(hd, job),
        omit_empty_frames=True,
    )


def _coding_schemes(hd, job: ExportJob) -> list | None:
    """The private scheme, declared only when a segment present is coded in it (None: no sequence is written)."""
    if not codes.uses_private_scheme(CLASSES[v - 1] for v in job.present):
        return None
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=codes.PRIVATE_SCHEME, name="ichdemo private codes", responsible_organization="ichdemo"
        )
    ]


def write(job: ExportJob) -> Path:
    """Write ``dicom-seg/<name>.seg.dcm``; returns its path."""
    seg = build(job)
    path = job.out_dir / FOLDER / f"{job.name}.seg.dcm"
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path

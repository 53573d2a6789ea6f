"""Write a volume in HU as a CT Image Storage DICOM series (used by the phantom CLI and the tests).

The files are what a scanner export looks like in the tags a reader relies on: one single-frame file per slice,
signed 16-bit pixels with ``RescaleSlope`` 1 and ``RescaleIntercept`` -1024, ``RescaleType`` HU, axial
orientation, positions along +z (data[0] is the most inferior slice), unique UIDs from
``pydicom.uid.generate_uid``, a proper file meta header and explicit VR little endian encoding.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

_INTERCEPT = -1024.0
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _uid_factory(hu: np.ndarray, seed: int | None):
    """UIDs that are random, or, with a ``seed``, reproducible for the same seed and the same pixel data."""
    if seed is None:
        return lambda role: generate_uid()
    digest = hashlib.sha256(np.ascontiguousarray(hu).tobytes()).hexdigest()
    return lambda role: generate_uid(entropy_srcs=[str(seed), digest, role])


def _to_stored(hu_slice: np.ndarray) -> bytes:
    """HU -> signed 16-bit stored values (stored = HU - intercept), rounded and clipped to int16."""
    raw = np.rint(hu_slice.astype(np.float64) - _INTERCEPT)
    return np.clip(raw, -32768, 32767).astype("<i2").tobytes()


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ICHDEMO_1"
    return meta


def _common_tags(ds: FileDataset, shared: dict) -> None:
    """Patient, study, series and equipment tags shared by every slice."""
    for keyword, value in shared.items():
        setattr(ds, keyword, value)


def _slice_tags(ds: FileDataset, index: int, position: tuple[float, float, float], hu_slice: np.ndarray) -> None:
    """Per-slice position, numbering and pixel module."""
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.SliceLocation = f"{position[2]:.4f}"
    ds.Rows, ds.Columns = int(hu_slice.shape[0]), int(hu_slice.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = f"{_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = _to_stored(hu_slice)


def write_dicom_series(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    out_dir: str | Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "PHANTOM^SYNTHETIC",
    patient_id: str = "PHANTOM",
    series_description: str = "Synthetic head CT phantom",
    series_number: int = 1,
    seed: int | None = None,
) -> list[Path]:
    """Write ``hu`` as one DICOM CT series, one file per slice.

    Args:
        hu: (S, H, W) Hounsfield units; slice 0 is written at z = 0 and slices go up by ``spacing[0]``.
        spacing: (slice, row, col) spacing in mm.
        out_dir: folder for the files (created if missing); files are named ``CT0001.dcm``, ``CT0002.dcm``...
        study_uid: StudyInstanceUID to use (new if None), e.g. to put several series into one study.
        series_uid: SeriesInstanceUID to use (new if None).
        patient_name: PatientName; keep it synthetic.
        patient_id: PatientID.
        series_description: SeriesDescription.
        series_number: SeriesNumber.
        seed: with a seed, UIDs are derived from (seed, pixel data) so the same call writes the same files.

    Returns:
        The written paths in slice order.

    Raises:
        ValueError: ``hu`` is not 3-D or ``spacing`` is not three positive numbers.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or 0 in hu.shape:
        raise ValueError(f"hu must be a non-empty (S, H, W) array, got shape {hu.shape}")
    ds_sp, row_sp, col_sp = (float(s) for s in spacing)
    if min(ds_sp, row_sp, col_sp) <= 0:
        raise ValueError(f"spacing must be three positive numbers in mm, got {spacing}")
    uid = _uid_factory(hu, seed)
    shared = _shared_tags(hu, (ds_sp, row_sp, col_sp), uid, study_uid, series_uid, seed)
    shared.update(
        PatientName=patient_name, PatientID=patient_id, SeriesDescription=series_description, SeriesNumber=series_number
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x0, y0 = -(hu.shape[2] - 1) / 2 * col_sp, -(hu.shape[1] - 1) / 2 * row_sp  # centre the grid on the isocentre
    paths = []
    for i in range(hu.shape[0]):
        sop_uid = uid(f"sop{i}")
        ds = FileDataset(None, {}, file_meta=_file_meta(sop_uid), preamble=b"\0" * 128)
        _common_tags(ds, shared)
        ds.SOPInstanceUID = sop_uid
        _slice_tags(ds, i, (x0, y0, i * ds_sp), hu[i])
        path = out / f"CT{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _shared_tags(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    uid,
    study_uid: str | None,
    series_uid: str | None,
    seed: int | None,
) -> dict:
    """Tags identical on every slice of the series."""
    when = _dt.datetime(2000, 1, 1, 12, 0, 0) if seed is not None else _dt.datetime.now()
    ds_sp, row_sp, col_sp = spacing
    return dict(
        SpecificCharacterSet="ISO_IR 100",
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        SOPClassUID=CTImageStorage,
        StudyDate=when.strftime("%Y%m%d"),
        SeriesDate=when.strftime("%Y%m%d"),
        ContentDate=when.strftime("%Y%m%d"),
        StudyTime=when.strftime("%H%M%S"),
        SeriesTime=when.strftime("%H%M%S"),
        ContentTime=when.strftime("%H%M%S"),
        AccessionNumber="",
        Modality="CT",
        Manufacturer="ichdemo",
        ManufacturerModelName="synthetic phantom",
        ReferringPhysicianName="",
        StudyDescription="Synthetic head CT",
        PatientBirthDate="",
        PatientSex="O",
        BodyPartExamined="HEAD",
        SliceThickness=f"{ds_sp:g}",
        SpacingBetweenSlices=f"{ds_sp:g}",
        KVP="120",
        ConvolutionKernel="SYNTHETIC",
        PatientPosition="HFS",
        StudyInstanceUID=study_uid or uid("study"),
        SeriesInstanceUID=series_uid or uid("series"),
        StudyID="1",
        AcquisitionNumber=1,
        ImageOrientationPatient=[f"{v:g}" for v in _AXIAL],
        FrameOfReferenceUID=uid("frame"),
        PositionReferenceIndicator="",
        PixelSpacing=[f"{row_sp:g}", f"{col_sp:g}"],
        WindowCenter="40",
        WindowWidth="80",
        BurnedInAnnotation="NO",
    )

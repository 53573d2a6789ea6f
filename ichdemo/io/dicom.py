"""Read a DICOM CT series into a ``Volume`` (HU, spacing, geometry and UIDs for writing results back).

Rules, in the order they apply:
1. Every file is read (header first); unreadable files raise ``CorruptInputError`` naming the file. Objects
   without an image (DICOMDIR, reports, RT plans) and localizer images are left out with a warning.
2. Files are grouped by SeriesInstanceUID. The CT series with the most slices is loaded (any series when there is
   no CT, which then fails the modality check); the others are listed in ``Volume.warnings``.
3. Inside the series, rows/cols, orientation and pixel spacing must agree; the same SOPInstanceUID given twice is
   read once; two different images at one position are an error.
4. Slices are sorted by ImagePositionPatient projected on the slice normal (row x column direction cosines), or by
   InstanceNumber with a warning when positions are missing.
5. HU = stored value x RescaleSlope + RescaleIntercept, per slice, float32. Slice spacing is the median distance
   between sorted positions along the normal (not SliceThickness); gantry tilt and uneven spacing give warnings.
6. Patient identifiers (name, ID, birth date) never reach the description, warnings or meta.
7. A header value that cannot be interpreted, or that makes HU values or geometry NaN/infinite, is a
   ``CorruptInputError`` (found by tests/security/test_fuzz_dicom.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from ichdemo.errors import CorruptInputError, IchdemoError, UnsupportedInputError, brief
from ichdemo.io.limits import Limits
from ichdemo.volume import DicomRef, Volume

_DEFAULT_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TILT_DEGREES = 0.5  # below this a position step counts as parallel to the normal
_UNEVEN = 0.10  # a step more than 10% off the median is "uneven"
_DUPLICATE_MM = 0.01
# What interpreting a damaged header raises (float('0]5'), int(list), pydicom's unknown-VR NotImplementedError...)
_HEADER_VALUE_ERRORS = (ValueError, TypeError, NotImplementedError, LookupError, AttributeError, ArithmeticError)

_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}


@dataclass
class _Slice:
    """One image file's header, before pixels are read."""

    path: Path
    header: Dataset

    @property
    def name(self) -> str:
        return self.path.name


# ----------------------------------------------------------------------------------------------------------- reading
def looks_like_dicom(path: str | Path) -> bool:
    """True for files with the 'DICM' marker, or preamble-less files that parse as an image or SOP instance."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return True
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID", "Rows"])
    except Exception:  # any parse failure means "not DICOM" here  # noqa: BLE001
        return False
    return "SOPClassUID" in ds or "Rows" in ds


def read_header(path: Path) -> Dataset:
    """Read a DICOM file without its pixel data.

    Raises:
        CorruptInputError: not a DICOM file, or a header that cannot be parsed (truncated...).
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if not looks_like_dicom(path):
            raise CorruptInputError(f"{path.name}: not a DICOM file (no 'DICM' marker and no DICOM header)") from None
    except Exception as err:  # pydicom raises many types on damaged files
        raise _unreadable_header(path, err) from err
    try:  # a preamble-less file that parses as DICOM
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as err:
        raise _unreadable_header(path, err) from err


def _unreadable_header(path: Path, err: Exception) -> CorruptInputError:
    return CorruptInputError(
        f"{path.name}: DICOM header cannot be read, the file is truncated or corrupt "
        f"({type(err).__name__}: {brief(err)})"
    )


def _read_full(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path, force=True)
        ds.get("PixelData")  # force the (deferred) read of the pixel element now, inside the try
        return ds
    except Exception as err:
        raise CorruptInputError(
            f"{path.name}: DICOM file is truncated or corrupt ({type(err).__name__}: {brief(err)})"
        ) from err


def transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax (explicit VR little endian when the file meta lacks one)."""
    meta = getattr(ds, "file_meta", None)
    return UID(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)) if meta is not None else ExplicitVRLittleEndian


def _require_decoder(ts: UID, name: str) -> None:
    """Raise ``UnsupportedInputError`` naming the transfer syntax and the package that would decode it."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedInputError(
            f"{name}: transfer syntax '{ts.name}' ({ts}) cannot be decoded by any Python DICOM decoder; "
            "re-export the series uncompressed, or as JPEG / JPEG 2000 / RLE"
        ) from None
    if not decoder.is_available:
        package = _DECODER_PACKAGES.get(str(ts), "pylibjpeg with its plugins, or python-gdcm")
        raise UnsupportedInputError(
            f"{name}: transfer syntax '{ts.name}' ({ts}) needs a decoder that is not installed: pip install {package}"
        )


def check_image_header(ds: Dataset, name: str) -> None:
    """Raise for images this loader cannot use: colour, multi-frame, missing pixel data or size tags."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedInputError(
            f"{name}: multi-frame DICOM ({frames} frames in one file) is not supported; export the series as "
            "one single-frame file per slice"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise UnsupportedInputError(
            f"{name}: colour DICOM image ({photometric}, {samples} samples per pixel); CT must be greyscale "
            "(MONOCHROME1/2) - this looks like a screenshot or secondary capture"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise CorruptInputError(f"{name}: DICOM without image size (Rows/Columns); it holds no image")


def decode_pixels(ds: Dataset, name: str = "DICOM file") -> np.ndarray:
    """Decode one single-frame greyscale image to its stored values (no rescale), for any installed codec.

    Raises:
        CorruptInputError: no pixel data, or data that does not decode (truncated, damaged codestream).
        UnsupportedInputError: colour or multi-frame image; a transfer syntax without an installed decoder.
    """
    if "PixelData" not in ds:
        raise CorruptInputError(
            f"{name}: DICOM without pixel data ({_sop_class_name(ds)}); nothing to show - "
            "upload the image series (or the file is truncated)"
        )
    check_image_header(ds, name)
    ts = transfer_syntax(ds)
    _require_decoder(ts, name)
    try:
        arr = ds.pixel_array
    except Exception as err:
        raise CorruptInputError(
            f"{name}: pixel data cannot be decoded ({ts.name}); the file is truncated or damaged ({brief(err)})"
        ) from err
    if arr.ndim != 2:
        raise UnsupportedInputError(f"{name}: expected one 2-D image, decoded an array of shape {arr.shape}")
    return arr


def to_hu(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    """HU = stored x RescaleSlope + RescaleIntercept, as float32."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return UID(uid).name if uid else "unknown"


# ----------------------------------------------------------------------------------------------------- series choice
def _is_image(ds: Dataset) -> bool:
    return "Rows" in ds and "Columns" in ds


def _is_localizer(ds: Dataset) -> bool:
    return "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def _split_non_images(slices: list[_Slice]) -> tuple[list[_Slice], list[str]]:
    """Drop non-image objects and localizers, with a warning each kind; error when no image remains."""
    for s in slices:
        if not _is_image(s.header) and "Image Storage" in _sop_class_name(s.header):
            raise CorruptInputError(
                f"{s.name}: {_sop_class_name(s.header)} file without its image attributes "
                "(Rows/Columns); the file is truncated or corrupt"
            )
    images = [s for s in slices if _is_image(s.header)]
    warnings = []
    if len(images) < len(slices):
        other = Counter(_sop_class_name(s.header) for s in slices if not _is_image(s.header))
        if not images:
            kinds = ", ".join(sorted(other))
            raise CorruptInputError(
                f"DICOM without pixel data: no image in {len(slices)} file(s) ({kinds}); "
                "upload the image series (or the file is truncated)"
            )
        warnings.append(
            f"skipped {len(slices) - len(images)} DICOM object(s) without an image: "
            + ", ".join(f"{k} ({n})" for k, n in other.items())
        )
    scouts = [s for s in images if _is_localizer(s.header)]
    if scouts and len(scouts) < len(images):
        images = [s for s in images if not _is_localizer(s.header)]
        warnings.append(f"skipped {len(scouts)} localizer (scout) image(s)")
    return images, warnings


def _series_label(group: list[_Slice]) -> str:
    h = group[0].header
    desc = str(h.get("SeriesDescription", "") or "").strip() or "no description"
    return f"'{desc}' (series {h.get('SeriesNumber', '?')}, {h.get('Modality', '?')}, {len(group)} slice(s))"


def _choose_series(images: list[_Slice]) -> tuple[list[_Slice], list[str]]:
    """Group by SeriesInstanceUID; take the CT series with most slices (any series if none is CT)."""
    groups: dict[str, list[_Slice]] = {}
    for s in images:
        groups.setdefault(str(s.header.get("SeriesInstanceUID", "")), []).append(s)
    ranked = sorted(groups.values(), key=len, reverse=True)
    ct = [g for g in ranked if str(g[0].header.get("Modality", "CT")).upper() == "CT"]
    chosen = (ct or ranked)[0]
    others = [g for g in ranked if g is not chosen]
    warnings = []
    if others:
        warnings.append(
            f"found {len(groups)} series; loaded {_series_label(chosen)}; not loaded: "
            + "; ".join(_series_label(g) for g in others)
        )
    return chosen, warnings


def _check_modality(group: list[_Slice]) -> list[str]:
    modality = str(group[0].header.get("Modality", "") or "").upper()
    if not modality:
        return ["Modality tag missing; assuming CT"]
    if modality != "CT":
        kind = _sop_class_name(group[0].header)
        raise UnsupportedInputError(
            f"{group[0].name}: modality is {modality} ({kind}), not CT; this tool reads head CT only"
        )
    return []


def _check_consistent(group: list[_Slice]) -> None:
    """Rows/cols, orientation and pixel spacing must agree across the series."""
    sizes = Counter((int(s.header.Rows), int(s.header.Columns)) for s in group)
    if len(sizes) > 1:
        listing = ", ".join(f"{c}x{r} ({n} slices)" for (r, c), n in sizes.most_common())
        raise UnsupportedInputError(
            f"inconsistent slice sizes inside one series: {listing}; remove the odd slices or upload one series"
        )
    iops = [s.header.get("ImageOrientationPatient") for s in group]
    present = [np.array(v, dtype=float) for v in iops if v is not None]
    if present and any(not np.allclose(v, present[0], atol=1e-4) for v in present):
        raise UnsupportedInputError(
            "inconsistent ImageOrientationPatient inside one series (slices at different "
            "angles); reformat the series to one orientation"
        )
    spacings = {tuple(round(float(x), 4) for x in s.header.get("PixelSpacing") or ()) for s in group}
    if len(spacings) > 1:
        raise UnsupportedInputError(f"inconsistent PixelSpacing inside one series: {sorted(spacings)}")


def _dedupe(group: list[_Slice]) -> tuple[list[_Slice], list[str]]:
    """Read a SOPInstanceUID given twice (the same file uploaded twice) only once."""
    seen: dict[str, _Slice] = {}
    for s in group:
        seen.setdefault(str(s.header.get("SOPInstanceUID", id(s))), s)
    if len(seen) == len(group):
        return group, []
    return list(seen.values()), [f"ignored {len(group) - len(seen)} duplicate file(s) of the same image"]


# ------------------------------------------------------------------------------------------------------- geometry
@dataclass
class _Geometry:
    """Sorted slice geometry in LPS mm."""

    order: list[int]
    iop: tuple[float, ...]
    positions: np.ndarray  # (S, 3) ImagePositionPatient in sorted order
    slice_spacing: float
    spacing_assumed: bool


def _normal(iop: np.ndarray) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def _sort_by_position(group: list[_Slice]) -> tuple[_Geometry, list[str]]:
    iop = np.array(group[0].header.ImageOrientationPatient, dtype=float)
    pos = np.array([[float(v) for v in s.header.ImagePositionPatient] for s in group])
    proj = pos @ _normal(iop)
    order = [int(i) for i in np.argsort(proj, kind="stable")]
    steps = np.diff(proj[order])
    dup = np.flatnonzero(steps < _DUPLICATE_MM)
    if dup.size:
        a, b = group[order[dup[0]]], group[order[dup[0] + 1]]
        raise UnsupportedInputError(
            f"duplicate slice positions: {dup.size} position(s) hold more than one image (e.g. {a.name} and "
            f"{b.name} at {proj[order[dup[0]]]:.2f} mm); upload a single acquisition"
        )
    warnings: list[str] = []
    if steps.size:
        spacing, assumed = float(np.median(steps)), False
        warnings += _spacing_warnings(steps, spacing) + _tilt_warning(pos[order], iop, group[0].header)
    else:
        spacing, assumed = _header_slice_spacing(group[0].header)
    return _Geometry(order, tuple(iop), pos[order], spacing, assumed), warnings


def _sort_by_instance(group: list[_Slice]) -> tuple[_Geometry, list[str]]:
    numbers = [s.header.get("InstanceNumber") for s in group]
    if all(n is not None for n in numbers):
        order = [int(i) for i in np.argsort([int(n) for n in numbers], kind="stable")]
        how = "InstanceNumber"
    else:
        order = sorted(range(len(group)), key=lambda i: group[i].name)
        how = "file name"
    spacing, assumed = _header_slice_spacing(group[0].header)
    pos = np.array([[0.0, 0.0, k * spacing] for k in range(len(group))])
    warning = (
        f"ImagePositionPatient/ImageOrientationPatient missing or invalid: slices sorted by {how}, slice spacing "
        f"{spacing:g} mm taken from the header{' (assumed)' if assumed else ''}, orientation unknown"
    )
    return _Geometry(order, _DEFAULT_IOP, pos, spacing, assumed), [warning]


def _header_slice_spacing(h: Dataset) -> tuple[float, bool]:
    """SpacingBetweenSlices, else SliceThickness, else 1 mm flagged as assumed (single slice or no positions)."""
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        value = h.get(key)
        if value not in (None, "") and float(value) > 0:
            return float(value), False
    return 1.0, True


def _spacing_warnings(steps: np.ndarray, median: float) -> list[str]:
    off = np.abs(steps - median) > _UNEVEN * median
    if not off.any():
        return []
    hint = "; slices may be missing" if steps.max() > 1.5 * median else ""
    return [
        f"uneven slice spacing: {int(off.sum())} step(s) more than {_UNEVEN:.0%} off the median {median:.3g} mm "
        f"(range {steps.min():.3g} to {steps.max():.3g} mm){hint}; volumes use the median"
    ]


def _tilt_warning(pos: np.ndarray, iop: np.ndarray, h: Dataset) -> list[str]:
    step = pos[-1] - pos[0]
    cosine = abs(float(step @ _normal(iop))) / float(np.linalg.norm(step))
    angle = float(np.degrees(np.arccos(min(1.0, cosine))))
    tag = float(h.get("GantryDetectorTilt", 0) or 0)
    if angle < _TILT_DEGREES and abs(tag) < _TILT_DEGREES:
        return []
    return [
        f"gantry tilt: slices step {angle:.1f} degrees off the slice normal (GantryDetectorTilt {tag:g}); "
        "the grid is sheared, the affine keeps the true positions"
    ]


def _geometry(group: list[_Slice]) -> tuple[_Geometry, list[str]]:
    has_pos = all(s.header.get("ImagePositionPatient") is not None for s in group)
    return _sort_by_position(group) if has_pos and _valid_iop(group[0].header) else _sort_by_instance(group)


def _valid_iop(h: Dataset) -> bool:
    """Six direction cosines whose row and column vectors are (near) unit length and orthogonal."""
    iop = h.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return False
    row, col = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    return bool(np.linalg.norm(np.cross(row, col)) > 0.5)


def _pixel_spacing(h: Dataset) -> tuple[tuple[float, float], list[str]]:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = h.get(key)
        if value is not None and len(value) == 2 and min(float(v) for v in value) > 0:
            return (float(value[0]), float(value[1])), []
    return (1.0, 1.0), ["PixelSpacing missing: assumed 1 x 1 mm; volumes are estimates"]


def dicom_affine(geo: _Geometry, row_spacing: float, col_spacing: float) -> np.ndarray:
    """RAS affine of ``data.transpose(2, 1, 0)``: i (col) along the IOP row direction, j (row) along the column
    direction, k (slice) along the true step between positions (LPS -> RAS flips x and y)."""
    iop = np.array(geo.iop, dtype=float)
    n = len(geo.order)
    step = (geo.positions[-1] - geo.positions[0]) / (n - 1) if n > 1 else _normal(iop) * geo.slice_spacing
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = geo.positions[0]
    return _LPS_TO_RAS @ lps


# ----------------------------------------------------------------------------------------------------------- volume
def _read_pixels(group: list[_Slice], order: list[int]) -> np.ndarray:
    first = group[0].header
    data = np.empty((len(order), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, idx in enumerate(order):
        ds = _read_full(group[idx].path)
        raw = decode_pixels(ds, group[idx].name)
        if raw.shape != data.shape[1:]:
            raise UnsupportedInputError(f"{group[idx].name}: pixel data is {raw.shape}, header says {data.shape[1:]}")
        data[k] = to_hu(ds, raw)
    return data


def _meta(h: Dataset) -> dict:
    """Non-identifying acquisition facts."""
    keys = {
        "modality": "Modality",
        "manufacturer": "Manufacturer",
        "model": "ManufacturerModelName",
        "kernel": "ConvolutionKernel",
        "kvp": "KVP",
        "slice_thickness": "SliceThickness",
        "series_number": "SeriesNumber",
        "series_description": "SeriesDescription",
        "body_part": "BodyPartExamined",
        "photometric": "PhotometricInterpretation",
    }
    meta = {k: str(h.get(v)) for k, v in keys.items() if h.get(v) not in (None, "")}
    meta["transfer_syntax"] = transfer_syntax(h).name
    return meta


def _dicom_ref(group: list[_Slice], geo: _Geometry, keep_paths: bool) -> DicomRef:
    h = group[0].header
    sorted_slices = [group[i] for i in geo.order]
    return DicomRef(
        study_instance_uid=str(h.get("StudyInstanceUID", "")),
        series_instance_uid=str(h.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(h.FrameOfReferenceUID) if h.get("FrameOfReferenceUID") else None,
        sop_class_uid=str(h.get("SOPClassUID", "")),
        sop_instance_uids=[str(s.header.get("SOPInstanceUID", "")) for s in sorted_slices],
        image_positions=[tuple(float(v) for v in p) for p in geo.positions],
        image_orientation=tuple(float(v) for v in geo.iop),  # type: ignore[arg-type]
        files=[str(s.path) for s in sorted_slices] if keep_paths else [],
    )


def _slice_name(s: _Slice) -> str:
    number = s.header.get("InstanceNumber")
    return str(number) if number not in (None, "") else s.path.stem


def load_dicom_series(files: list[Path], limits: Limits | None = None, *, keep_paths: bool = True) -> Volume:
    """Load the main CT series from DICOM files (see the module docstring for the rules).

    Args:
        files: DICOM files, in any order, possibly of several series.
        limits: size limits (``Limits()`` by default).
        keep_paths: record source paths in ``DicomRef.files`` (False for files extracted to a temporary folder).

    Returns:
        A ``Volume`` with ``source="dicom"``, HU data (S, H, W), spacing, RAS affine and a filled ``DicomRef``.

    Raises:
        CorruptInputError: not DICOM, truncated, no pixel data, undecodable compressed data, a header value that
            cannot be interpreted, HU values or geometry that are not finite.
        UnsupportedInputError: not CT, colour or multi-frame, inconsistent series, duplicate positions, a
            compression without an installed decoder.
        UnsafeInputError: over a size limit.
    """
    limits = limits or Limits()
    slices = [_Slice(Path(f), read_header(Path(f))) for f in files]
    try:
        volume = _load_slices(slices, limits, keep_paths)
    except IchdemoError:
        raise
    except _HEADER_VALUE_ERRORS as err:  # a tag that parsed but holds no usable value ('0]5', unknown VR...)
        raise CorruptInputError(
            f"DICOM header value cannot be interpreted, a file is damaged ({type(err).__name__}: {brief(err)})"
        ) from err
    _check_finite(volume)
    return volume


def _load_slices(slices: list[_Slice], limits: Limits, keep_paths: bool) -> Volume:
    images, warnings = _split_non_images(slices)
    group, more = _choose_series(images)
    warnings += more + _check_modality(group)
    for s in group:
        check_image_header(s.header, s.name)
    _check_consistent(group)
    group, more = _dedupe(group)
    warnings += more
    limits.check_slices(len(group), "DICOM series")
    limits.check_pixels(int(group[0].header.Rows), int(group[0].header.Columns), group[0].name)
    geo, more = _geometry(group)
    (row_sp, col_sp), px_warn = _pixel_spacing(group[0].header)
    warnings += more + px_warn
    data = _read_pixels(group, geo.order)
    h = group[0].header
    return Volume(
        data=data,
        spacing=(geo.slice_spacing, row_sp, col_sp),
        prewindowed=False,
        affine=dicom_affine(geo, row_sp, col_sp),
        source="dicom",
        description=_description(h, data.shape, (geo.slice_spacing, row_sp, col_sp)),
        warnings=warnings,
        slice_names=[_slice_name(group[i]) for i in geo.order],
        spacing_assumed=geo.spacing_assumed or bool(px_warn),
        dicom=_dicom_ref(group, geo, keep_paths),
        meta=_meta(h),
    )


def _check_finite(volume: Volume) -> None:
    """Refuse HU values or geometry that overflowed or came from NaN/inf header values (fuzzing found both)."""
    bad = int(volume.data.size - np.count_nonzero(np.isfinite(volume.data)))
    if bad:
        raise CorruptInputError(
            f"DICOM series: {bad} voxel(s) are not finite after stored x RescaleSlope + RescaleIntercept; "
            "the RescaleSlope or RescaleIntercept of a file is damaged"
        )
    spacing = np.array(volume.spacing, dtype=float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all() and np.isfinite(volume.affine).all()):
        raise CorruptInputError(
            f"DICOM series: slice spacing or positions are not finite ({', '.join(f'{v:g}' for v in spacing)} mm); "
            "PixelSpacing, ImagePositionPatient or SliceThickness of a file is damaged"
        )


def _description(h: Dataset, shape: tuple[int, ...], spacing: tuple[float, float, float]) -> str:
    desc = str(h.get("SeriesDescription", "") or "").strip() or "no description"
    return (
        f"DICOM {h.get('Modality', 'CT')} series '{desc}' (series {h.get('SeriesNumber', '?')}): "
        f"{shape[0]} slices of {shape[2]}x{shape[1]} px, spacing {spacing[0]:.3g} x {spacing[1]:.3g} x "
        f"{spacing[2]:.3g} mm (slice x row x col), {transfer_syntax(h).name}"
    )

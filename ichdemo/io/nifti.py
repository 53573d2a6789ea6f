"""NIfTI (.nii, .nii.gz) in and out, with exact write-back onto the file's own voxel grid.

Orientation of ``Volume.data`` from any input: the voxel axes are reordered and flipped (no resampling) to the
closest match of the display order used for axial CT, the same as a standard axial DICOM series:
``data[s, r, c]`` has slices from inferior to superior, rows from anterior (top of the image) to posterior, and
columns from the patient's right (left of the image) to the patient's left (radiological convention). In NIfTI
terms ``data.transpose(2, 1, 0)`` is the closest-canonical RAS array with its i and j axes flipped (axis codes
L, P, S), and ``Volume.affine`` is that array's affine, so world coordinates are unchanged. The original affine
and the reordering are kept in ``Volume.nifti_header`` so ``to_source_grid`` puts labels back voxel for voxel.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from ichdemo.errors import CorruptInputError, UnsafeInputError, UnsupportedInputError, brief
from ichdemo.io.limits import Limits
from ichdemo.volume import Volume

VOLUME_AXCODES = ("L", "P", "S")
"""Axis codes of ``Volume.data.transpose(2, 1, 0)``: i (col) to patient left, j (row) to posterior, k up."""

_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}
_NIFTI1_MAGIC = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC = (b"n+2\x00", b"ni2\x00")


def grid_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The affine of a (S, H, W) grid with ``spacing`` (slice, row, col) mm in this package's display order.

    Columns run to the patient's left (-x in RAS), rows to posterior (-y), slices up (+z); origin at 0. A standard
    axial DICOM series gives the same directions.
    """
    s, r, c = (float(v) for v in spacing)
    return np.diag([-c, -r, s, 1.0])


def sniff_nifti(head: bytes) -> bool:
    """True when ``head`` (the first bytes of an uncompressed file, 544 or more) is a NIfTI-1 or NIfTI-2 header."""
    return head[344:348] in _NIFTI1_MAGIC or head[4:8] in _NIFTI2_MAGIC


def _read_limited(path: Path, limits: Limits) -> bytes:
    """File bytes, gunzipped if needed, never more than ``max_total_bytes``."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as fh:
        raw = fh.read(limits.max_total_bytes + 1)
    if len(raw) > limits.max_total_bytes:
        raise UnsafeInputError(f"{path.name}: expands beyond the limit of {limits.max_total_bytes} bytes")
    return raw


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open(path: Path, limits: Limits) -> nib.Nifti1Image:
    """Open by content: a name that does not match the content (no .nii/.nii.gz, or a gzipped .nii and a plain
    .nii.gz) is read from bytes."""
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz") and _is_gzip(path) or name.endswith(".nii") and not _is_gzip(path):
            return nib.load(path)
        raw = _read_limited(path, limits)
        cls = nib.Nifti2Image if raw[4:8] in _NIFTI2_MAGIC else nib.Nifti1Image
        return cls.from_bytes(raw)
    except UnsafeInputError:
        raise
    except Exception as err:
        reason = brief(err).replace(str(path), path.name)  # nibabel's messages carry the full (server) path
        raise CorruptInputError(f"{path.name}: not a readable NIfTI file ({type(err).__name__}: {reason})") from err


def _orientation(img: nib.Nifti1Image, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(source orientation, transform to the display orientation); a NaN/inf or singular affine is refused."""
    try:
        if not np.isfinite(img.affine).all():
            raise ValueError("it holds NaN or infinite values")
        src_ornt = io_orientation(img.affine)
        return src_ornt, ornt_transform(src_ornt, axcodes2ornt(VOLUME_AXCODES))
    except ValueError as err:  # numpy's LinAlgError is a ValueError too
        raise CorruptInputError(
            f"{name}: NIfTI affine is not usable ({brief(err)}); the sform/qform or pixdim of the header is damaged"
        ) from err


def _units(hdr) -> tuple[str, str]:
    """(spatial, temporal) units; an unknown code (a damaged header) reads as "unknown" (mm is then assumed)."""
    try:
        return tuple(hdr.get_xyzt_units())  # type: ignore[return-value]
    except KeyError:
        return "unknown", "unknown"


def _check_header(img: nib.Nifti1Image, name: str, limits: Limits, transform: np.ndarray) -> tuple[int, ...]:
    """Validate shape, datatype and size from the header alone; return the 3-D (source) shape.

    ``transform`` (source -> display orientation) tells which axes become rows, cols and slices for the limits.
    """
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 0 or 0 in shape:
        raise UnsupportedInputError(f"{name}: empty NIfTI (shape {shape})")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise UnsupportedInputError(
            f"{name}: 4-D NIfTI of shape {shape} ({int(np.prod(shape[3:]))} volumes); give one 3-D CT volume"
        )
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise UnsupportedInputError(f"{name}: NIfTI datatype {dtype} is not a numeric scalar (RGB or complex?)")
    shape3 = (shape + (1, 1))[:3]
    out = [0, 0, 0]  # display (col, row, slice) sizes
    for axis, size in enumerate(shape3):
        out[int(transform[axis, 0])] = size
    limits.check_pixels(out[1], out[0], name)
    limits.check_slices(out[2], name)
    # Stored bytes (a .nii.gz inflates to these) or the float32 result, whichever is larger
    if int(np.prod(shape3)) * max(4, dtype.itemsize) > limits.max_total_bytes:
        raise UnsafeInputError(f"{name}: {shape3} voxels need more than {limits.max_total_bytes} bytes")
    return shape3


def _read_data(img: nib.Nifti1Image, shape3: tuple[int, ...], name: str) -> np.ndarray:
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape3)
    except Exception as err:
        raise CorruptInputError(
            f"{name}: NIfTI data cannot be read, the file is truncated or corrupt ({brief(err)})"
        ) from err
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise CorruptInputError(f"{name}: {bad} voxel(s) are NaN or infinite; fix or mask them before loading")
    return data


def _ct_warning(data: np.ndarray) -> list[str]:
    lo, hi = float(data.min()), float(data.max())
    if hi < 100 and lo >= 0:
        return [
            f"values run from {lo:g} to {hi:g}: this does not look like CT in Hounsfield units (air is about "
            "-1000, bone over +300); check that the file is a CT image, not a mask or normalised data"
        ]
    return []


def load_nifti(path: str | Path, limits: Limits | None = None) -> Volume:
    """Load a 3-D NIfTI CT volume in the display order of the module docstring.

    Args:
        path: a .nii or .nii.gz file (other names are read by content).
        limits: size limits (``Limits()`` by default).

    Returns:
        A ``Volume`` with ``source="nifti"``, the affine of the reoriented grid and ``nifti_header`` for
        ``to_source_grid``.

    Raises:
        CorruptInputError: unreadable or truncated file, NaN/inf values, a NaN/inf or singular affine.
        UnsupportedInputError: 4-D (more than one volume), empty, non-numeric datatype.
        UnsafeInputError: over a size limit.
    """
    limits = limits or Limits()
    path = Path(path)
    img = _open(path, limits)
    src_ornt, transform = _orientation(img, path.name)
    shape3 = _check_header(img, path.name, limits, transform)
    data = _read_data(img, shape3, path.name)
    oriented = apply_orientation(data, transform)
    unit = _units(img.header)[0] or "unknown"
    scale = _UNIT_TO_MM.get(unit, 1.0)
    affine = np.diag([scale, scale, scale, 1.0]) @ img.affine @ inv_ornt_aff(transform, shape3)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # i, j, k = col, row, slice
    warnings = _ct_warning(data)
    if scale != 1.0:
        warnings.append(f"spatial units are {unit}; converted to mm")
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    vol_data = np.ascontiguousarray(oriented.transpose(2, 1, 0), dtype=np.float32)
    return Volume(
        data=vol_data,
        spacing=spacing,
        affine=affine,
        source="nifti",
        description=_description(path.name, vol_data.shape, spacing, img.affine),
        warnings=warnings,
        slice_names=[str(k) for k in range(vol_data.shape[0])],
        nifti_header=_header_record(img, src_ornt, shape3, path.name),
        meta={"datatype": str(img.get_data_dtype()), "original_axcodes": "".join(aff2axcodes(img.affine))},
    )


def _header_record(img: nib.Nifti1Image, src_ornt: np.ndarray, shape3: tuple[int, ...], name: str) -> dict:
    """What ``to_source_grid`` needs, as plain values."""
    hdr = img.header
    try:
        sform, sform_code = hdr.get_sform(coded=True)
        qform, qform_code = hdr.get_qform(coded=True)
    except ValueError as err:  # e.g. a quaternion with b^2 + c^2 + d^2 > 1 (fuzzing)
        raise CorruptInputError(
            f"{name}: NIfTI qform/sform is not usable ({brief(err)}); the header is damaged"
        ) from err
    return {
        "file": name,
        "original_affine": np.array(img.affine, dtype=float),
        "original_shape": tuple(int(n) for n in img.shape),
        "spatial_shape": shape3,
        "source_ornt": np.array(src_ornt, dtype=float),
        "sform": None if sform is None else np.array(sform, dtype=float),
        "sform_code": int(sform_code),
        "qform": None if qform is None else np.array(qform, dtype=float),
        "qform_code": int(qform_code),
        "xyzt_units": _units(hdr),
    }


def _description(name: str, shape: tuple[int, ...], spacing: tuple[float, ...], affine: np.ndarray) -> str:
    axes = "".join(aff2axcodes(affine))
    return (
        f"NIfTI {name}: {shape[0]} slices of {shape[2]}x{shape[1]} px, spacing {spacing[0]:.3g} x "
        f"{spacing[1]:.3g} x {spacing[2]:.3g} mm (slice x row x col), stored as {axes}, shown as LPS"
    )


def to_source_grid(labels: np.ndarray, volume: Volume) -> nib.Nifti1Image:
    """Put a (S, H, W) label map of ``volume`` back in the source NIfTI's own voxel order and affine.

    Args:
        labels: (S, H, W) array on ``volume.data``'s grid (any numeric dtype; kept).
        volume: a ``Volume`` from ``load_nifti`` / ``load_volume`` on a NIfTI file.

    Returns:
        A 3-D ``Nifti1Image`` whose array matches the source file voxel for voxel, with its affine, sform/qform
        codes and units (a singleton 4th dimension of the source is dropped).

    Raises:
        ValueError: ``volume`` is not from NIfTI, or ``labels`` has a different shape.
    """
    rec = volume.nifti_header
    if not rec:
        raise ValueError("volume has no NIfTI source record (nifti_header); it was not read from a NIfTI file")
    labels = np.asarray(labels)
    if labels.shape != volume.data.shape:
        raise ValueError(f"labels shape {labels.shape} != volume shape {volume.data.shape}")
    back = ornt_transform(axcodes2ornt(VOLUME_AXCODES), rec["source_ornt"])
    original = np.ascontiguousarray(apply_orientation(labels.transpose(2, 1, 0), back))
    img = nib.Nifti1Image(original, rec["original_affine"])
    if rec["sform"] is not None:
        img.set_sform(rec["sform"], code=rec["sform_code"])
    if rec["qform"] is not None:
        img.set_qform(rec["qform"], code=rec["qform_code"])
    img.header.set_xyzt_units(*rec["xyzt_units"])
    return img


def write_nifti(array: np.ndarray, affine_or_spacing, path: str | Path) -> Path:
    """Write a (S, H, W) array as NIfTI in this package's convention (``array.transpose(2, 1, 0)`` + affine).

    Args:
        array: (S, H, W) data (dtype kept: float32 HU, uint8 labels...).
        affine_or_spacing: a 4x4 affine of ``array.transpose(2, 1, 0)`` (``Volume.affine``), or (slice, row, col)
            spacing in mm, which gives ``grid_affine(spacing)``.
        path: output path; ``.nii.gz`` is appended when it ends in neither ``.nii`` nor ``.nii.gz``.

    Returns:
        The written path. ``load_volume`` reads it back to the same array and affine.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be (S, H, W), got shape {array.shape}")
    affine = np.asarray(affine_or_spacing, dtype=float)
    affine = affine if affine.shape == (4, 4) else grid_affine(tuple(affine))  # type: ignore[arg-type]
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        path = path.with_name(path.name + ".nii.gz")
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path

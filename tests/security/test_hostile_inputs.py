"""Bad and hostile input (uploads are untrusted) at loader and CLI level.

Every case is checked three ways: ``load_volume`` raises the specific ``IchdemoError`` subclass with a one-line
message that names no server path; ``python -m ichdemo info`` and ``predict`` exit with status 2, print that message
as one ``error:`` line on stderr and nothing on stdout, write no output and leave no temporary folder behind.
tests/io/test_bad_input.py checks several of these inputs at loader level only; the cases here add the CLI and the
clean-up checks, and the inputs it does not cover (transfer syntaxes, modalities of real files, YBR and palette
colour, header values that do not parse, lying or encrypted zips, Windows paths, PNG chunk bombs...).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from security_helpers import SPACING, patch_bytes, rewrite, tiny_series

from ichdemo.errors import CorruptInputError, IchdemoError, UnsafeInputError, UnsupportedInputError
from ichdemo.io import load_volume
from ichdemo.io.limits import Limits

REPO = Path(__file__).resolve().parents[2]
Build = Callable[[Path], object]
CASES: dict[str, tuple[Build, type[IchdemoError], str]] = {}
OK_CASES: dict[str, tuple[Build, str, tuple[int, int, int]]] = {}


def refused(name: str, error: type[IchdemoError], fragment: str) -> Callable[[Build], Build]:
    """Register a hostile input: ``build(folder)`` returns what a user would upload."""

    def register(build: Build) -> Build:
        CASES[name] = (build, error, fragment)
        return build

    return register


def accepted(name: str, source: str, shape: tuple[int, int, int]) -> Callable[[Build], Build]:
    """Register an odd but valid input: it loads, with ``source`` and ``shape``."""

    def register(build: Build) -> Build:
        OK_CASES[name] = (build, source, shape)
        return build

    return register


# ------------------------------------------------------------------------------------------------- builders
def _png(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(chunk: bytes) -> bytes:
    """A valid 8 x 8 PNG with ``chunk`` inserted right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    png = _png()
    return png[:33] + chunk + png[33:]


def _nifti(folder: Path, data: np.ndarray, name: str = "ct.nii.gz", affine=None) -> Path:
    path = folder / name
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0]) if affine is None else affine), path)
    return path


def _nifti_header_edit(folder: Path, name: str, **fields) -> Path:
    """An uncompressed 4 x 4 x 3 NIfTI whose raw header fields are then overwritten (no nibabel validation)."""
    path = _nifti(folder, np.full((4, 4, 3), -500, np.int16), name)
    raw = path.read_bytes()
    hdr = np.frombuffer(raw[:348], nib.nifti1.header_dtype).copy()
    for key, value in fields.items():
        hdr[key] = value
    path.write_bytes(hdr.tobytes() + raw[348:])
    return path


def _zip(folder: Path, entries: dict[str | zipfile.ZipInfo, bytes], name: str = "upload.zip", **kw) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w", **kw) as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
    return path


def _patch_central(path: Path, offset: int, value: int, fmt: str = "<I") -> None:
    """Overwrite a field of every central-directory record (what ``zipfile`` believes about an entry)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        struct.pack_into(fmt, data, at + offset, value)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def _real(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


# ----------------------------------------------------------------------------------------------- DICOM: damaged
@refused("dicom-zero-byte", UnsupportedInputError, r"empty upload: CT0001.dcm is 0 bytes")
def _(d):
    path = tiny_series(d / "s")[0]
    path.write_bytes(b"")
    return path


@refused("dicom-truncated-pixels", CorruptInputError, r"CT0001.dcm: pixel data cannot be decoded .* truncated")
def _(d):
    path = tiny_series(d / "s", size=(32, 32))[0]
    path.write_bytes(path.read_bytes()[:-300])
    return path


@refused("dicom-truncated-header", CorruptInputError, r"CT Image Storage file without its image attributes")
def _(d):
    path = tiny_series(d / "s")[0]
    path.write_bytes(path.read_bytes()[:1000])
    return path


@refused("dicom-preamble-only", CorruptInputError, r"DICOM without pixel data: no image in 1 file\(s\)")
def _(d):
    (d / "x.dcm").write_bytes(b"\0" * 128 + b"DICM")
    return d / "x.dcm"


@refused("dicom-no-pixel-data", CorruptInputError, r"CT0001.dcm: DICOM without pixel data \(CT Image Storage\)")
def _(d):
    paths = tiny_series(d / "s", 2)
    rewrite(paths, lambda ds: ds.__delitem__("PixelData"))
    return d / "s"


@refused("dicom-ecg-waveform", CorruptInputError, r"no image in 1 file\(s\) \(12-lead ECG Waveform Storage\)")
def _(d):
    return _real("waveform_ecg.dcm")


@refused("dicom-structured-report", CorruptInputError, r"no image in 1 file\(s\) \(Basic Text SR Storage\)")
def _(d):
    return _real("reportsi.dcm")


def _with_transfer_syntax(d: Path, uid: str) -> list[Path]:
    paths = tiny_series(d / "s")

    def change(ds):
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([b"\x00" * 64])  # a frame that no decoder can make sense of

    rewrite(paths, change)
    return paths


@refused("dicom-ts-mpeg2", UnsupportedInputError, r"'MPEG2 Main Profile / Main Level' .* cannot be decoded by any")
def _(d):
    return _with_transfer_syntax(d, "1.2.840.10008.1.2.4.100")


@refused("dicom-ts-private", UnsupportedInputError, r"transfer syntax '1.2.3.4.5' .* cannot be decoded by any")
def _(d):
    paths = tiny_series(d / "s")
    rewrite(paths, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4.5"))
    return paths


@refused("dicom-jpeg-garbage", CorruptInputError, r"pixel data cannot be decoded \(JPEG Baseline \(Process 1\)\)")
def _(d):
    return _with_transfer_syntax(d, "1.2.840.10008.1.2.4.50")


@refused("dicom-jpeg2000-garbage", CorruptInputError, r"pixel data cannot be decoded \(JPEG 2000 Image Compression")
def _(d):
    return _with_transfer_syntax(d, "1.2.840.10008.1.2.4.91")


@refused("dicom-bad-pixel-spacing", CorruptInputError, r"header value cannot be interpreted, .*ValueError: .*'0\]5'")
def _(d):
    path = tiny_series(d / "s")[0]
    patch_bytes(path, b"0.5\\0.5", b"0]5\\0.5")
    return path


@refused("dicom-unknown-vr", CorruptInputError, r"cannot be interpreted, .*Unknown Value Representation 'DI' in tag")
def _(d):
    path = tiny_series(d / "s")[0]
    patch_bytes(path, b"\x20\x00\x37\x00DS", b"\x20\x00\x37\x00DI")  # ImageOrientationPatient's VR
    return path


@refused("dicom-slope-overflow", CorruptInputError, r"64 voxel\(s\) are not finite .*RescaleSlope")
def _(d):
    paths = tiny_series(d / "s")
    rewrite(paths, lambda ds: setattr(ds, "RescaleSlope", "1e38"))  # 1024 x 1e38 overflows float32
    return paths


@refused("dicom-intercept-nan", CorruptInputError, r"64 voxel\(s\) are not finite .*RescaleIntercept")
def _(d):
    paths = tiny_series(d / "s")
    rewrite(paths, lambda ds: setattr(ds, "RescaleIntercept", "nan"))
    return paths


@refused("dicom-position-nan", CorruptInputError, r"slice spacing or positions are not finite")
def _(d):
    paths = tiny_series(d / "s", 3)
    rewrite(paths[1:2], lambda ds: setattr(ds, "ImagePositionPatient", ["0", "0", "nan"]))
    return d / "s"


@refused("dicom-pixel-spacing-inf", CorruptInputError, r"slice spacing or positions are not finite")
def _(d):
    paths = tiny_series(d / "s")
    rewrite(paths, lambda ds: setattr(ds, "PixelSpacing", ["inf", "0.5"]))
    return paths


@refused("dicom-rows-zero", CorruptInputError, r"CT0001.dcm: pixel data cannot be decoded")
def _(d):
    paths = tiny_series(d / "s")
    rewrite(paths, lambda ds: setattr(ds, "Rows", 0))
    return paths


# -------------------------------------------------------------------------------- DICOM: not what the tool reads
for _mod in ("PT", "MR", "US", "NM", "SEG", "OT"):

    def _build(d, mod=_mod):
        paths = tiny_series(d / "s", 2)
        rewrite(paths, lambda ds: setattr(ds, "Modality", mod))
        return d / "s"

    _fragment = rf"modality is {_mod} \(CT Image Storage\), not CT"
    refused(f"dicom-modality-{_mod}", UnsupportedInputError, _fragment)(_build)


@refused("dicom-real-rtdose", UnsupportedInputError, r"modality is RTDOSE \(RT Dose Storage\), not CT")
def _(d):
    return _real("rtdose.dcm")


@refused("dicom-real-seg", UnsupportedInputError, r"modality is SEG \(Segmentation Storage\), not CT")
def _(d):
    return _real("liver_1frame.dcm")


@refused("dicom-real-palette-us", UnsupportedInputError, r"modality is US \(Ultrasound Image Storage\), not CT")
def _(d):
    return _real("examples_palette.dcm")


def _colour(d: Path, photometric: str, samples: int) -> list[Path]:
    paths = tiny_series(d / "s")

    def change(ds):
        ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if samples > 1:
            ds.PlanarConfiguration = 0
        ds.PixelData = bytes(8 * 8 * samples)

    rewrite(paths, change)
    return paths


@refused("dicom-ybr", UnsupportedInputError, r"colour DICOM image \(YBR_FULL, 3 samples per pixel\)")
def _(d):
    return _colour(d, "YBR_FULL", 3)


@refused("dicom-palette", UnsupportedInputError, r"colour DICOM image \(PALETTE COLOR, 1 samples per pixel\)")
def _(d):
    return _colour(d, "PALETTE COLOR", 1)


@refused("dicom-rgb", UnsupportedInputError, r"colour DICOM image \(RGB, 3 samples per pixel\)")
def _(d):
    return _colour(d, "RGB", 3)


@refused("dicom-multi-frame", UnsupportedInputError, r"CT0001.dcm: multi-frame DICOM \(3 frames in one file\)")
def _(d):
    paths = tiny_series(d / "s")

    def change(ds):
        ds.NumberOfFrames = 3
        ds.PixelData = ds.PixelData * 3

    rewrite(paths, change)
    return paths


# ------------------------------------------------------------------------------------------ DICOM: mixed series
def _join(d: Path, odd: list[Path], change=None) -> Path:
    """Make the files of ``odd`` part of the series in d/s, at new positions above it."""
    series_uid = pydicom.dcmread(next((d / "s").glob("*.dcm"))).SeriesInstanceUID

    def join(ds):
        ds.SeriesInstanceUID = series_uid
        ds.ImagePositionPatient = [0, 0, 100 + int(ds.InstanceNumber)]
        if change:
            change(ds)

    rewrite(odd, join)
    for p in odd:
        shutil.move(p, d / "s" / f"odd{p.name}")
    return d / "s"


@refused("dicom-two-matrix-sizes", UnsupportedInputError, r"inconsistent slice sizes .*: 8x8 \(2 slices\), 16x16 \(1")
def _(d):
    tiny_series(d / "s", 2)
    return _join(d, tiny_series(d / "o", 1, (16, 16)))


@refused("dicom-axial-and-sagittal", UnsupportedInputError, r"inconsistent ImageOrientationPatient")
def _(d):
    tiny_series(d / "s", 3)
    return _join(d, tiny_series(d / "o", 2), lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))


@refused("dicom-two-pixel-spacings", UnsupportedInputError, r"inconsistent PixelSpacing inside one series")
def _(d):
    tiny_series(d / "s", 2)
    return _join(d, tiny_series(d / "o", 1), lambda ds: setattr(ds, "PixelSpacing", [0.7, 0.7]))


# ------------------------------------------------------------------------------ not what the extension says
@refused("text-named-png", CorruptInputError, r"scan.png: not a readable PNG/JPEG image")
def _(d):
    (d / "scan.png").write_text("<html>not an image</html>\n" * 10)
    return d / "scan.png"


@refused("bmp-named-png", CorruptInputError, r"scan.png: not a readable PNG/JPEG image")
def _(d):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "scan.bmp")
    return shutil.move(d / "scan.bmp", d / "scan.png")


@refused("html-named-dcm", CorruptInputError, r"scan.dcm: not a DICOM file")
def _(d):
    (d / "scan.dcm").write_text("<!doctype html><title>PACS login</title>\n" * 10)
    return d / "scan.dcm"


@refused("text-named-nii", CorruptInputError, r"scan.nii: not a NIfTI file \(no NIfTI header\)")
def _(d):
    (d / "scan.nii").write_bytes(b"x" * 600)
    return d / "scan.nii"


@refused("text-named-zip", CorruptInputError, r"study.zip: not a readable zip archive")
def _(d):
    (d / "study.zip").write_text("not a zip\n" * 10)
    return d / "study.zip"


@refused("exe-named-dcm", CorruptInputError, r"scan.dcm: not a DICOM file")
def _(d):
    (d / "scan.dcm").write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 4)
    return d / "scan.dcm"


@accepted("dicom-named-png", "dicom", (1, 8, 8))
def _(d):
    return shutil.move(tiny_series(d / "s")[0], d / "scan.png")


@accepted("png-named-dcm", "image", (1, 8, 8))
def _(d):
    (d / "scan.dcm").write_bytes(_png())
    return d / "scan.dcm"


@accepted("nifti-gz-named-dcm", "nifti", (3, 4, 4))
def _(d):
    return shutil.move(_nifti(d, np.full((4, 4, 3), -500, np.int16)), d / "scan.dcm")


@accepted("nifti-plain-named-nii-gz", "nifti", (3, 4, 4))
def _(d):
    return shutil.move(_nifti(d, np.full((4, 4, 3), -500, np.int16), "ct.nii"), d / "scan.nii.gz")


@accepted("nifti-gz-named-nii", "nifti", (3, 4, 4))
def _(d):
    return shutil.move(_nifti(d, np.full((4, 4, 3), -500, np.int16)), d / "scan.nii")


@accepted("zip-named-dcm", "dicom", (2, 8, 8))
def _(d):
    paths = tiny_series(d / "s", 2)
    return _zip(d, {p.name: p.read_bytes() for p in paths}, "study.dcm")


@accepted("nifti-unknown-units", "nifti", (3, 4, 4))
def _(d):
    return _nifti_header_edit(d, "units.nii", xyzt_units=7)  # 7 is no NIfTI unit code


@accepted("one-slice-series", "dicom", (1, 8, 8))
def _(d):
    return tiny_series(d / "s", 1)


# ---------------------------------------------------------------------------------------------------- zips
@refused("zip-file-count", UnsafeInputError, r"zip has 4001 files, over the limit of 4000 files")
def _(d):
    return _zip(d, {f"s/{i:05d}.dcm": b"" for i in range(Limits().max_files + 1)})


@refused("zip-bomb-ratio", UnsafeInputError, r"entry 'a.dcm' expands \d+x \(limit 100x\): this looks like a zip bomb")
def _(d):
    return _zip(d, {"a.dcm": bytes(4 << 20)}, compression=zipfile.ZIP_DEFLATED)


@refused("zip-declares-huge-entry", UnsafeInputError, r"expands to 3221225472 bytes, over the limit of 1073741824")
def _(d):
    path = _zip(d, {"a.dcm": b"x" * 10})
    _patch_central(path, 24, 3 << 30)  # uncompressed size
    return path


@refused("zip-declares-huge-total", UnsafeInputError, r"zip expands to 2831155200 bytes in total, over the limit")
def _(d):
    path = _zip(d, {f"a{i}.dcm": b"x" * 10 for i in range(3)})
    _patch_central(path, 24, 900 << 20)  # each under the per-file limit, with a harmless ratio,
    _patch_central(path, 20, 900 << 20)  # but 2.7 GB together
    return path


@refused("zip-lies-about-size", CorruptInputError, r"zip entry 'a.dcm' cannot be decompressed, .*\(Bad CRC-32")
def _(d):
    path = _zip(d, {"a.dcm": bytes(2 << 20)}, compression=zipfile.ZIP_DEFLATED)
    _patch_central(path, 24, 100)  # claims 100 bytes, holds 2 MB: extraction stops at 100 and the CRC fails
    return path


@refused("zip-encrypted", UnsupportedInputError, r"zip entry 'a.dcm' is encrypted")
def _(d):
    path = _zip(d, {"a.dcm": b"x" * 10})
    _patch_central(path, 8, 1, "<H")  # general purpose flag bit 0
    return path


@refused("zip-truncated", CorruptInputError, r"upload.zip: not a readable zip archive")
def _(d):
    path = _zip(d, {p.name: p.read_bytes() for p in tiny_series(d / "s", 2)})
    path.write_bytes(path.read_bytes()[:300])
    return path


@refused("zip-damaged-deflate", CorruptInputError, r"zip entry 'a.dcm' cannot be decompressed, the archive is damaged")
def _(d):
    path = _zip(d, {"a.dcm": bytes(range(256)) * 8}, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    data[30 + len("a.dcm")] ^= 0b110  # the first deflate block header: "invalid block type" (found by fuzzing)
    path.write_bytes(bytes(data))
    return path


@refused("zip-unknown-compression", UnsupportedInputError, r"zip entry 'a.dcm' uses a compression method .* not supp")
def _(d):
    path = _zip(d, {"a.dcm": b"x" * 10})
    _patch_central(path, 10, 99, "<H")  # compression method 99 (AE-x encryption marker, or just garbage)
    return path


@refused("zip-nested", UnsupportedInputError, r"inner.zip: a zip inside an upload is not opened; upload it directly")
def _(d):
    inner = _zip(d, {"a.dcm": bytes(4 << 20)}, "inner.zip", compression=zipfile.ZIP_DEFLATED)
    return _zip(d, {"inner.zip": inner.read_bytes()})


@refused("zip-only-junk", UnsupportedInputError, r"empty upload: no files found in upload.zip")
def _(d):
    return _zip(d, {"__MACOSX/._a.dcm": b"x", ".DS_Store": b"x", "series/": b""})


for _name, _member, _fragment in [
    ("zip-absolute-posix", "/tmp/evil.dcm", "has an absolute path"),
    ("zip-windows-drive", "C:\\Windows\\evil.dcm", "has an absolute path"),
    ("zip-windows-unc", "\\\\server\\share\\evil.dcm", "has an absolute path"),
    ("zip-dotdot-backslash", "..\\evil.dcm", "escapes the extraction folder with '..'"),
    ("zip-dotdot-nested", "series/../../evil.dcm", "escapes the extraction folder with '..'"),
]:
    refused(_name, UnsafeInputError, re.escape(_fragment))(
        lambda d, member=_member: _zip(d, {"ok.dcm": b"x", zipfile.ZipInfo(member): b"x"})
    )


@refused("zip-symlink-to-folder", UnsafeInputError, r"zip entry 'series' is a symbolic link")
def _(d):
    link = zipfile.ZipInfo("series")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip(d, {link: b"/etc", "series/passwd": b"x"})


# ---------------------------------------------------------------------------------------------------- NIfTI
@refused("nifti-minus-inf", CorruptInputError, r"1 voxel\(s\) are NaN or infinite")
def _(d):
    data = np.full((4, 4, 3), -500, np.float32)
    data[1, 2, 0] = -np.inf
    return _nifti(d, data)


@refused("nifti-scale-overflow", CorruptInputError, r"48 voxel\(s\) are NaN or infinite")
def _(d):
    return _nifti_header_edit(d, "scl.nii", scl_slope=1e38, scl_inter=1e38)


@refused("nifti-5d", UnsupportedInputError, r"4-D NIfTI of shape \(4, 4, 3, 1, 2\) \(2 volumes\)")
def _(d):
    return _nifti(d, np.zeros((4, 4, 3, 1, 2), np.int16))


@refused("nifti-rgb24", UnsupportedInputError, r"NIfTI datatype .*'R', 'u1'.* is not a numeric scalar")
def _(d):
    return _nifti(d, np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))


@refused("nifti-complex128", UnsupportedInputError, r"NIfTI datatype complex128 is not a numeric scalar")
def _(d):
    return _nifti(d, np.zeros((4, 4, 3), np.complex128))


@refused("nifti-binary-datatype", CorruptInputError, r"bin.nii: not a readable NIfTI file .*data code 1 not supported")
def _(d):
    return _nifti_header_edit(d, "bin.nii", datatype=1, bitpix=1)


@refused("nifti-huge-dims", UnsafeInputError, r"huge.nii: \(4096, 4096, 2000\) voxels need more than 2147483648 bytes")
def _(d):
    return _nifti_header_edit(d, "huge.nii", dim=[3, 4096, 4096, 2000, 1, 1, 1, 1])


@refused("nifti-nan-affine", CorruptInputError, r"nan.nii: NIfTI affine is not usable")
def _(d):
    return _nifti_header_edit(d, "nan.nii", sform_code=1, srow_x=[np.nan, 0, 0, 0])


@refused("nifti-singular-affine", CorruptInputError, r"flat.nii: NIfTI affine is not usable")
def _(d):
    return _nifti_header_edit(d, "flat.nii", sform_code=1, srow_x=[0, 0, 0, 0], srow_y=[0, 0, 0, 0])


@refused("nifti-bad-quaternion", CorruptInputError, r"q.nii: NIfTI qform/sform is not usable \(w2 should be positive")
def _(d):
    """The sform gives a good affine, the qform's quaternion has b^2 + c^2 + d^2 > 1 (found by fuzzing)."""
    return _nifti_header_edit(d, "q.nii", qform_code=1, sform_code=1, quatern_b=1.0, quatern_c=1.0)


@refused("nifti-gz-damaged-stream", CorruptInputError, r"ct.nii.gz: not a NIfTI file \(no NIfTI header\)")
def _(d):
    """A .nii.gz whose deflate stream is damaged in its first block: the format sniffer must not crash (fuzzing)."""
    path = _nifti(d, np.full((4, 4, 3), -500, np.int16))
    data = bytearray(path.read_bytes())
    data[10] ^= 0b110  # first deflate block header after the 10-byte gzip header: "invalid block type"
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------------- images
@refused("png-declares-100000-squared", UnsafeInputError, r"huge.png: image over the decompression-bomb size limit")
def _(d):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    (d / "huge.png").write_bytes(png)
    return d / "huge.png"


@refused("png-real-bomb-4097", UnsafeInputError, r"bomb.png: image of 4097x4097 pixels is over the limit of 16777216")
def _(d):
    """16 KB on disk, 16.8 M pixels once decoded: refused from the header."""
    w = h = 4097
    idat = zlib.compress(b"\0" * ((w + 1) * h), 9)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    (d / "bomb.png").write_bytes(png)
    return d / "bomb.png"


@refused("jpeg-declares-65000-squared", UnsafeInputError, r"big.jpg: image over the decompression-bomb size limit")
def _(d):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    (d / "big.jpg").write_bytes(bytes(data))
    return d / "big.jpg"


@refused("png-text-chunk-bomb", UnsafeInputError, r"ztxt.png: PNG metadata expands beyond the decoder's limit")
def _(d):
    (d / "ztxt.png").write_bytes(_png_with(_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"A" * (8 << 20)))))
    return d / "ztxt.png"


@refused("png-icc-profile-bomb", UnsafeInputError, r"iccp.png: PNG metadata expands beyond the decoder's limit")
def _(d):
    (d / "iccp.png").write_bytes(_png_with(_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"A" * (8 << 20)))))
    return d / "iccp.png"


@refused("png-short-ihdr", CorruptInputError, r"short.png: image is truncated or damaged")
def _(d):
    (d / "short.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", b"\0\0\0\x08") + _chunk(b"IEND", b""))
    return d / "short.png"


@refused("png-broken-chunk", CorruptInputError, r"broken.png: image is truncated or damaged \(broken PNG file")
def _(d):
    """The image data split in two chunks, the second with a type that is not letters: PIL fails in load()."""
    png = _png()
    at = png.find(b"IDAT")
    size = struct.unpack(">I", png[at - 4 : at])[0]
    idat = png[at + 4 : at + 4 + size]
    broken = _chunk(b"IDAT", idat[:5]) + _chunk(b"\xaf;\xef\xa7", idat[5:])
    (d / "broken.png").write_bytes(png[: at - 4] + broken + png[at + 8 + size :])
    return d / "broken.png"


# ---------------------------------------------------------------------------------------------------- empty
@refused("empty-png", UnsupportedInputError, r"empty upload: scan.png is 0 bytes")
def _(d):
    (d / "scan.png").write_bytes(b"")
    return d / "scan.png"


@refused("empty-zip-file", UnsupportedInputError, r"empty upload: study.zip is 0 bytes")
def _(d):
    (d / "study.zip").write_bytes(b"")
    return d / "study.zip"


@refused("empty-nested-folders", UnsupportedInputError, r"empty upload: no files found in upload")
def _(d):
    (d / "upload" / "a" / "b").mkdir(parents=True)
    (d / "upload" / ".DS_Store").write_bytes(b"junk")
    return d / "upload"


# ----------------------------------------------------------------------------------------------------- tests
def _args(src) -> list[str]:
    return [str(p) for p in src] if isinstance(src, list) else [str(src)]


def _check_one_line(res, error: type[IchdemoError], fragment: str, tmp_path: Path) -> None:
    assert res.rc == 2, (res.rc, res.out, res.err)
    assert res.out == ""
    assert res.err.startswith("error: ") and res.err.endswith("\n") and res.err.count("\n") == 1, res.err
    assert re.search(fragment, res.err), res.err
    assert "Traceback" not in res.err and str(tmp_path) not in res.err


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # pydicom/numpy on damaged values
@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_by_loader_and_cli(name, tmp_path, sandbox, cli):
    build, error, fragment = CASES[name]
    src = build(tmp_path)
    with pytest.raises(error, match=fragment) as info:
        load_volume(src)
    message = str(info.value)
    assert type(info.value) is error  # the specific class, not merely a subclass of it
    assert "\n" not in message and len(message) < 400
    assert str(tmp_path) not in message  # names files, never the server's folders
    assert sandbox.leftovers() == []  # extraction folders removed on failure too
    _check_one_line(cli("info", *_args(src)), error, fragment, tmp_path)
    assert sandbox.leftovers() == []


# predict loads the model before the input, so each call costs a model load: one case of each kind is enough here
PREDICT_CASES = [
    "dicom-truncated-pixels", "dicom-ts-mpeg2", "dicom-unknown-vr", "dicom-modality-MR", "dicom-multi-frame",
    "dicom-two-matrix-sizes", "html-named-dcm", "zip-bomb-ratio", "zip-dotdot-nested", "nifti-minus-inf",
    "nifti-rgb24", "png-text-chunk-bomb", "empty-zip-file",
]


@pytest.mark.parametrize("name", PREDICT_CASES)
def test_predict_refuses_and_writes_nothing(name, tmp_path, sandbox, cli, tiny_model):
    build, error, fragment = CASES[name]
    src = build(tmp_path)
    out = tmp_path / "pred"
    _check_one_line(cli("predict", *_args(src), "--model", tiny_model, "--out", out), error, fragment, tmp_path)
    assert not out.exists() or not any(out.rglob("*"))  # no half-written output
    assert sandbox.leftovers() == []


@pytest.mark.parametrize("name", sorted(OK_CASES))
def test_odd_but_valid_inputs_load(name, tmp_path, sandbox, cli):
    build, source, shape = OK_CASES[name]
    src = build(tmp_path)
    vol = load_volume(src)
    assert (vol.source, vol.shape) == (source, shape)
    assert vol.data.dtype == np.float32 and np.isfinite(vol.data).all()
    assert all(np.isfinite(vol.spacing)) and min(vol.spacing) > 0
    res = cli("info", *_args(src))
    assert res.rc == 0 and res.err == "" and f"slices:   {shape[0]} of {shape[2]} x {shape[1]} px" in res.out
    assert sandbox.leftovers() == []


def test_one_slice_series_spacing_and_predict(tmp_path, cli, tiny_model):
    """One slice: spacing from the header (SpacingBetweenSlices), and predict runs (edge slices repeated)."""
    paths = tiny_series(tmp_path / "s", 1, (16, 16))
    vol = load_volume(paths)
    assert vol.spacing == SPACING and not vol.spacing_assumed
    rewrite(paths, lambda ds: [ds.__delitem__(k) for k in ("SpacingBetweenSlices", "SliceThickness")])
    assert load_volume(paths).spacing_assumed  # no way to know the slice thickness: flagged, not invented silently
    res = cli("predict", paths[0], "--model", tiny_model, "--out", tmp_path / "out")
    assert res.rc == 0, res.err
    assert (tmp_path / "out" / "labels.nii.gz").is_file()


@pytest.fixture(scope="module")
def series_2001(tmp_path_factory) -> list[Path]:
    return tiny_series(tmp_path_factory.mktemp("long") / "s", Limits().max_slices + 1)


def test_series_at_the_slice_limit_loads(series_2001):
    vol = load_volume(series_2001[:-1])
    assert vol.shape == (2000, 8, 8)
    np.testing.assert_array_equal(vol.data[:, 0, 0], np.arange(2000, dtype=np.float32))  # sorted, HU exact


def test_series_over_the_slice_limit_is_refused(series_2001, cli, tmp_path):
    fragment = r"DICOM series: 2001 slices is over the limit of 2000 slices"
    with pytest.raises(UnsafeInputError, match=fragment):
        load_volume(series_2001[0].parent)
    _check_one_line(cli("info", series_2001[0].parent), UnsafeInputError, fragment, tmp_path)


def test_nested_zip_bomb_is_never_opened(tmp_path, sandbox):
    """A series zipped with a bomb inside: the series loads, the inner archive is skipped, not expanded."""
    bomb = _zip(tmp_path, {"a.dcm": bytes(64 << 20)}, "bomb.zip", compression=zipfile.ZIP_DEFLATED)
    series = {p.name: p.read_bytes() for p in tiny_series(tmp_path / "s", 2)}
    outer = _zip(tmp_path, {**series, "extra/bomb.zip": bomb.read_bytes()})
    vol = load_volume(outer)
    assert vol.shape == (2, 8, 8)
    assert any("skipped 1 file(s)" in w and "bomb.zip" in w for w in vol.warnings)
    assert sandbox.leftovers() == []


def test_a_failed_zip_extraction_writes_nothing_outside_its_folder(tmp_path, sandbox):
    """The bad member comes after good ones: nothing lands next to the archive, the temp folder is removed."""
    good = {p.name: p.read_bytes() for p in tiny_series(tmp_path / "s", 2)}
    path = _zip(tmp_path / "s", {**good, "../../escaped.dcm": b"x"})
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UnsafeInputError):
        load_volume(path)
    assert sorted(tmp_path.rglob("*")) == before
    assert sandbox.leftovers() == []


def test_loader_keeps_serving_after_hostile_inputs(tmp_path):
    """Global state survives a run of hostile inputs: PIL's bomb limit, pydicom's config, the next good load."""
    import pydicom.config

    pil_limit, validation = Image.MAX_IMAGE_PIXELS, pydicom.config.settings.reading_validation_mode
    for name in ("png-declares-100000-squared", "png-text-chunk-bomb", "dicom-unknown-vr", "zip-dotdot-nested"):
        build, error, _ = CASES[name]
        folder = tmp_path / name
        folder.mkdir()
        with pytest.raises(error):
            load_volume(build(folder))
    assert Image.MAX_IMAGE_PIXELS == pil_limit
    assert pydicom.config.settings.reading_validation_mode == validation
    assert load_volume(tiny_series(tmp_path / "good", 3)).shape == (3, 8, 8)


# ------------------------------------------------------------------------------------------- real processes
def _run_cli(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # the default warning filters, as a user
    return subprocess.run(
        [sys.executable, "-m", "ichdemo", *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", ["zip-dotdot-nested", "nifti-5d", "dicom-modality-PT"])
def test_real_process_prints_one_line(name, tmp_path):
    build, _, fragment = CASES[name]
    proc = _run_cli("info", *_args(build(tmp_path)))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert re.search(fragment, proc.stderr)


def test_real_process_library_warnings_stay_off_stderr(tmp_path):
    path = tiny_series(tmp_path / "s", size=(64, 64))[0]
    path.write_bytes(path.read_bytes()[:420])  # cut inside SOPClassUID
    proc = _run_cli("info", path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_nifti_size_limit_counts_stored_bytes(tmp_path):
    """A float64 .nii.gz decompresses to 8 bytes per voxel: the uncompressed-size limit counts those, not the
    4 bytes per voxel of the float32 result (a few MB of gzip could otherwise make the server inflate twice the
    limit)."""
    path = _nifti(tmp_path, np.zeros((16, 16, 8), np.float64), "f64.nii.gz")  # 2048 voxels: 16 KiB stored
    assert path.stat().st_size < 1000
    with pytest.raises(UnsafeInputError, match=r"f64.nii.gz: \(16, 16, 8\) voxels need more than 12000 bytes"):
        load_volume(path, limits=Limits(max_total_bytes=12000))
    assert load_volume(path, limits=Limits(max_total_bytes=16384)).shape == (8, 16, 16)

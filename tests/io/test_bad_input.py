"""Every bad input a user may bring gives its own typed error with a one-line message a person can act on."""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from ichdemo.errors import ConfigError, CorruptInputError, IchdemoError, UnsafeInputError, UnsupportedInputError
from ichdemo.io import load_volume
from ichdemo.io.dicom_write import write_dicom_series
from ichdemo.io.limits import Limits
from ichdemo.io.nifti import grid_affine


def series(tmp_path: Path, n: int = 3, size=(8, 8)) -> list[Path]:
    hu = np.zeros((n, *size), np.float32)
    return write_dicom_series(hu, (2.0, 0.5, 0.5), tmp_path / "s")


def rewrite(paths, change):
    for p in paths:
        ds = pydicom.dcmread(p)
        change(ds)
        ds.save_as(p)


def fails(src, error, match, **kw):
    with pytest.raises(error, match=match) as info:
        load_volume(src, **kw)
    assert isinstance(info.value, IchdemoError)
    assert "\n" not in str(info.value)  # the CLI prints one line
    return str(info.value)


# ------------------------------------------------------------------------------------------------- empty / unknown
def test_empty_list(tmp_path):
    fails([], UnsupportedInputError, "empty upload")


def test_zero_byte_file(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"")
    fails(tmp_path / "a.dcm", UnsupportedInputError, r"empty upload: a.dcm is 0 bytes")


def test_only_zero_byte_files(tmp_path):
    for n in range(2):
        (tmp_path / f"{n}.dcm").write_bytes(b"")
    fails(tmp_path, UnsupportedInputError, r"empty upload: all 2 files are 0 bytes \(0.dcm, 1.dcm\)")


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    fails(tmp_path, UnsupportedInputError, "empty upload: no files found")


def test_empty_zip(tmp_path):
    zipfile.ZipFile(tmp_path / "a.zip", "w").close()
    fails(tmp_path / "a.zip", UnsupportedInputError, "empty upload")


def test_missing_path(tmp_path):
    fails(tmp_path / "nope.dcm", UnsupportedInputError, "no such file or folder")


def test_text_named_dcm_is_not_dicom(tmp_path):
    (tmp_path / "scan.dcm").write_text("patient notes, not an image\n" * 20)
    fails(tmp_path / "scan.dcm", CorruptInputError, r"scan.dcm: not a DICOM file")


def test_unknown_type(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    fails(tmp_path / "notes.txt", UnsupportedInputError, "unrecognised file type; expected DICOM, NIfTI")


def test_text_named_nii(tmp_path):
    (tmp_path / "a.nii.gz").write_text("not nifti")
    fails(tmp_path / "a.nii.gz", CorruptInputError, "not a NIfTI file")


def test_junk_next_to_a_series_is_skipped_with_a_warning(tmp_path):
    paths = series(tmp_path)
    (paths[0].parent / "README.txt").write_text("export notes")
    (paths[0].parent / "empty.dcm").write_bytes(b"")
    vol = load_volume(paths[0].parent)
    assert vol.shape[0] == 3
    assert any("skipped 2 file(s)" in w for w in vol.warnings)


def test_bad_spacing_option(tmp_path):
    fails(tmp_path, ConfigError, "three positive numbers", spacing=(1, 0, 1))


# ------------------------------------------------------------------------------------------------------- DICOM
def test_truncated_pixel_data(tmp_path):
    path = series(tmp_path, 1, (64, 64))[0]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])
    fails(path, CorruptInputError, "CT0001.dcm: pixel data cannot be decoded .* truncated")


def test_truncated_header(tmp_path):
    path = series(tmp_path, 1, (64, 64))[0]
    path.write_bytes(path.read_bytes()[:1000])  # SOP class is there, image attributes are not
    fails(path, CorruptInputError, "CT Image Storage file without its image attributes .* truncated or corrupt")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_truncated_inside_the_first_tags(tmp_path):
    path = series(tmp_path, 1, (64, 64))[0]
    path.write_bytes(path.read_bytes()[:420])
    fails(path, CorruptInputError, r"no image in 1 file\(s\) .* truncated")


def test_truncated_slice_inside_a_series(tmp_path):
    paths = series(tmp_path, 4, (32, 32))
    paths[2].write_bytes(paths[2].read_bytes()[:-500])
    fails(paths[0].parent, CorruptInputError, "CT0003.dcm: pixel data cannot be decoded")


def test_no_pixel_data(tmp_path):
    paths = series(tmp_path, 1)
    rewrite(paths, lambda ds: ds.__delitem__("PixelData"))
    fails(paths, CorruptInputError, "CT0001.dcm: DICOM without pixel data")


def test_non_image_dicom_object():
    path = get_testdata_file("rtplan.dcm", download=False)
    if path is None:
        pytest.skip("rtplan.dcm not shipped")
    fails(path, CorruptInputError, r"DICOM without pixel data: no image in 1 file\(s\) \(RT Plan Storage\)")


def test_mr_modality(tmp_path):
    paths = series(tmp_path)
    rewrite(paths, lambda ds: setattr(ds, "Modality", "MR"))
    fails(paths, UnsupportedInputError, r"modality is MR .* not CT")


def test_pydicom_mr_file():
    path = get_testdata_file("MR_small.dcm", download=False)
    fails(path, UnsupportedInputError, r"modality is MR \(MR Image Storage\), not CT")


def test_mixed_slice_sizes(tmp_path):
    paths = series(tmp_path, 3, (8, 8))
    odd = write_dicom_series(np.zeros((1, 6, 8), np.float32), (2.0, 0.5, 0.5), tmp_path / "odd")[0]
    series_uid = pydicom.dcmread(paths[0]).SeriesInstanceUID

    def join(ds):
        ds.SeriesInstanceUID = series_uid
        ds.ImagePositionPatient = [0, 0, 50]

    rewrite([odd], join)
    fails(
        paths + [odd],
        UnsupportedInputError,
        r"inconsistent slice sizes inside one series: 8x8 \(3 slices\), "
        r"8x6 \(1 slices\)",
    )


def test_inconsistent_orientation(tmp_path):
    paths = series(tmp_path)
    rewrite(paths[1:2], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    fails(paths, UnsupportedInputError, "inconsistent ImageOrientationPatient")


def test_duplicate_positions(tmp_path):
    paths = series(tmp_path)
    rewrite(paths[1:2], lambda ds: setattr(ds, "ImagePositionPatient", pydicom.dcmread(paths[0]).ImagePositionPatient))
    fails(
        paths,
        UnsupportedInputError,
        r"duplicate slice positions: 1 position\(s\) hold more than one image \(e.g. CT0001.dcm and CT0002.dcm",
    )


def test_multi_frame(tmp_path):
    paths = series(tmp_path, 1)
    rewrite(paths, lambda ds: setattr(ds, "NumberOfFrames", 2))
    fails(paths, UnsupportedInputError, r"multi-frame DICOM \(2 frames")


def test_colour_ct(tmp_path):
    paths = series(tmp_path, 1)

    def colour(ds):
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

    rewrite(paths, colour)
    fails(paths, UnsupportedInputError, r"colour DICOM image \(RGB, 3 samples per pixel\)")


def test_rgb_secondary_capture():
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)
    fails(path, UnsupportedInputError, "modality is OT")


def test_dicom_image_over_pixel_limit(tmp_path):
    paths = series(tmp_path, 1, (16, 16))
    fails(paths, UnsafeInputError, "16x16 pixels is over the limit of 100 pixels", limits=Limits(max_pixels=100))


def test_too_many_slices(tmp_path):
    paths = series(tmp_path, 4)
    fails(paths, UnsafeInputError, "4 slices is over the limit of 3", limits=Limits(max_slices=3))


def test_too_many_files(tmp_path):
    paths = series(tmp_path, 4)
    fails(paths, UnsafeInputError, "4 files, over the limit of 3 files", limits=Limits(max_files=3))


def test_file_over_byte_limit(tmp_path):
    paths = series(tmp_path, 1)
    fails(paths, UnsafeInputError, "over the limit of 100 bytes per file", limits=Limits(max_file_bytes=100))


# ------------------------------------------------------------------------------------------------------- zips
def test_zip_with_parent_escape(tmp_path):
    with zipfile.ZipFile(tmp_path / "u.zip", "w") as zf:
        zf.writestr("../x", b"escape")
    fails(tmp_path / "u.zip", UnsafeInputError, "escapes the extraction folder")
    assert not (tmp_path / "x").exists()


def test_zip_with_absolute_path(tmp_path):
    with zipfile.ZipFile(tmp_path / "u.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("/etc/cron.d/x"), b"abs")
    fails(tmp_path / "u.zip", UnsafeInputError, "absolute path")


def test_zip_with_symlink(tmp_path):
    info = zipfile.ZipInfo("series/link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "u.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    fails(tmp_path / "u.zip", UnsafeInputError, "symbolic link")


def test_zip_bomb(tmp_path):
    with zipfile.ZipFile(tmp_path / "u.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", bytes(4 << 20))
    fails(tmp_path / "u.zip", UnsafeInputError, "zip bomb")


def test_zip_over_total_size(tmp_path):
    paths = series(tmp_path, 3)
    with zipfile.ZipFile(tmp_path / "u.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, p.name)
    fails(
        tmp_path / "u.zip",
        UnsafeInputError,
        r"zip expands to \d+ bytes in total, over the limit of 1000",
        limits=Limits(max_total_bytes=1000),
    )


# ------------------------------------------------------------------------------------------------------ NIfTI
def test_four_d_nifti(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 5), np.int16), np.eye(4)), tmp_path / "fmri.nii.gz")
    fails(tmp_path / "fmri.nii.gz", UnsupportedInputError, r"4-D NIfTI of shape \(4, 4, 3, 5\) \(5 volumes\)")


def test_nan_nifti(tmp_path):
    data = np.zeros((4, 4, 3), np.float32)
    data[0, 0, :2] = np.nan
    data[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(data, grid_affine((1, 1, 1))), tmp_path / "nan.nii")
    fails(tmp_path / "nan.nii", CorruptInputError, r"3 voxel\(s\) are NaN or infinite")


def test_complex_nifti(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.complex64), np.eye(4)), tmp_path / "c.nii")
    fails(tmp_path / "c.nii", UnsupportedInputError, "not a numeric scalar")


def test_truncated_nifti(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((32, 32, 8), np.float32), np.eye(4)), tmp_path / "t.nii")
    path = tmp_path / "t.nii"
    path.write_bytes(path.read_bytes()[:5000])
    fails(path, CorruptInputError, "truncated or corrupt")


def test_two_niftis(tmp_path):
    for n in range(2):
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / f"{n}.nii.gz")
    fails(tmp_path, UnsupportedInputError, "2 NIfTI files given")


# ------------------------------------------------------------------------------------------------------ images
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (grey, 8 bit) with a tiny, unfinished data stream."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_png_refused_before_decoding(tmp_path):
    (tmp_path / "huge.png").write_bytes(_png_claiming(100_000, 100_000))
    fails(tmp_path / "huge.png", UnsafeInputError, r"huge.png: image over the decompression-bomb size .*\(10000000000 ")


def test_png_over_our_limit_but_under_pils(tmp_path):
    """5000 x 5000 is over the default 4096 x 4096 limit, read from the header before any decoding."""
    (tmp_path / "big.png").write_bytes(_png_claiming(5000, 5000))
    fails(tmp_path / "big.png", UnsafeInputError, "5000x5000 pixels is over the limit of 16777216 pixels")


def test_pil_decompression_bomb_error_kept_with_a_raised_limit(tmp_path):
    """With our own limit raised, PIL's bomb check (over 2 x 89 M pixels) still stops the read."""
    (tmp_path / "huge.png").write_bytes(_png_claiming(100_000, 100_000))
    fails(tmp_path / "huge.png", UnsafeInputError, "decompression-bomb", limits=Limits(max_pixels=10**12))


def test_png_over_a_lowered_limit(tmp_path):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "a.png")
    fails(tmp_path / "a.png", UnsafeInputError, "30x20 pixels is over the limit of 500", limits=Limits(max_pixels=500))


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 2])
    fails(tmp_path / "a.jpg", CorruptInputError, "truncated or damaged")


def test_nifti_limits_use_the_display_axes(tmp_path):
    """A sagittal stack of 40 slices of 30 x 20: display slices are the 30 axial ones, each 40 x 20 pixels."""
    affine = np.array([[0, 0, -1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # i->A, j->S, k->L
    nib.save(nib.Nifti1Image(np.zeros((20, 30, 40), np.int16), affine), tmp_path / "sag.nii.gz")
    assert load_volume(tmp_path / "sag.nii.gz", limits=Limits(max_slices=30)).shape == (30, 20, 40)
    fails(tmp_path / "sag.nii.gz", UnsafeInputError, "40x20 pixels is over", limits=Limits(max_pixels=799))

"""DICOM reading and writing: round trips, ordering, geometry, several series, compressed transfer syntaxes."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from ichdemo.errors import CorruptInputError, UnsupportedInputError
from ichdemo.io import describe, load_volume
from ichdemo.io import dicom as dicom_mod
from ichdemo.io.dicom import decode_pixels
from ichdemo.io.dicom_write import write_dicom_series

SPACING = (2.5, 0.5, 0.6)


def head_hu(shape=(8, 24, 20), seed=0) -> np.ndarray:
    """A tiny head-like HU volume: air, a bright skull ring, brain near 35 HU, noise, one 70 HU blob."""
    s, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h / 2.4), (xx - w / 2) / (w / 2.4))
    img = np.where(r < 1.0, 1200.0, -1000.0)
    img = np.where(r < 0.85, 35.0, img)
    vol = np.repeat(img[None], s, axis=0) + rng.normal(0, 5, shape)
    vol[s // 2, h // 2 - 2 : h // 2 + 2, w // 2 : w // 2 + 3] = 70.0
    return vol.astype(np.float32)


def read_all(paths):
    return [pydicom.dcmread(p) for p in paths]


@pytest.fixture
def series(tmp_path):
    hu = head_hu()
    paths = write_dicom_series(hu, SPACING, tmp_path / "series", seed=7)
    return hu, paths


def test_written_files_are_valid_ct(series):
    hu, paths = series
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "CT" and ds.RescaleType == "HU" and ds.pixel_array.dtype == np.int16
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    assert len(uids) == len(paths)
    assert [int(pydicom.dcmread(p).InstanceNumber) for p in paths] == list(range(1, len(paths) + 1))


def test_seeded_writer_is_reproducible(tmp_path):
    hu = head_hu()
    a = write_dicom_series(hu, SPACING, tmp_path / "a", seed=3)
    b = write_dicom_series(hu, SPACING, tmp_path / "b", seed=3)
    c = write_dicom_series(hu, SPACING, tmp_path / "c", seed=4)
    assert pydicom.dcmread(a[0]).SOPInstanceUID == pydicom.dcmread(b[0]).SOPInstanceUID
    assert pydicom.dcmread(a[0]).SOPInstanceUID != pydicom.dcmread(c[0]).SOPInstanceUID


def _check_round_trip(vol, hu, paths=None):
    assert vol.source == "dicom" and not vol.prewindowed and not vol.spacing_assumed
    assert vol.data.dtype == np.float32 and vol.data.shape == hu.shape
    assert np.abs(vol.data - hu).max() <= 1.0
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.slice_names == [str(i) for i in range(1, hu.shape[0] + 1)]
    assert len(vol.dicom.sop_instance_uids) == hu.shape[0]
    zs = [p[2] for p in vol.dicom.image_positions]
    assert zs == sorted(zs)
    if paths is not None:
        assert vol.dicom.files == [str(p) for p in paths]


def test_round_trip_folder(series):
    hu, paths = series
    vol = load_volume(paths[0].parent)
    _check_round_trip(vol, hu, paths)
    assert vol.warnings == []


def test_round_trip_shuffled_list(series):
    hu, paths = series
    shuffled = paths[:]
    random.Random(1).shuffle(shuffled)
    assert shuffled != paths
    _check_round_trip(load_volume(shuffled), hu, paths)


def test_round_trip_zip_and_dotfiles_ignored(series, tmp_path):
    hu, paths = series
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in reversed(paths):
            zf.write(p, f"study/{p.name}")
        zf.writestr("__MACOSX/study/._CT0001.dcm", b"junk")
        zf.writestr("study/.DS_Store", b"junk")
    vol = load_volume(archive)
    _check_round_trip(vol, hu)
    assert vol.dicom.files == []  # extracted to a temporary folder that is gone


def test_affine_maps_voxels_to_ras_positions(series):
    _, paths = series
    vol = load_volume(paths[0].parent)
    ds = pydicom.dcmread(paths[3])
    lps = np.array([float(v) for v in ds.ImagePositionPatient])
    ras = vol.affine @ np.array([0, 0, 3, 1.0])
    assert ras[:3] == pytest.approx(lps * [-1, -1, 1])
    # column index moves along +x (LPS) by the column spacing, row index along +y by the row spacing
    step = vol.affine @ np.array([2, 5, 3, 1.0]) - ras
    assert step[:3] == pytest.approx([-2 * SPACING[2], -5 * SPACING[1], 0])


def test_oblique_orientation_affine(tmp_path):
    hu = head_hu((3, 10, 12))
    paths = write_dicom_series(hu, (3.0, 0.7, 0.8), tmp_path)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    row, col = np.array([1.0, 0, 0]), np.array([0, c, s])
    normal = np.cross(row, col)
    origin = np.array([10.0, -20.0, 30.0])
    for k, ds in enumerate(read_all(paths)):
        ds.ImageOrientationPatient = [*row, *col]
        ds.ImagePositionPatient = list(origin + normal * 3.0 * (2 - k))  # written in reverse order
        ds.save_as(paths[k])
    vol = load_volume(paths)
    assert vol.warnings == []
    assert np.abs(vol.data - hu[::-1]).max() <= 1.0  # sorted by position along the normal, not file order
    world = vol.affine @ np.array([4, 5, 1, 1.0])  # col 4, row 5 of the middle slice
    expect = origin + normal * 3.0 + 4 * 0.8 * row + 5 * 0.7 * col
    assert world[:3] == pytest.approx(expect * [-1, -1, 1])


def test_position_beats_instance_number(series):
    hu, paths = series
    for k, ds in enumerate(read_all(paths)):
        ds.InstanceNumber = len(paths) - k
        ds.save_as(paths[k])
    vol = load_volume(paths)
    assert np.abs(vol.data - hu).max() <= 1.0


def test_instance_number_fallback_warns(series):
    hu, paths = series
    order = list(range(len(paths)))
    random.Random(2).shuffle(order)
    for k, ds in enumerate(read_all(paths)):
        del ds.ImagePositionPatient
        ds.save_as(paths[k])
    vol = load_volume([paths[i] for i in order])
    assert np.abs(vol.data - hu).max() <= 1.0
    assert any("sorted by InstanceNumber" in w for w in vol.warnings)
    assert vol.spacing[0] == pytest.approx(2.5)  # from SpacingBetweenSlices


def test_rescale_slope_and_intercept_applied(tmp_path):
    paths = write_dicom_series(np.zeros((2, 4, 4), np.float32), SPACING, tmp_path)
    ds = pydicom.dcmread(paths[0])
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.PixelData = np.full((4, 4), 600, "<i2").tobytes()
    ds.save_as(paths[0])
    vol = load_volume(paths)
    assert vol.data[0] == pytest.approx(np.full((4, 4), 200.0))


def test_spacing_from_positions_not_slice_thickness(series):
    _, paths = series
    for k, ds in enumerate(read_all(paths)):
        ds.SliceThickness = 1.0
        del ds.SpacingBetweenSlices
        ds.save_as(paths[k])
    assert load_volume(paths).spacing[0] == pytest.approx(2.5)


def test_uneven_spacing_warns(series):
    _, paths = series
    del paths[3]  # a gap: one step is twice the others
    vol = load_volume(paths)
    assert vol.spacing[0] == pytest.approx(2.5)
    assert any("uneven slice spacing" in w and "missing" in w for w in vol.warnings)


def test_gantry_tilt_warns_and_affine_keeps_positions(series):
    _, paths = series
    shift = np.tan(np.radians(15)) * 2.5
    for k, ds in enumerate(read_all(paths)):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * shift, z]
        ds.save_as(paths[k])
    vol = load_volume(paths)
    assert any("gantry tilt" in w and "15.0 degrees" in w for w in vol.warnings)
    assert vol.affine[1, 2] == pytest.approx(-shift)  # RAS y of the slice step (LPS y flipped)
    assert vol.spacing[0] == pytest.approx(2.5)


def test_two_series_takes_the_bigger_and_reports_the_other(tmp_path):
    big, small = head_hu((6, 8, 8), seed=1), head_hu((3, 8, 8), seed=2)
    write_dicom_series(big, SPACING, tmp_path / "a", series_description="AXIAL BRAIN")
    write_dicom_series(small, SPACING, tmp_path / "b", series_description="SCOUTISH", series_number=2)
    vol = load_volume(tmp_path)
    assert vol.shape == (6, 8, 8) and np.abs(vol.data - big).max() <= 1.0
    assert any("found 2 series" in w and "SCOUTISH" in w and "3 slice(s)" in w for w in vol.warnings)
    assert "AXIAL BRAIN" in vol.description


def test_same_file_twice_is_read_once(series):
    hu, paths = series
    vol = load_volume(paths + [paths[2]])
    assert vol.shape == hu.shape
    assert any("duplicate file" in w for w in vol.warnings)


def test_single_slice_allowed(tmp_path):
    hu = head_hu((1, 8, 8))
    paths = write_dicom_series(hu, (4.0, 0.5, 0.5), tmp_path)
    vol = load_volume(paths[0])
    assert vol.shape == (1, 8, 8) and vol.spacing == pytest.approx((4.0, 0.5, 0.5))
    assert vol.affine[2, 2] == pytest.approx(4.0)


def test_no_patient_identifiers_leak(tmp_path):
    paths = write_dicom_series(head_hu((3, 8, 8)), SPACING, tmp_path, patient_name="DOE^JANE", patient_id="MRN12345")
    for k, ds in enumerate(read_all(paths)):
        ds.PatientBirthDate = "19610203"
        ds.save_as(paths[k])
    write_dicom_series(head_hu((2, 8, 8)), SPACING, tmp_path / "other", patient_name="DOE^JANE")
    vol = load_volume(tmp_path)
    text = " ".join([vol.description, *vol.warnings, repr(vol.meta), describe(vol)])
    for secret in ("DOE", "JANE", "MRN12345", "19610203"):
        assert secret not in text


def test_describe_lists_facts(series):
    _, paths = series
    text = describe(load_volume(paths))
    assert "8 of 20 x 24 px" in text and "2.5 x 0.5 x 0.6 mm" in text and "HU" in text
    assert "warnings: none" in text


# ------------------------------------------------------------------------------------------ compressed syntaxes
def pydicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not shipped locally")
    return path


@pytest.mark.parametrize(
    "compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_lossless_decoders_match_uncompressed_twin(compressed):
    reference = decode_pixels(pydicom.dcmread(pydicom_file("MR_small.dcm")))
    ds = pydicom.dcmread(pydicom_file(compressed))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(decode_pixels(ds, compressed), reference)


@pytest.mark.parametrize("name, shape", [("JPEG2000.dcm", (1024, 256)), ("JPGExtended.dcm", (1024, 256))])
def test_lossy_decoders_give_an_image(name, shape):
    arr = decode_pixels(pydicom.dcmread(pydicom_file(name)), name)
    assert arr.shape == shape and arr.std() > 0


def test_compressed_ct_slice_loads_as_hu():
    path = pydicom_file("693_J2KI.dcm")  # JPEG 2000 CT slice, stored = HU + 1024
    vol = load_volume(path)
    assert vol.shape == (1, 512, 512)
    np.testing.assert_array_equal(vol.data[0], pydicom.dcmread(path).pixel_array.astype(np.float32) - 1024)
    assert np.percentile(vol.data, 99) > 500  # bone is there
    assert "JPEG 2000" in vol.meta["transfer_syntax"]


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_round_trip(tmp_path, syntax):
    hu = head_hu((3, 64, 64))  # JPEG 2000 needs tiles larger than its resolution levels
    paths = write_dicom_series(hu, SPACING, tmp_path)
    for k, ds in enumerate(read_all(paths)):
        ds.compress(syntax)
        ds.save_as(paths[k])
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    vol = load_volume(paths[0].parent)
    assert np.abs(vol.data - hu).max() <= 1.0


def test_rgb_jpeg_is_rejected_by_the_greyscale_rule():
    with pytest.raises(UnsupportedInputError, match="colour DICOM image"):
        decode_pixels(pydicom.dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm")), "SC_rgb_jpeg_dcmtk.dcm")


def test_undecodable_codestream_names_the_transfer_syntax():
    with pytest.raises(CorruptInputError, match="JPEG Extended"):
        decode_pixels(pydicom.dcmread(pydicom_file("JPEG-lossy.dcm")), "JPEG-lossy.dcm")


def test_transfer_syntax_without_any_decoder(series):
    _, paths = series
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    with pytest.raises(UnsupportedInputError, match="MPEG2.*cannot be decoded"):
        decode_pixels(ds, "video.dcm")


def test_missing_decoder_plugin_names_the_package(series, monkeypatch):
    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg"]

    monkeypatch.setattr(dicom_mod, "get_decoder", lambda uid: Unavailable())
    ds = pydicom.dcmread(pydicom_file("MR_small_jp2klossless.dcm"))
    with pytest.raises(UnsupportedInputError, match=r"JPEG 2000.*pip install pylibjpeg-openjpeg"):
        decode_pixels(ds, "x.dcm")


def test_dicom_named_png_loads_by_content(series, tmp_path):
    hu, paths = series
    disguised = tmp_path / "slice.png"
    disguised.write_bytes(Path(paths[0]).read_bytes())
    vol = load_volume(disguised)
    assert vol.source == "dicom" and np.abs(vol.data[0] - hu[0]).max() <= 1.0


def test_degenerate_orientation_falls_back_to_instance_number(series):
    hu, paths = series
    for k, ds in enumerate(read_all(paths)):
        ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
        ds.InstanceNumber = k + 1
        ds.save_as(paths[k])
    vol = load_volume(paths[::-1])
    assert np.abs(vol.data - hu).max() <= 1.0
    assert np.isfinite(vol.affine).all()
    assert any("sorted by InstanceNumber" in w for w in vol.warnings)


def test_jpeg_baseline_grey_series_loads(tmp_path):
    """A greyscale JPEG baseline CT slice (8-bit, encapsulated) decodes through the installed plugins."""
    grey = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) - 1024
    path = write_dicom_series(np.zeros((1, 64, 64), np.float32), SPACING, tmp_path)[0]
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path)
    vol = load_volume(path)
    assert vol.meta["transfer_syntax"] == JPEGBaseline8Bit.name
    assert np.abs(vol.data[0] - expected).max() <= 2  # IDCTs may differ by a grey level

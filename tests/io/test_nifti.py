"""NIfTI: round trip with affine, display orientation, original-grid write-back, header checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import aff2axcodes

from ichdemo.io import load_volume, to_source_grid, write_nifti
from ichdemo.io.nifti import grid_affine, load_nifti


def ct_like(shape=(6, 10, 12), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(30, 400, shape)).astype(np.float32)


def test_round_trip_with_spacing(tmp_path):
    arr = ct_like()
    path = write_nifti(arr, (5.0, 0.45, 0.5), tmp_path / "ct")
    assert path.name == "ct.nii.gz"
    vol = load_volume(path)
    assert vol.source == "nifti" and not vol.prewindowed
    np.testing.assert_array_equal(vol.data, arr)
    np.testing.assert_allclose(vol.affine, grid_affine((5.0, 0.45, 0.5)))
    assert vol.spacing == pytest.approx((5.0, 0.45, 0.5))
    assert vol.warnings == []


def test_round_trip_with_affine(tmp_path):
    arr = ct_like()
    affine = grid_affine((2.0, 0.7, 0.8))
    affine[:3, 3] = [12.0, -30.0, 44.0]
    vol = load_volume(write_nifti(arr, affine, tmp_path / "ct.nii"))
    np.testing.assert_array_equal(vol.data, arr)
    np.testing.assert_allclose(vol.affine, affine)


def test_dicom_like_volume_survives_write_and_read(tmp_path):
    """A Volume's (data, affine) pair is what write_nifti takes, and comes back unchanged."""
    arr = ct_like((3, 5, 4))
    first = load_volume(write_nifti(arr, (3.0, 1.0, 1.0), tmp_path / "a.nii.gz"))
    second = load_volume(write_nifti(first.data, first.affine, tmp_path / "b.nii.gz"))
    np.testing.assert_array_equal(second.data, arr)
    np.testing.assert_allclose(second.affine, first.affine)


def _oblique_lps_image(shape=(7, 9, 5)) -> nib.Nifti1Image:
    """Voxel axes (i, j, k) towards inferior, left, anterior, rotated 12 degrees about z: nothing canonical."""
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    axes = np.column_stack([[0, 0, -1.0], [-1.0, 0, 0], [0, 1.0, 0]])  # i -> inferior, j -> left, k -> anterior
    affine = np.eye(4)
    affine[:3, :3] = rot @ axes @ np.diag([4.0, 0.6, 0.9])
    affine[:3, 3] = [5.0, -7.0, 20.0]
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return nib.Nifti1Image(data, affine)


def test_oblique_input_reoriented_to_axial_display(tmp_path):
    img = _oblique_lps_image()
    assert "".join(aff2axcodes(img.affine)) == "ILA"
    nib.save(img, tmp_path / "obl.nii.gz")
    vol = load_volume(tmp_path / "obl.nii.gz")
    assert "".join(aff2axcodes(vol.affine)) == "LPS"
    assert vol.shape == (7, 5, 9)  # source i (inferior, 4 mm) -> slices, k (anterior) -> rows, j (left) -> cols
    assert vol.spacing == pytest.approx((4.0, 0.9, 0.6))
    # world position of every voxel is unchanged: check one voxel through both affines
    s, r, c = 2, 3, 1
    world = vol.affine @ [c, r, s, 1.0]
    src_index = np.linalg.solve(img.affine, world)[:3]
    src_index = np.round(src_index).astype(int)
    assert vol.data[s, r, c] == img.get_fdata()[tuple(src_index)]


def test_to_source_grid_round_trips_voxel_for_voxel(tmp_path):
    img = _oblique_lps_image()
    img.set_qform(img.affine, code=1)
    nib.save(img, tmp_path / "obl.nii")
    vol = load_volume(tmp_path / "obl.nii")
    labels = (vol.data % 6).astype(np.uint8)
    back = to_source_grid(labels, vol)
    assert back.shape == img.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), (img.get_fdata() % 6).astype(np.uint8))
    np.testing.assert_allclose(back.affine, img.affine)
    assert int(back.header["qform_code"]) == 1
    assert back.get_data_dtype() == np.uint8


def test_to_source_grid_checks_shape(tmp_path):
    vol = load_volume(write_nifti(ct_like(), (1, 1, 1), tmp_path / "a.nii.gz"))
    with pytest.raises(ValueError, match="shape"):
        to_source_grid(np.zeros((1, 2, 3)), vol)


def test_singleton_fourth_dimension_accepted(tmp_path):
    arr = ct_like((4, 5, 6))
    img = nib.Nifti1Image(arr.transpose(2, 1, 0)[..., None], grid_affine((2, 1, 1)))
    nib.save(img, tmp_path / "a.nii.gz")
    vol = load_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.data, arr)


def test_scaling_applied(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(raw, grid_affine((1, 1, 1)))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "s.nii.gz")
    vol = load_nifti(tmp_path / "s.nii.gz")
    assert vol.data.min() == -1024.0 and vol.data.max() == -1024.0 + 2 * 23


def test_non_hu_range_warns(tmp_path):
    vol = load_volume(
        write_nifti(np.random.default_rng(0).random((3, 4, 4)).astype(np.float32), (1, 1, 1), tmp_path / "norm.nii.gz")
    )
    assert any("does not look like CT in Hounsfield units" in w for w in vol.warnings)


def test_nifti_read_by_content_whatever_the_name(tmp_path):
    arr = ct_like((2, 3, 4))
    path = write_nifti(arr, (1, 1, 1), tmp_path / "a.nii.gz")
    disguised = tmp_path / "upload.bin"
    disguised.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(load_volume(disguised).data, arr)


def test_meter_units_converted(tmp_path):
    img = nib.Nifti1Image(ct_like((2, 3, 4)), np.diag([-0.001, -0.001, 0.005, 1]))
    img.header.set_xyzt_units("meter")
    nib.save(img, tmp_path / "m.nii.gz")
    vol = load_volume(tmp_path / "m.nii.gz")
    assert vol.spacing == pytest.approx((5.0, 1.0, 1.0))
    assert any("meter" in w for w in vol.warnings)

"""Tests of the synthetic head CT phantoms (ichdemo/phantom.py): determinism, anatomy, lesion placement, writers."""

from __future__ import annotations

import json
import random
import time
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError
from ichdemo.io import load_volume
from ichdemo.phantom import (
    HEMORRHAGE_HU_RANGE,
    TRUTH_DIR,
    Phantom,
    generate_phantom,
    min_lesion_voxels,
    phantom_affine,
    phantom_dataset,
    write_phantom,
)

SMALL = (12, 128, 128)  # 10 x 1.8 x 1.8 mm by default: same head, coarse grid, fast
LABEL = {c: k + 1 for k, c in enumerate(CLASSES)}


@pytest.fixture(scope="module")
def full() -> Phantom:
    """Default grid with every subtype."""
    return generate_phantom(5, CLASSES)


@pytest.fixture(scope="module")
def normal() -> Phantom:
    return generate_phantom(5, ())


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


# ---------------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_arrays():
    a = generate_phantom(7, ("IPH", "SDH"), shape=SMALL)
    b = generate_phantom(7, ("SDH", "IPH"), shape=SMALL)  # order of the request does not matter
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.labels, b.labels)
    assert a.truth_ml == b.truth_ml
    assert a.subtypes == b.subtypes == ("IPH", "SDH")


def test_different_seeds_differ():
    a = generate_phantom(1, ("IPH",), shape=SMALL)
    b = generate_phantom(2, ("IPH",), shape=SMALL)
    assert not np.array_equal(a.labels, b.labels)
    assert np.abs(a.hu - b.hu).mean() > 5.0
    assert a.masks["head"].sum() != b.masks["head"].sum()  # head size / position vary


def test_grid_does_not_change_the_head():
    """Anatomy and lesions are built in mm: a coarser grid samples the same head and the same volumes."""
    fine = generate_phantom(4, ("IVH", "SDH", "EDH"))
    coarse = generate_phantom(4, ("IVH", "SDH", "EDH"), shape=SMALL)
    for c in ("IVH", "SDH", "EDH"):
        assert coarse.truth_ml[c] == pytest.approx(fine.truth_ml[c], rel=0.2), c
    brain = [p.masks["brain"].sum() * p.voxel_ml for p in (fine, coarse)]
    assert brain[1] == pytest.approx(brain[0], rel=0.05)
    assert 900.0 < brain[0] < 1700.0  # mL of intracranial content in the covered stack


def test_adding_a_subtype_keeps_the_head():
    """Anatomy depends only on the seed; an IVH changes the image only at (and next to) the blood."""
    plain = generate_phantom(3, (), shape=SMALL)
    ivh = generate_phantom(3, ("IVH",), shape=SMALL)
    near = ndimage.binary_dilation(ivh.labels > 0, np.ones((1, 7, 7), bool))
    assert ivh.truth_ml["IVH"] > 0
    assert np.array_equal(plain.hu[~near], ivh.hu[~near])
    assert np.abs(plain.hu[ivh.labels > 0] - ivh.hu[ivh.labels > 0]).mean() > 30.0


# ------------------------------------------------------------------------------------------------------ structure
def test_default_grid_and_types(full: Phantom):
    assert full.hu.shape == full.labels.shape == (24, 256, 256)
    assert full.hu.dtype == np.float32 and full.labels.dtype == np.uint8
    assert full.spacing == pytest.approx((5.0, 0.9, 0.9))
    assert set(np.unique(full.labels)) == {0, 1, 2, 3, 4, 5}
    assert full.slice_labels.shape == (24, 5) and full.slice_labels.dtype == np.uint8
    assert np.isfinite(full.hu).all()


def test_slice_labels_and_truth_follow_labels(full: Phantom):
    for k, c in enumerate(CLASSES):
        per_slice = (full.labels == k + 1).any(axis=(1, 2)).astype(np.uint8)
        assert np.array_equal(full.slice_labels[:, k], per_slice)
        voxels = int(np.count_nonzero(full.labels == k + 1))
        assert full.truth_ml[c] == pytest.approx(voxels * 5.0 * 0.9 * 0.9 / 1000.0)


def test_generation_is_fast():
    generate_phantom(0, ("IPH", "SDH"))  # warm-up (imports, allocator)
    start = time.perf_counter()
    generate_phantom(1, CLASSES)
    assert time.perf_counter() - start < 3.0  # about 0.4 s on an idle core; slack for a shared CI machine


# -------------------------------------------------------------------------------------------------------- anatomy
def test_anatomy_hu(normal: Phantom):
    hu, m = normal.hu, normal.masks
    assert hu[:, :8, :8].mean() < -950  # air in the corners
    assert np.percentile(hu[m["skull"]], 90) > 1000 and hu.max() > 1200  # dense tables
    assert (hu[m["skull"]] > 500).mean() > 0.8
    assert 20.0 < hu[m["parenchyma"]].mean() < 45.0
    grey = m["grey"] & ~ndimage.binary_dilation(m["skull"], np.ones((1, 5, 5), bool))
    white = m["parenchyma"] & ~m["grey"]
    assert 6.0 < hu[grey].mean() - hu[white].mean() < 16.0  # grey/white contrast
    core = ndimage.binary_erosion(m["ventricles"], np.ones((1, 3, 3), bool))
    assert -5.0 < hu[core].mean() < 15.0  # CSF
    assert normal.labels.max() == 0 and sum(normal.truth_ml.values()) == 0.0 and normal.slice_labels.sum() == 0


def test_noise_level(normal: Phantom):
    """Noise about noise_hu: the spread of white matter far from any edge."""
    m = normal.masks
    white = ndimage.binary_erosion(m["parenchyma"] & ~m["grey"], np.ones((1, 9, 9), bool))
    assert white.sum() > 2000
    quiet = generate_phantom(5, (), noise_hu=0.0)
    noise = normal.hu[white] - quiet.hu[white]
    assert abs(noise.mean()) < 0.5 and 4.0 < noise.std() < 6.0
    assert np.array_equal(quiet.labels, normal.labels)


def test_head_shrinks_toward_vertex_and_skull_base_is_denser(normal: Phantom):
    area = normal.masks["brain"].sum(axis=(1, 2))
    widest = int(area.argmax())
    assert 4 <= widest <= 14
    assert area[-1] < 0.5 * area[widest]
    bone_low = (normal.masks["skull"][:3]).sum() / 3
    bone_mid = (normal.masks["skull"][widest]).sum()
    assert bone_low > 1.3 * bone_mid  # skull base: thicker vault plus petrous ridges
    vent = normal.masks["ventricles"].sum(axis=(1, 2))
    assert vent[widest : widest + 8].max() > 3 * max(vent[-3:].max(), 1)  # ventricles in the middle slices


# -------------------------------------------------------------------------------------------------------- lesions
def test_hemorrhage_density(full: Phantom):
    lo, hi = HEMORRHAGE_HU_RANGE
    blood = full.hu[full.labels > 0]
    assert blood.min() >= lo and blood.max() <= hi
    assert 55.0 < blood.mean() < 85.0


@pytest.mark.parametrize(
    "seed, subtypes",
    [
        (0, ("IPH",)),
        (1, ("IVH",)),
        (2, ("SAH",)),
        (3, ("SDH",)),
        (4, ("EDH",)),
        (5, ("IPH", "IVH", "SAH")),
        (6, ("SDH", "EDH")),
        (7, CLASSES),
        (8, ("SAH", "EDH")),
        (9, ("IVH", "SDH")),
    ],
)
def test_requested_present_others_absent(seed, subtypes):
    p = generate_phantom(seed, subtypes, shape=SMALL)
    need = min_lesion_voxels(p.spacing)
    for c in CLASSES:
        count = int(np.count_nonzero(p.labels == LABEL[c]))
        if c in subtypes:
            assert count >= need, (c, count)
            assert 0.5 <= p.truth_ml[c] <= 120.0
        else:
            assert count == 0 and p.truth_ml[c] == 0.0


def test_lesions_span_consecutive_slices(full: Phantom):
    for k, c in enumerate(CLASSES):
        assert _longest_run(full.slice_labels[:, k]) >= 3, c


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_anatomical_placement(seed):
    p = generate_phantom(seed, CLASSES, shape=(24, 192, 192))
    lab, m = p.labels, p.masks
    iph, ivh, sah = lab == LABEL["IPH"], lab == LABEL["IVH"], lab == LABEL["SAH"]
    assert not (iph & m["ventricles"]).any() and (iph & m["brain"]).sum() == iph.sum()
    assert (ivh & m["ventricles"]).sum() == ivh.sum()
    rows = np.arange(lab.shape[1])[None, :, None]
    rows = np.broadcast_to(rows, lab.shape)
    assert rows[ivh].mean() > rows[m["ventricles"]].mean()  # dependent (posterior) part
    assert (sah & m["subarachnoid"]).sum() == sah.sum()
    skull = ndimage.binary_dilation(m["skull"], np.ones((1, 3, 3), bool))
    for c in ("SDH", "EDH"):
        les = lab == LABEL[c]
        for s in np.nonzero(les.any(axis=(1, 2)))[0]:
            assert (les[s] & skull[s]).any(), (c, s)  # against the inner table in every slice
        assert not (les & m["ventricles"]).any()


def _arc_degrees(mask2d: np.ndarray, centre: tuple[float, float]) -> float:
    """Angular extent (degrees) of a 2-D mask seen from ``centre`` (the largest gap left out)."""
    r, c = np.nonzero(mask2d)
    ang = np.sort(np.degrees(np.arctan2(r - centre[0], c - centre[1])))
    gaps = np.diff(np.concatenate([ang, ang[:1] + 360.0]))
    return 360.0 - float(gaps.max())


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_sdh_is_a_long_crescent_and_edh_a_short_lens(seed):
    p = generate_phantom(seed, ("SDH", "EDH"))
    for c, lo, hi in (("SDH", 75.0, 200.0), ("EDH", 15.0, 75.0)):
        les = p.labels == LABEL[c]
        s = int(les.sum(axis=(1, 2)).argmax())
        centre = ndimage.center_of_mass(p.masks["brain"][s] | les[s])
        assert lo < _arc_degrees(les[s], centre) < hi, c
    # a lens is thick for its length: area per degree of arc is larger for the EDH
    sdh, edh = (p.labels == LABEL["SDH"]), (p.labels == LABEL["EDH"])
    assert edh.sum() / edh.any(axis=(1, 2)).sum() > 0.5 * sdh.sum() / sdh.any(axis=(1, 2)).sum()


def test_bad_arguments():
    with pytest.raises(ConfigError, match="subtypes"):
        generate_phantom(0, ("ICH",))
    with pytest.raises(ConfigError, match="subtypes"):
        generate_phantom(0, ("IPH", "IPH"))
    with pytest.raises(ConfigError, match="field of view"):
        generate_phantom(0, (), shape=(12, 128, 128), spacing=(5.0, 0.9, 0.9))
    with pytest.raises(ConfigError, match="noise"):
        generate_phantom(0, (), shape=SMALL, noise_hu=-1.0)
    with pytest.raises(ConfigError, match="seed"):
        generate_phantom(-3, (), shape=SMALL)


# --------------------------------------------------------------------------------------------------------- writing
@pytest.fixture(scope="module")
def small() -> Phantom:
    return generate_phantom(4, ("IPH", "SDH"), shape=SMALL)


def _check_truth(path, p: Phantom, ct: str, labels: str) -> None:
    truth = json.loads(path.read_text())
    assert (truth["ct"], truth["labels"]) == (ct, labels)  # relative to the phantom folder
    assert truth["seed"] == p.seed and truth["subtypes"] == list(p.subtypes)
    assert truth["shape"] == list(p.shape) and truth["spacing_mm"] == pytest.approx(list(p.spacing))
    voxel_ml = float(np.prod(p.spacing)) / 1000.0
    for k, c in enumerate(CLASSES):
        assert truth["volume_ml"][c] == pytest.approx(np.count_nonzero(p.labels == k + 1) * voxel_ml, abs=1e-5)
    assert truth["slice_labels"] == p.slice_labels.tolist()


def test_write_dicom_round_trip(small: Phantom, tmp_path):
    out = write_phantom(small, tmp_path, "dicom")
    files = out["files"]
    assert out["ct"] == tmp_path and len(files) == SMALL[0] and all(f.parent == tmp_path for f in files)
    assert out["labels"].parent == out["truth"].parent == tmp_path / TRUTH_DIR
    ds = pydicom.dcmread(files[3])
    assert ds.Modality == "CT" and [float(v) for v in ds.PixelSpacing] == pytest.approx(list(small.spacing[1:]))
    assert ds.pixel_array.shape == SMALL[1:]
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(uids) == len(files)

    vol = load_volume(out["ct"])
    assert vol.source == "dicom" and vol.data.shape == small.hu.shape
    assert np.abs(vol.data - small.hu).max() <= 1.0
    assert vol.spacing == pytest.approx(small.spacing)
    assert np.allclose(vol.affine, small.affine)
    assert not vol.warnings  # the whole folder is one clean input: the truth beside the CT is not read with it

    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    assert np.array_equal(load_volume(shuffled).data, vol.data)  # order of the files is irrelevant

    zipped = tmp_path / "series.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in shuffled:
            zf.write(f, f"export/{f.name}")
    assert np.array_equal(load_volume(zipped).data, vol.data)

    labels = nib.load(out["labels"])
    assert np.allclose(labels.affine, vol.affine)  # same grid and world position as the CT
    assert np.array_equal(np.asarray(labels.dataobj).transpose(2, 1, 0), small.labels)
    _check_truth(out["truth"], small, ".", ".truth/labels.nii.gz")


def test_write_nifti_round_trip(small: Phantom, tmp_path):
    out = write_phantom(small, tmp_path, "nifti")
    assert out["ct"] == tmp_path / "ct.nii.gz" and out["files"] == []
    whole = load_volume(tmp_path)  # the folder as a whole reads as the CT alone, without the label map
    assert np.array_equal(whole.data, small.hu) and not whole.warnings
    ct, labels = load_volume(out["ct"]), load_volume(out["labels"])
    assert np.array_equal(ct.data, small.hu)
    assert ct.spacing == pytest.approx(small.spacing)
    assert np.allclose(ct.affine, labels.affine) and np.allclose(ct.affine, phantom_affine(SMALL, small.spacing))
    assert np.array_equal(labels.data.astype(np.uint8), small.labels)
    lesion = labels.data > 0  # aligned: the labelled voxels are the bright blood in the CT
    assert ct.data[lesion].min() >= 50.0
    assert ct.data[lesion].mean() > ct.data[small.masks["parenchyma"]].mean() + 25.0
    _check_truth(out["truth"], small, "ct.nii.gz", ".truth/labels.nii.gz")


def test_write_refuses_bad_format_and_busy_folder(small: Phantom, tmp_path):
    with pytest.raises(ConfigError, match="format"):
        write_phantom(small, tmp_path, "png")
    (tmp_path / "old.dcm").write_bytes(b"x")
    for fmt in ("dicom", "nifti"):  # a second series in the folder would make it two inputs
        with pytest.raises(ConfigError, match="already holds"):
            write_phantom(small, tmp_path, fmt)


# --------------------------------------------------------------------------------------------------------- dataset
def test_phantom_dataset():
    first = list(phantom_dataset(5, seed=1, shape=SMALL, p_normal=0.0, max_subtypes=2))
    again = list(phantom_dataset(5, seed=1, shape=SMALL, p_normal=0.0, max_subtypes=2))
    assert len(first) == 5
    assert [p.seed for p in first] == [p.seed for p in again]
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(first, again, strict=True))
    assert all(1 <= len(p.subtypes) <= 2 for p in first)
    assert all(p.slice_labels.any(axis=0).sum() == len(p.subtypes) for p in first)
    assert len({p.subtypes for p in first}) > 1
    normals = list(phantom_dataset(3, seed=2, shape=SMALL, p_normal=1.0))
    assert all(p.subtypes == () and p.labels.max() == 0 for p in normals)
    with pytest.raises(ConfigError):
        next(phantom_dataset(1, p_normal=2.0))

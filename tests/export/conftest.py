"""Fixtures for the export tests: a small DICOM series and an oblique NIfTI, with label maps using every class."""

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ichdemo.io import load_volume
from ichdemo.io.dicom_write import write_dicom_series
from ichdemo.quantify import Thresholds

MODEL_INFO = {"name": "tiny_lse", "version": "v0.test", "weights_sha256": "0123456789abcdef"}
THRESHOLDS = Thresholds(class_thresholds=(0.4, 0.5, 0.6, 0.7, 0.8), mask_thresholds=(75, 125, 125, 75, 25))


@pytest.fixture(scope="session")
def stamp():
    """(model_info, thresholds) to pass to ``export``."""
    return MODEL_INFO, THRESHOLDS


@pytest.fixture(scope="session")
def labels_for():
    """``labels_for(shape, seed)``: see ``_make_labels``."""
    return _make_labels


def _make_labels(shape, seed=0):
    """A label map with blocks of every class on different slices, plus one slice with two classes touching."""
    rng = np.random.default_rng(seed)
    s, h, w = shape
    lab = np.zeros(shape, np.uint8)
    for k in range(1, 6):
        z = (k - 1) % s
        r0, c0 = rng.integers(0, h - 6), rng.integers(0, w - 7)
        lab[z, r0 : r0 + 1 + k, c0 : c0 + 2 + k] = k
    lab[-1, 0, 0] = 2  # a corner voxel: catches flips
    lab[-1, h - 3 :, w - 4 :] = 4
    lab[-1, h - 3 :, w - 2 :] = 5
    return lab


@pytest.fixture(scope="session")
def dicom_series(tmp_path_factory):
    """(folder, Volume): 6 slices of 40 x 48, anisotropic pixels, identifying patient tags set."""
    folder = tmp_path_factory.mktemp("dicom")
    rng = np.random.default_rng(1)
    hu = rng.normal(35, 15, (6, 40, 48)).astype(np.float32)
    paths = write_dicom_series(hu, (5.0, 0.8, 0.7), folder, patient_name="DOE^JANE", patient_id="PID-4711", seed=3)
    for p in paths:  # more identifiers than the writer sets: birth date, institution, a private tag
        ds = pydicom.dcmread(p)
        ds.PatientBirthDate = "19700101"
        ds.InstitutionName = "St Example Hospital"
        block = ds.private_block(0x0011, "ICHDEMO TEST", create=True)
        block.add_new(0x01, "LO", "PRIVATE-SECRET")
        ds.save_as(p)
    return folder, load_volume(folder)


def oblique_affine():
    """A NIfTI affine that is neither RAS- nor LPS-aligned: i runs posterior, j runs right, k up, 15 deg about z."""
    a = np.deg2rad(15)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    axes = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) * [0.9, 0.75, 4.0]  # columns: i, j, k
    aff = np.eye(4)
    aff[:3, :3] = rot @ axes
    aff[:3, 3] = [12.5, -30.0, 7.0]
    return aff


@pytest.fixture(scope="session")
def nifti_file(tmp_path_factory):
    """(path, Volume) of an oblique NIfTI with a shape whose axes are all different."""
    folder = tmp_path_factory.mktemp("nifti")
    rng = np.random.default_rng(2)
    data = rng.normal(35, 15, (36, 30, 5)).astype(np.float32)
    img = nib.Nifti1Image(data, oblique_affine())
    img.set_sform(oblique_affine(), code=1)
    img.set_qform(oblique_affine(), code=1)
    path = folder / "oblique.nii.gz"
    nib.save(img, path)
    return path, load_volume(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny untrained lse_unet checkpoint folder (64 px input)."""
    from ichdemo.models import create_model
    from ichdemo.models.checkpoint import save_pretrained

    model = create_model("lse_unet_mobilenetv3_small_050", pretrained=False)
    return save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny", {"input_size": [3, 64, 64]})

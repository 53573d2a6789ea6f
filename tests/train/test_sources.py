"""RSNA and BHSD adapters on small synthetic folders written in their real layouts."""

import numpy as np
import pytest

from ichdemo.constants import CLASSES
from ichdemo.data import SliceStackDataset, open_source
from ichdemo.data.bhsd import convert_labels
from ichdemo.errors import UnsupportedInputError
from ichdemo.io.dicom_write import write_dicom_series
from ichdemo.io.nifti import write_nifti


def _rsna_folder(root, shuffle_seed=0):
    """Two series (two patients) of 4 slices each; files renamed to RSNA image ids, written in scrambled order."""
    images = root / "stage_2_train"
    rows = ["ID,Label"]
    rng = np.random.default_rng(shuffle_seed)
    truth = {}
    for s, patient in enumerate(["ID_p1", "ID_p2"]):
        hu = np.stack([np.full((16, 16), 10.0 * i + 100 * s, np.float32) for i in range(4)])
        paths = write_dicom_series(hu, (5.0, 0.5, 0.5), root / f"tmp{s}", patient_id=patient, seed=s)
        for i, p in enumerate(paths):
            image = f"ID_{s}{i}{rng.integers(1000):03d}"
            images.mkdir(exist_ok=True)
            p.rename(images / f"{image}.dcm")
            labels = {"epidural": int(i == 1), "subdural": int(i == 2 and s == 1), "intraparenchymal": 0,
                      "intraventricular": 0, "subarachnoid": 0}
            labels["any"] = int(any(labels.values()))
            rows += [f"{image}_{k},{v}" for k, v in labels.items()]
            truth[(patient, i)] = labels
    (root / "stage_2_train.csv").write_text("\n".join(rows) + "\n")
    return truth


def test_rsna_series_rebuilt_in_slice_order(tmp_path):
    _rsna_folder(tmp_path)
    src = open_source(f"rsna:{tmp_path}")
    assert src.kind == "rsna" and not src.prewindowed
    assert sorted(src.patients) == ["ID_p1", "ID_p2"]
    for ser in src.series:
        s = 0 if ser.patient == "ID_p1" else 1
        hu = (ser.read(range(4))[:, 0, 0] * 130.0) - 40.0  # invert the paper window (-40..90 HU -> 0..1)
        np.testing.assert_allclose(np.clip(hu, -40, 90), np.clip([100 * s + 10 * i for i in range(4)], -40, 90),
                                   atol=0.01)
        assert ser.labels[:, CLASSES.index("EDH")].tolist() == [0, 1, 0, 0]
        assert ser.labels[:, CLASSES.index("SDH")].tolist() == ([0, 0, 1, 0] if s else [0, 0, 0, 0])
        assert ser.spacing == (5.0, 0.5, 0.5)
    item = SliceStackDataset(src.series, size=32)[1]
    assert item["image"].shape == (3, 32, 32) and not item["has_mask"]


def test_rsna_without_csv_or_images(tmp_path):
    with pytest.raises(UnsupportedInputError, match="stage_2_train.csv"):
        open_source(f"rsna:{tmp_path}")
    (tmp_path / "stage_2_train.csv").write_text("ID,Label\nID_1_epidural,0\n")
    with pytest.raises(UnsupportedInputError, match="no .dcm images"):
        open_source(f"rsna:{tmp_path}")


def test_bhsd_labels_and_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "ground truths").mkdir()
    hu = np.full((3, 8, 8), 30.0, np.float32)
    lab = np.zeros((3, 8, 8), np.uint8)
    lab[1, 2:4, 2:4] = 1  # BHSD 1 = EDH
    lab[2, 5:7, 5:7] = 3  # BHSD 3 = IVH
    spacing = (5.0, 0.5, 0.5)
    write_nifti(hu, spacing, tmp_path / "images" / "scan1.nii.gz")
    write_nifti(lab, spacing, tmp_path / "ground truths" / "scan1.nii.gz")
    write_nifti(hu, spacing, tmp_path / "images" / "scan2.nii.gz")  # no label volume: skipped with a note
    src = open_source(f"bhsd:{tmp_path}")
    assert [s.patient for s in src.series] == ["scan1"] and src.notes and "1 image(s)" in src.notes[0]
    ser = src.series[0]
    assert ser.labels.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 1, 0, 0, 0]]
    assert ser.mask_slices == (0, 1, 2)
    m1 = ser.read_mask(1)
    assert int((m1 == CLASSES.index("EDH") + 1).sum()) == 4 and set(np.unique(m1)) == {0, 5}
    assert convert_labels(np.array([0, 1, 2, 3, 4, 5])).tolist() == [0, 5, 1, 2, 3, 4]


def test_bhsd_bad_folder(tmp_path):
    with pytest.raises(UnsupportedInputError, match="not a BHSD folder"):
        open_source(f"bhsd:{tmp_path}")

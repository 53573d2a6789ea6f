"""CT-ICH reader: a tiny synthetic copy of the layout, then the real counts from ../shared/data/ct-ich/README.md."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichdemo.constants import CLASSES
from ichdemo.data import SliceStackDataset, open_source
from ichdemo.errors import UnsupportedInputError
from ichdemo.io.ctich import CSV_COLUMNS, CTICHDataset
from train.pack_ctich import pack

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct-ich"
HEADER = (
    "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
    "No_Hemorrhage,Fracture_Yes_No"
)


def _fake(root: Path) -> Path:
    """Patient 49: slices 1..3 (slice 2 IVH only, slice 3 EDH + SDH with a mask); patient 50: slice 1 missing."""
    rows = [
        "49,1,0,0,0,0,0,1,0",
        "49,2,1,0,0,0,0,0,0",
        "49,3,0,0,0,1,1,0,1",
        "49,10,0,0,0,0,0,1,0",
        "50,1,0,1,0,0,0,0,0",
        "50,2,0,0,0,0,0,1,0",
    ]
    (root / "hemorrhage_diagnosis.csv").write_text(
        "\ufeff" + HEADER + "\r\n" + "\r\n".join(rows) + "\r\n", encoding="utf-8"
    )
    for patient, slices in ((49, (1, 2, 3, 10)), (50, (2,))):
        folder = root / "Patients_CT" / f"{patient:03d}" / "brain"
        folder.mkdir(parents=True)
        for s in slices:
            Image.fromarray(np.full((8, 8), s * 10, np.uint8)).save(folder / f"{s}.jpg")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255
    Image.fromarray(mask).save(root / "Patients_CT" / "049" / "brain" / "3_HGE_Seg.jpg")
    return root


def test_fake_dataset_labels_order_and_missing(tmp_path):
    with pytest.warns(UserWarning, match=r"1 slice\(s\) listed .* skipped \(1 of them with hemorrhage; first: 050/1\)"):
        ds = CTICHDataset(_fake(tmp_path))
    assert ds.patients() == [49, 50] and len(ds) == 5 and ds.missing == [(50, 1)]
    labels = ds.labels(49)
    assert labels.dtype == np.uint8 and labels.shape == (4, 5)
    assert labels[1].tolist() == [0, 1, 0, 0, 0]  # Intraventricular -> IVH, CLASSES[1]
    assert labels[2].tolist() == [0, 0, 0, 1, 1]  # Subdural + Epidural -> SDH, EDH
    assert ds.slices(49)[2].fracture and not ds.slices(49)[1].fracture


def test_fake_dataset_volume_and_masks(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CTICHDataset(_fake(tmp_path))
    vol = ds.volume(49)
    assert vol.shape == (4, 8, 8) and vol.prewindowed and vol.spacing_assumed
    assert vol.spacing == (5.0, 1.0, 1.0)
    assert vol.slice_names == ["1", "2", "3", "10"]  # numeric order, not "1, 10, 2, 3"
    assert np.allclose(vol.data[:, 0, 0], [10, 20, 30, 100], atol=2)
    masks = ds.masks(49)
    assert list(masks) == [2] and masks[2].dtype == bool
    assert masks[2].sum() == 9 and masks[2][3, 4]
    assert ds.masks(50) == {}
    with pytest.raises(KeyError):
        ds.volume(51)


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(UnsupportedInputError, match="hemorrhage_diagnosis.csv not found"):
        CTICHDataset(tmp_path)


def test_csv_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "hemorrhage_diagnosis.csv").write_text(HEADER + "\n49,1,0,0,0,0,0,1,0\n")
    with pytest.raises(UnsupportedInputError, match="no brain images"):
        CTICHDataset(tmp_path)


# ----------------------------------------------------------------------------------------------- the real data
@pytest.fixture(scope="module")
def real():
    if not (REAL / "hemorrhage_diagnosis.csv").is_file():
        pytest.skip(f"CT-ICH data not found at {REAL.resolve()}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CTICHDataset(REAL)
    return ds, [str(w.message) for w in caught]


def test_real_counts_match_readme(real):
    """README: 2501 rows, 82 patients; 2471 brain images; 30 missing, 15 of them hemorrhage slices."""
    ds, caught = real
    assert len(ds) == 2471 and len(ds.missing) == 30 and len(ds.patients()) == 82
    assert len(caught) == 1 and "30 slice(s)" in caught[0] and "15 of them with hemorrhage" in caught[0]


def test_real_hemorrhage_counts_match_readme(real):
    """README's hemorrhage counts are over slices whose image is present."""
    ds, _ = real
    labels = np.stack([r.labels for r in ds.records])
    hem = labels.any(axis=1)
    assert hem.sum() == 303 and len({r.patient for r, h in zip(ds.records, hem) if h}) == 36
    expected = {"IVH": (23, 5), "IPH": (66, 16), "SAH": (17, 7), "EDH": (166, 21), "SDH": (56, 4)}
    for name, (n_slices, n_patients) in expected.items():
        column = labels[:, CLASSES.index(name)].astype(bool)
        assert column.sum() == n_slices, name
        assert len({r.patient for r, c in zip(ds.records, column) if c}) == n_patients, name


def test_real_multi_subtype_count_is_over_csv_rows(real):
    """README's "25 slices carry more than one subtype" counts CSV rows (24 of them have an image)."""
    ds, _ = real
    with open(REAL / "hemorrhage_diagnosis.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    multi_rows = sum(sum(int(r[CSV_COLUMNS[c]]) for c in CLASSES) > 1 for r in rows)
    assert len(rows) == 2501 and multi_rows == 25
    assert sum(int(r.labels.sum()) > 1 for r in ds.records) == 24


def test_real_masks(real):
    ds, _ = real
    with_mask = [r for r in ds.records if r.mask_path is not None]
    assert len(with_mask) == 35 and sorted({r.patient for r in with_mask}) == [77, 78, 79, 80, 81]
    masks = ds.masks(80)
    assert len(masks) == 7
    vol_labels = ds.labels(80)
    for index, mask in masks.items():
        assert mask.shape == (650, 650) and 0 < mask.sum() < mask.size / 4
        assert vol_labels[index].any()  # masks sit on hemorrhage slices


def test_real_volume(real):
    ds, _ = real
    vol = ds.volume(49)
    numbers = [int(n) for n in vol.slice_names]
    assert numbers == sorted(numbers) and len(numbers) == len(ds.slices(49)) == ds.labels(49).shape[0]
    assert vol.shape[1:] == (650, 650) and vol.prewindowed and 0 <= vol.data.min() and vol.data.max() <= 255
    assert vol.meta["patient"] == 49


# ---------------------------------------------------------------- train.pack_ctich: the copy that travels to a GPU


def test_pack_reads_back_as_the_same_dataset_at_the_training_size(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    src = _fake(tmp_path / "src")
    for path in (src / "Patients_CT").rglob("*.jpg"):  # smooth 96 px slices instead of the fake's flat 8 px ones
        if "Seg" not in path.name:
            yy, xx = np.mgrid[:96, :96]
            img = 128 + 60 * np.sin(xx / 9 + rng.uniform(0, 6)) * np.cos(yy / 13)
            Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fake's missing slice, reported by both readers
        n, nbytes = pack(src, tmp_path / "pack", size=64, quality=90, threads=2)
        original, packed = CTICHDataset(src), CTICHDataset(tmp_path / "pack")
        a = SliceStackDataset(open_source(f"ctich:{src}").select(["49"]), 64)
        b = SliceStackDataset(open_source(f"ctich:{tmp_path / 'pack'}").select(["49"]), 64)
    assert n == len(original.records) == len(packed.records) and nbytes > 0
    assert [(r.patient, r.slice) for r in packed.records] == [(r.patient, r.slice) for r in original.records]
    assert all(r.path.suffix == ".webp" and r.mask_path is None for r in packed.records)
    for ra, rb in zip(original.records, packed.records):
        assert np.array_equal(ra.labels, rb.labels)
    assert Image.open(packed.records[0].path).size == (64, 64)
    for k in range(len(a)):  # what the model sees: the same stacks up to the lossy re-encoding
        diff = (a[k]["image"] - b[k]["image"]).abs()
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1


def test_pack_refuses_a_folder_that_is_not_ctich(tmp_path):
    with pytest.raises(Exception, match="not a CT-ICH folder"):
        pack(tmp_path, tmp_path / "out", size=64, quality=90)

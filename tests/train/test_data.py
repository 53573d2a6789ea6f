"""Training data: series, 3-slice stacks, patient splits, class-imbalance sampling, data specs, CT-ICH adapter."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ichdemo.constants import CLASSES
from ichdemo.data import (
    MASK_ANY,
    MASK_NONE,
    ArraySeries,
    SliceStackDataset,
    Split,
    WeightedEpochSampler,
    open_source,
    parse_spec,
    pos_weight,
    require_classes,
    sample_weights,
    split_patients,
)
from ichdemo.data.ctich import gap_aware_neighbours, mask_label
from ichdemo.data.sampling import slice_groups
from ichdemo.errors import ConfigError, UnsupportedInputError

CTICH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct-ich"


def _series(patient: str, n: int = 5, size: int = 8, positive: int | None = None) -> ArraySeries:
    unit = np.stack([np.full((size, size), i / 10, np.float32) for i in range(n)])
    labels = np.zeros((n, 5), np.float32)
    masks = np.zeros((n, size, size), np.int16)
    if positive is not None:
        labels[n // 2, positive] = 1
        masks[n // 2, 2:4, 2:4] = positive + 1
    return ArraySeries(patient=patient, name=patient, labels=labels, unit=unit, masks=masks,
                       mask_slices=tuple(range(n)))


def test_stack_uses_neighbours_with_edges_repeated():
    data = SliceStackDataset([_series("a", n=4)], size=8)
    first, mid, last = data[0]["image"], data[1]["image"], data[3]["image"]
    assert first.shape == (3, 8, 8)
    np.testing.assert_allclose(first[:, 0, 0], [0.0, 0.0, 0.1], atol=1 / 255)
    np.testing.assert_allclose(mid[:, 0, 0], [0.0, 0.1, 0.2], atol=1 / 255)
    np.testing.assert_allclose(last[:, 0, 0], [0.2, 0.3, 0.3], atol=1 / 255)


def test_uncached_and_cached_items_agree_and_masks_resize_nearest():
    ser = _series("a", n=5, size=16, positive=2)
    cached, raw = SliceStackDataset([ser], size=8), SliceStackDataset([ser], size=8, cache=False)
    np.testing.assert_allclose(cached[2]["image"], raw[2]["image"], atol=1 / 255)
    item = cached[2]
    assert item["labels"].tolist() == [0, 0, 1, 0, 0]
    assert item["has_mask"] and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) == {0, 3}  # nearest neighbour: no blended label values
    assert int((item["mask"] == 3).sum()) == 1  # 2x2 block at 16 px -> 1 px at 8 px


def test_slice_without_mask_is_marked():
    ser = _series("a", n=3)
    ser.mask_slices = (1,)
    data = SliceStackDataset([ser], size=8)
    assert not data[0]["has_mask"] and bool((data[0]["mask"] == MASK_NONE).all())
    assert data.mask_items() == [1]


def test_gap_aware_neighbours_do_not_jump_over_missing_slices():
    nb = gap_aware_neighbours([1, 2, 4, 5])
    assert nb.tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]]


def test_mask_label_single_subtype_and_mixed():
    mask = np.array([[True, False]])
    assert mask_label(mask, np.array([0, 0, 0, 1, 0])).tolist() == [[4, 0]]
    assert mask_label(mask, np.array([1, 1, 0, 0, 0])).tolist() == [[MASK_ANY, 0]]


def _patient_labels(n_per_class: dict[int, int], normals: int) -> dict[str, np.ndarray]:
    out, i = {}, 0
    for k, n in n_per_class.items():
        for _ in range(n):
            lab = np.zeros(5)
            lab[k] = 1
            out[f"p{i}"] = lab
            i += 1
    for _ in range(normals):
        out[f"p{i}"] = np.zeros(5)
        i += 1
    return out


def test_split_is_by_patient_stratified_deterministic_and_holds_out_test():
    labels = _patient_labels({0: 6, 1: 2, 2: 3, 3: 2, 4: 4}, normals=20)
    s1 = split_patients(labels, 0.2, seed=3, test=["p0"])
    s2 = split_patients(labels, 0.2, seed=3, test=["p0"])
    assert s1 == s2
    assert set(s1.train).isdisjoint(s1.val) and "p0" not in s1.train + s1.val and s1.test == ["p0"]
    assert sorted(s1.train + s1.val + s1.test) == sorted(labels)
    for k in range(5):
        has = {p for p, lab in labels.items() if lab[k] > 0 and p != "p0"}
        assert has & set(s1.val) and has & set(s1.train), CLASSES[k]
    assert len(s1.val) == round(0.2 * (len(labels) - 1))
    assert split_patients(labels, 0.2, seed=4) != split_patients(labels, 0.2, seed=3)


def test_split_save_load_roundtrip(tmp_path):
    s = Split(train=["1", "2"], val=["3"], test=["4"], seed=1, source="phantom:4")
    s.save(tmp_path)
    assert Split.load(tmp_path) == s
    assert s.part("all") == ["1", "2", "3", "4"]
    with pytest.raises(ConfigError, match="no split file"):
        Split.load(tmp_path / "nothing")


def test_split_rejects_unknown_test_patient():
    with pytest.raises(ConfigError, match="not in the data"):
        split_patients({"a": np.zeros(5), "b": np.zeros(5)}, test=["zz"])


def test_require_classes_names_every_missing_subtype():
    labels = np.zeros((10, 5))
    labels[0, 0] = labels[1, 3] = 1
    with pytest.raises(ConfigError) as err:
        require_classes(labels, "training split")
    msg = str(err.value)
    assert "IVH, SAH, EDH" in msg and "IPH" not in msg.split("for")[1].split("(")[0]
    require_classes(np.eye(5), "training split")  # all present: no error


def test_sample_weights_balance_groups():
    labels = np.zeros((100, 5))
    labels[:10, 0] = 1  # IPH x10
    labels[10:12, 4] = 1  # EDH x2
    labels[:2, 4] = 1  # two IPH slices also EDH: their rarest subtype is EDH
    groups = slice_groups(labels)
    assert groups[0] == 5 and groups[5] == 1 and groups[10] == 5 and groups[50] == 0
    w = sample_weights(labels, power=1.0)
    totals = [w[groups == g].sum() for g in (0, 1, 5)]
    np.testing.assert_allclose(totals, [1.0, 1.0, 1.0])
    assert np.all(sample_weights(labels, power=0.0) == 1.0)


def test_pos_weight_ratio_and_cap():
    labels = np.zeros((100, 5))
    labels[:20, 0] = 1
    labels[:1, 1] = 1
    pw = pos_weight(labels, cap=10)
    np.testing.assert_allclose(pw, [4.0, 10.0, 1.0, 1.0, 1.0])


def test_weighted_sampler_ranks_share_one_draw():
    w = np.ones(50)
    r0, r1 = WeightedEpochSampler(w, 40, 0, 2, seed=1), WeightedEpochSampler(w, 40, 1, 2, seed=1)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == 20
    single = list(WeightedEpochSampler(w, 40, 0, 1, seed=1))
    assert single[0::2] == a and single[1::2] == b
    r0.set_epoch(1)
    assert list(r0) != a
    heavy = WeightedEpochSampler(np.r_[np.zeros(49), 1.0], 10, seed=0)
    assert list(heavy) == [49] * 10


def test_phantom_source_labels_match_masks():
    src = open_source("phantom:3", phantom_shape="16x128x128")
    assert src.kind == "phantom" and not src.prewindowed and len(src.series) == 3
    for ser in src.series:
        present = np.stack([[np.any(ser.masks[i] == k + 1) for k in range(5)] for i in range(len(ser))])
        np.testing.assert_array_equal(present, ser.labels > 0)
        assert 0.0 <= ser.unit.min() and ser.unit.max() <= 1.0
    other = open_source("phantom:3:5", phantom_shape="16x128x128")
    assert {s.patient for s in other.series}.isdisjoint(s.patient for s in src.series)


@pytest.mark.parametrize("spec", ["nonsense", "phantom:", "phantom:x", "lidc:/tmp"])
def test_bad_specs(spec):
    with pytest.raises(ConfigError):
        open_source(spec)


def test_missing_folder_and_missing_csv(tmp_path):
    with pytest.raises(UnsupportedInputError, match="does not exist"):
        open_source(f"ctich:{tmp_path / 'nope'}")
    with pytest.raises(UnsupportedInputError, match="hemorrhage_diagnosis.csv"):
        open_source(f"ctich:{tmp_path}")
    assert parse_spec(f"ctich:{tmp_path}") == ("ctich", str(tmp_path))


@pytest.mark.skipif(not CTICH.is_dir(), reason="CT-ICH not found at ../shared/data/ct-ich")
@pytest.mark.filterwarnings("ignore:CT-ICH. 30 slice")
def test_ctich_series_real_data():
    src = open_source(f"ctich:{CTICH}")
    assert src.prewindowed and len(src.patients) == 82
    by_patient = {s.patient: s for s in src.series}
    assert sum(len(s.mask_slices) for s in src.series) == 35
    assert {p for p, s in by_patient.items() if s.mask_slices} == {"77", "78", "79", "80", "81"}
    per_class = sum(s.labels.sum(axis=0) for s in src.series)
    expected = {"IPH": 66, "IVH": 23, "SAH": 17, "SDH": 56, "EDH": 166}  # the README's counts of present slices
    assert dict(zip(CLASSES, per_class.astype(int).tolist())) == expected
    ser = by_patient["81"]
    k = ser.mask_slices[0]
    assert ser.labels[k].tolist() == [0, 0, 0, 1, 0]
    data = SliceStackDataset([ser], size=128, cache=False)
    item = data[k]
    assert item["image"].shape == (3, 128, 128) and item["has_mask"]
    assert set(item["mask"].unique().tolist()) <= {0, 4} and int((item["mask"] == 4).sum()) > 0



def test_labels_follow_a_subset_of_items():
    data = SliceStackDataset([_series("a", n=5, positive=1), _series("b", n=5, positive=4)], size=8)
    assert data.labels.shape == (10, 5) and data.labels[2, 1] == 1 and data.labels[7, 4] == 1
    data.items = [data.items[7], data.items[0]]
    np.testing.assert_array_equal(data.labels, [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    assert data.patients == ["b", "a"]


def test_preload_fills_the_cache_with_what_lazy_reads_give():
    series = [_series("a", n=4), _series("b", n=3, positive=2)]
    lazy, loaded = SliceStackDataset(series, 16), SliceStackDataset(series, 16)
    loaded.preload(threads=2)
    assert sorted(loaded._cache) == [0, 1]
    for k in range(len(lazy)):
        assert torch.equal(lazy[k]["image"], loaded[k]["image"])


def test_saved_split_follows_the_same_data_to_another_path(tmp_path):
    """A model trained on a copy of the data (another spec) is calibrated/evaluated on its own held-out patients."""
    from train.calibrate import open_for_model

    patients = open_source("phantom:6").patients
    Split(train=patients[:3], val=patients[3:5], test=patients[5:], source="phantom:6-copy-elsewhere").save(tmp_path)
    assert open_for_model(tmp_path, "phantom:6", {})[1] is None  # auto: another spec, so every patient
    _, split = open_for_model(tmp_path, "phantom:6", {}, "saved")
    assert split.test == patients[5:] and split.val == patients[3:5]
    Split(train=["nobody"], val=patients[:1], source="x").save(tmp_path)
    with pytest.raises(ConfigError, match="nobody"):
        open_for_model(tmp_path, "phantom:6", {}, "saved")
    with pytest.raises(ConfigError, match="--split must be"):
        open_for_model(tmp_path, "phantom:6", {}, "mine")

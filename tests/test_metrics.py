import math

import numpy as np
import pytest

from ichdemo.metrics import (
    auroc_per_class,
    binary_dice,
    confusion_matrix,
    dice_from_confusion,
    dice_per_class,
    instance_dice,
    summarize,
)


def test_binary_dice_hand_computed_and_empty():
    # |A| = 2, |B| = 2, |A n B| = 1 -> 2 * 1 / 4 = 0.5
    assert binary_dice([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5
    assert binary_dice([0, 3, 0], [0, 255, 0]) == 1.0  # any non-zero is foreground
    assert binary_dice([1, 0], [0, 1]) == 0.0
    assert binary_dice(np.zeros(4), np.zeros(4)) == 1.0
    assert math.isnan(binary_dice(np.zeros(4), np.zeros(4), empty=np.nan))
    with pytest.raises(ValueError, match="differ in shape"):
        binary_dice(np.zeros(3), np.zeros(4))


def test_dice_per_class_pooled_hand_computed():
    pred = np.array([[0, 1, 1], [2, 0, 0]])
    true = np.array([[0, 1, 0], [2, 2, 0]])
    # Normal: true 3 px, pred 3 px, both at (0,0) and (1,2) -> 2*2/6 = 2/3
    # IPH: true 1, pred 2, overlap 1 -> 2/3; IVH: true 2, pred 1, overlap 1 -> 2/3; SAH, SDH, EDH absent -> NaN
    d = dice_per_class(pred, true)
    assert list(d) == ["Normal", "IPH", "IVH", "SAH", "SDH", "EDH", "AVG"]
    assert d["Normal"] == pytest.approx(2 / 3) and d["IPH"] == pytest.approx(2 / 3)
    assert d["IVH"] == pytest.approx(2 / 3)
    assert all(math.isnan(d[k]) for k in ("SAH", "SDH", "EDH"))
    assert d["AVG"] == pytest.approx(2 / 3)  # mean of the three defined classes only
    # a class predicted but absent from the truth is defined and 0: it lowers the average
    pred2 = pred.copy()
    pred2[1, 2] = 5
    d2 = dice_per_class(pred2, true)
    # Normal now: pred 2 px, overlap 1 -> 2*1/5 = 0.4; EDH: 0; AVG = (0.4 + 2/3 + 2/3 + 0) / 4
    assert d2["Normal"] == pytest.approx(0.4) and d2["EDH"] == 0.0
    assert d2["AVG"] == pytest.approx((0.4 + 4 / 3) / 4)


def test_dice_pools_pixels_across_scans_via_confusion_sum():
    rng = np.random.default_rng(0)
    p1, t1 = rng.integers(0, 6, (3, 8, 8)), rng.integers(0, 6, (3, 8, 8))
    p2, t2 = rng.integers(0, 6, (2, 8, 8)), rng.integers(0, 6, (2, 8, 8))
    cm = confusion_matrix(p1, t1) + confusion_matrix(p2, t2)
    pooled = dice_per_class(np.concatenate([p1, p2]), np.concatenate([t1, t2]))
    np.testing.assert_allclose(dice_from_confusion(cm), [pooled[k] for k in list(pooled)[:6]])
    assert cm.sum() == 5 * 64 and cm[2, 3] == np.sum((t1 == 2) & (p1 == 3)) + np.sum((t2 == 2) & (p2 == 3))


def test_dice_all_normal_and_bad_input():
    z = np.zeros((2, 4, 4), np.uint8)
    d = dice_per_class(z, z)
    assert d["Normal"] == 1.0 and d["AVG"] == 1.0 and math.isnan(d["IPH"])
    with pytest.raises(ValueError, match="0..5"):
        dice_per_class(z + 6, z)
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_class(z, z[0])
    assert list(dice_per_class(np.array([0, 1]), np.array([0, 1]), num_classes=2)) == ["0", "1", "AVG"]


def test_auroc_hand_computed_and_undefined_class():
    y = np.zeros((4, 5), int)
    p = np.zeros((4, 5))
    y[:, 0], p[:, 0] = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]  # 3 of 4 positive-negative pairs ordered -> 0.75
    y[:, 1], p[:, 1] = [0, 1, 0, 1], [0.2, 0.9, 0.3, 0.6]  # perfectly separated -> 1.0
    y[:, 2], p[:, 2] = [1, 0, 1, 0], [0.2, 0.9, 0.3, 0.6]  # reversed -> 0.0
    y[:, 3], p[:, 3] = [1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]  # all tied -> 0.5
    # EDH: no positive -> NaN
    a = auroc_per_class(y, p)
    assert [a[k] for k in ("IPH", "IVH", "SAH", "SDH")] == pytest.approx([0.75, 1.0, 0.0, 0.5])
    assert math.isnan(a["EDH"]) and a["AVG"] == pytest.approx((0.75 + 1 + 0 + 0.5) / 4)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        auroc_per_class(y[:, :4], p[:, :4])


def _box(vol, s, r, c, value):
    vol[s[0] : s[1], r[0] : r[1], c[0] : c[1]] = value


def test_instance_dice_scan_mode_hand_computed():
    true = np.zeros((12, 40, 40), np.uint8)
    pred = np.zeros_like(true)
    _box(true, (0, 10), (0, 20), (0, 20), 1)  # IPH: 10 x 20 x 20 = 4000 voxels
    _box(pred, (0, 10), (0, 20), (5, 25), 1)  # shifted by 5 columns: overlap 10 x 20 x 15 = 3000
    _box(true, (0, 1), (30, 40), (30, 40), 3)  # SAH: 100 voxels, below the 3000 limit: not counted
    _box(pred, (0, 1), (30, 40), (30, 40), 3)
    d = instance_dice(pred, true)
    assert d["IPH"] == [pytest.approx(2 * 3000 / 8000)]  # 0.75
    assert d["SAH"] == [] and d["IVH"] == [] and d["EDH"] == []
    assert instance_dice(pred, true, min_voxels=50)["SAH"] == [1.0]
    # the limit is strict ("larger than"): a 4000-voxel lesion with min_voxels=4000 is not counted
    assert instance_dice(pred, true, min_voxels=4000)["IPH"] == []


def test_instance_dice_uses_26_connectivity():
    # two 2000-voxel boxes touching only corner to corner (slice, row and column all differ by 1): one
    # 26-connected lesion of 4000 voxels (6- or 18-connectivity would see two lesions of 2000)
    true = np.zeros((20, 40, 40), np.uint8)
    _box(true, (0, 10), (0, 10), (0, 20), 2)
    _box(true, (10, 20), (10, 20), (20, 40), 2)
    pred = np.zeros_like(true)
    _box(pred, (0, 10), (0, 10), (0, 20), 2)  # finds one half: Dice = 2 * 2000 / (2000 + 4000) = 2/3
    assert instance_dice(pred, true)["IVH"] == [pytest.approx(2 / 3)]  # with 6-connectivity: two 2000s, none counted


def test_instance_dice_component_mode_ignores_far_false_positives():
    true = np.zeros((12, 60, 60), np.uint8)
    _box(true, (0, 10), (0, 20), (0, 20), 4)  # SDH lesion of 4000 voxels
    _box(true, (0, 3), (55, 58), (0, 3), 4)  # a 27-voxel fleck, below the limit
    pred = np.zeros_like(true)
    _box(pred, (0, 10), (0, 20), (0, 20), 4)  # the lesion, exactly
    _box(pred, (0, 10), (30, 40), (30, 40), 4)  # a separate false positive of 1000 voxels
    # scan mode: 2 * 4000 / (4027 + 5000); component mode: the false positive touches no true lesion -> 1.0
    assert instance_dice(pred, true)["SDH"] == [pytest.approx(8000 / 9027)]
    assert instance_dice(pred, true, mode="component")["SDH"] == [1.0]
    # two large true lesions -> two values; a missed lesion scores 0
    _box(true, (0, 10), (30, 50), (44, 60), 4)  # a second lesion, 3200 voxels, not predicted at all
    scores = instance_dice(pred, true, mode="component")["SDH"]
    assert len(scores) == 2 and scores[0] == 1.0 and scores[1] == 0.0
    with pytest.raises(ValueError, match="mode"):
        instance_dice(pred, true, mode="lesion")


def test_summarize():
    mean, sd = summarize([0.5, 0.7])
    assert mean == pytest.approx(0.6) and sd == pytest.approx(np.sqrt(0.02))  # sample sd, ddof = 1
    mean, sd = summarize([0.4, float("nan")])
    assert mean == 0.4 and math.isnan(sd)
    assert all(math.isnan(v) for v in summarize([]))

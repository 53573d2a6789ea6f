import itertools

import numpy as np
import pytest

from ichdemo.calibrate import PAPER_GRID, fit_fixed_scale, grid_search_mask_thresholds, youden_thresholds
from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.metrics import binary_dice
from ichdemo.quantify import algorithm1

# ----------------------------------------------------------------------------------------------- Youden


def test_youden_hand_computed():
    y = np.zeros((6, 5), int)
    p = np.full((6, 5), 0.5)
    # IPH: ROC points (score >= t): t=.9 J=1/3, t=.7 J=2/3-0=2/3, t=.6 J=2/3-1/3, t=.4 J=1-1/3=2/3, t=.2 J=1/3.
    # The first maximum is t = 0.7; with the strict gate prob > c the same point is c = (0.7 + 0.6) / 2 = 0.65.
    y[:, 0], p[:, 0] = [0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.6, 0.4, 0.7, 0.9]
    # IVH: separable at 0.6 -> J = 1, c = (0.6 + 0.3) / 2 = 0.45
    y[:, 1], p[:, 1] = [0, 0, 1, 1, 0, 1], [0.1, 0.3, 0.6, 0.8, 0.2, 0.95]
    # SAH: no positives -> 0.5 and a warning; SDH: all positive -> 0.5 and a warning
    y[:, 3] = 1
    # EDH: the positive has the lowest score: best J = 0 is "nothing positive" -> gate above the top score
    y[:, 4], p[:, 4] = [1, 0, 0, 0, 0, 0], [0.05, 0.2, 0.3, 0.4, 0.5, 0.6]
    c, report = youden_thresholds(y, p)
    np.testing.assert_allclose(c, [0.65, 0.45, 0.5, 0.5, 0.6])
    assert report["IPH"]["j"] == pytest.approx(2 / 3) and report["IPH"]["tpr"] == pytest.approx(2 / 3)
    assert report["IPH"]["fpr"] == 0.0 and report["IVH"]["j"] == 1.0
    assert len(report["warnings"]) == 2 and report["warnings"][0].startswith("SAH: 0 positive")
    assert report["warnings"][1].startswith("SDH: 6 positive and 0 negative")
    # the thresholds reproduce the reported operating point under Algorithm 1's strict gate
    gated = p > c[None, :]
    assert gated[:, 0].tolist() == [False, False, False, False, True, True]
    assert gated[:, 1].tolist() == [False, False, True, True, False, True]
    assert not gated[:, 4].any()


def test_youden_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        youden_thresholds(np.zeros((4, 5)), np.zeros((4, 4)))


# ----------------------------------------------------------------------------------------------- mask thresholds


def _mean_subtype_dice(labels, masks):
    vals = []
    for k in range(1, 6):
        t, p = masks == k, labels == k
        if t.any():
            vals.append(2 * np.sum(t & p) / (t.sum() + p.sum()))
    return float(np.mean(vals))


@pytest.mark.parametrize("binary", [False, True])
def test_joint_grid_search_is_exact_against_brute_force(binary):
    rng = np.random.default_rng(3)
    maps = rng.integers(0, 256, (6, 5, 12, 10)).astype(np.float32)
    maps[:, 2] = maps[:, 0]  # IPH and SAH tie everywhere: the argmax tie rule matters
    probs, c = rng.random((6, 5)), [0.3] * 5
    labels_true = rng.integers(0, 6, (6, 12, 10)).astype(np.uint8)
    masks = labels_true > 0 if binary else labels_true
    grid = [50, 100, 200]

    def objective(m):
        labels = algorithm1(probs, maps, c, m)
        return binary_dice(labels > 0, masks) if binary else _mean_subtype_dice(labels, masks)

    brute = {m: objective(m) for m in itertools.product(grid, repeat=5)}
    top = max(brute.values())
    for method in ("exhaustive", "coordinate"):
        best, table = grid_search_mask_thresholds(probs, maps, masks, c, grid=grid, method=method)
        assert table["method"] == method
        assert table["score"] == pytest.approx(top, abs=1e-12)
        assert brute[tuple(best)] == pytest.approx(top, abs=1e-12)
    assert table["objective"] == ("binary_dice" if binary else "mean_subtype_dice")
    assert table["pixels"] == 6 * 12 * 10


def _competing_subtypes():
    """One slice of 30 pixels where IPH's own best threshold steals SDH's pixels.

    pixels 0-9: truth IPH, IPH map 120; 10-19: truth SDH, IPH map 60, SDH map 50; 20-29: truth IPH, IPH map 30.
    """
    maps = np.zeros((1, 5, 1, 30), np.float32)
    maps[0, 0, 0, :10], maps[0, 0, 0, 10:20], maps[0, 0, 0, 20:] = 120, 60, 30
    maps[0, 3, 0, 10:20] = 50
    masks = np.zeros((1, 1, 30), np.uint8)
    masks[0, 0, :10], masks[0, 0, 10:20], masks[0, 0, 20:] = 1, 4, 1
    probs = np.array([[0.9, 0.1, 0.1, 0.9, 0.1]])
    return probs, maps, masks


def test_joint_beats_independent_when_subtypes_compete():
    probs, maps, masks = _competing_subtypes()
    # Independent: IPH alone is best at m=25 (all 30 px predicted, 20 true: Dice 40/50 = 0.8) and SDH alone at
    # m=25 (Dice 1); together IPH (60) wins SDH's pixels (50): mean Dice (0.8 + 0) / 2 = 0.4.
    # Jointly: IPH at 75 or 100 keeps only its 120s (Dice 20/30 = 2/3), SDH at 25 gets its own (1.0): 0.8333.
    # Ties go to the higher threshold: IPH 100; IVH, SAH and EDH have no signal and go to the top of the grid.
    indep, t_ind = grid_search_mask_thresholds(probs, maps, masks, [0.5] * 5, joint=False)
    assert indep.tolist() == [25, 200, 200, 25, 200] and t_ind["score"] == pytest.approx(0.4)
    for method in ("exhaustive", "coordinate"):
        best, table = grid_search_mask_thresholds(probs, maps, masks, [0.5] * 5, method=method)
        assert best.tolist() == [100, 200, 200, 25, 200]
        assert table["score"] == pytest.approx((2 / 3 + 1) / 2)
        labels = algorithm1(probs, maps, [0.5] * 5, best)
        assert _mean_subtype_dice(labels, masks) == pytest.approx(table["score"])
    assert table["independent"] == dict(zip(CLASSES, [25.0, 200.0, 200.0, 25.0, 200.0]))
    assert table["grid"] == list(map(float, PAPER_GRID))
    # curves: objective vs IPH threshold with SDH at 25. 25 -> 0.4; 50 -> IPH on pixels 0-19 (TP 10): Dice
    # 20 / 40 = 0.5, SDH 0 -> 0.25; 75 and 100 -> 5/6; above, no IPH at all: (0 + 1) / 2 = 0.5
    np.testing.assert_allclose(table["curves"]["IPH"], [0.4, 0.25, 5 / 6, 5 / 6, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(table["class_dice"]["IPH"], [0.8, 0.5, 2 / 3, 2 / 3, 0, 0, 0, 0])
    assert any(w.startswith("IVH: no gated heatmap pixel") for w in table["warnings"])


def test_binary_masks_recover_a_known_threshold():
    # an IPH ramp 0..255; the mask marks ramp > 100: the best threshold on the paper's grid is exactly 100
    ramp = np.tile(np.arange(256, dtype=np.float32), (4, 1))  # (4, 256)
    maps = np.zeros((1, 5, 4, 256), np.float32)
    maps[0, 0] = ramp
    probs = np.array([[0.9, 0.0, 0.0, 0.0, 0.0]])
    best, table = grid_search_mask_thresholds(probs, maps, ramp[None] > 100, [0.5] * 5)
    assert best[0] == 100 and table["score"] == 1.0 and table["objective"] == "binary_dice"
    # 0/255 masks (as read from CT-ICH JPEGs) are binary too; 0/1 integer masks must be declared
    best255, _ = grid_search_mask_thresholds(probs, maps, (ramp[None] > 100).astype(np.uint8) * 255, [0.5] * 5)
    assert best255[0] == 100
    with pytest.raises(ConfigError, match="mask_kind"):
        grid_search_mask_thresholds(probs, maps, (ramp[None] > 100).astype(np.uint8), [0.5] * 5)
    best01, _ = grid_search_mask_thresholds(probs, maps, (ramp[None] > 100).astype(np.uint8), [0.5] * 5,
                                            mask_kind="binary")
    assert best01[0] == 100


@pytest.mark.parametrize("binary", [True, False])
def test_closed_gates_everywhere_give_zero_dice_not_a_crash(binary):
    # every slice below its class threshold: no pixel is ever active (this crashed on an int64 empty bincount)
    maps = np.full((2, 5, 4, 4), 200.0, np.float32)
    truth = np.zeros((2, 4, 4), bool if binary else np.int64)
    truth[:, 1:3, 1:3] = True if binary else 1
    best, table = grid_search_mask_thresholds(np.full((2, 5), 0.1), maps, truth, [0.5] * 5,
                                              mask_kind="binary" if binary else "labels")
    assert len(best) == 5 and table["score"] == 0.0


def test_grid_search_rejects_bad_input():
    probs, maps, masks = _competing_subtypes()
    with pytest.raises(UnsupportedInputError, match="no hemorrhage"):
        grid_search_mask_thresholds(probs, maps, np.zeros_like(masks), [0.5] * 5)
    with pytest.raises(ConfigError, match="grid"):
        grid_search_mask_thresholds(probs, maps, masks, [0.5] * 5, grid=[25, 300])
    with pytest.raises(ValueError, match="masks"):
        grid_search_mask_thresholds(probs, maps, masks[:, :, :10], [0.5] * 5)
    with pytest.raises(ConfigError, match="method"):
        grid_search_mask_thresholds(probs, maps, masks, [0.5] * 5, method="random")


# ----------------------------------------------------------------------------------------------- fixed scale


def test_fit_fixed_scale_uses_the_median_peak_of_positive_slices():
    maps = np.zeros((3, 5, 2, 2), np.float32)
    maps[:, 0, 0, 0] = [2.0, 4.0, 10.0]  # IPH peaks; slice 2 is negative for IPH
    maps[:, 1, 1, 1] = [1.0, 3.0, 5.0]  # IVH peaks; no IVH label at all -> all slices, with a warning
    y = np.zeros((3, 5), int)
    y[:2, 0] = 1
    y[:, 2:] = 1  # SAH..EDH positive everywhere but their maps are 0 -> 1.0 with a warning
    scale, report = fit_fixed_scale(maps, y)
    np.testing.assert_allclose(scale, [3.0, 3.0, 1.0, 1.0, 1.0])  # median of (2, 4); median of (1, 3, 5)
    assert report["warnings"][0].startswith("IVH: no positive slice")
    assert sum("never positive" in w for w in report["warnings"]) == 3
    np.testing.assert_allclose(fit_fixed_scale(maps, y, quantile=1.0)[0][:2], [4.0, 5.0])
    with pytest.raises(ConfigError, match="quantile"):
        fit_fixed_scale(maps, y, quantile=0)


def test_real_ct_ich_jpeg_masks_are_binarised_above_127():
    from pathlib import Path

    from PIL import Image
    from scipy import ndimage

    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct-ich" / "Patients_CT"
    files = sorted(root.glob("*/brain/*_HGE_Seg.jpg"))[:3]
    if not files:
        pytest.skip("CT-ICH masks not found at ../shared/data/ct-ich (real-data test)")
    masks = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])  # (3, 650, 650) 0..255 with noise
    assert np.any((masks > 0) & (masks < 128))  # the JPEG noise this test is about
    # a smooth stand-in heatmap peaking inside each lesion (IPH channel), on the 0..255 scale per image
    blurred = ndimage.gaussian_filter((masks >= 128).astype(np.float32), (0, 6, 6))
    maps = np.zeros((3, 5, *masks.shape[1:]), np.float32)
    maps[:, 0] = 255 * blurred / blurred.max(axis=(1, 2), keepdims=True)
    probs = np.tile([0.9, 0, 0, 0, 0], (3, 1))
    best, table = grid_search_mask_thresholds(probs, maps, masks, [0.5] * 5)
    assert table["objective"] == "binary_dice" and table["pixels"] == masks.size
    labels = algorithm1(probs, maps, [0.5] * 5, best)
    assert table["score"] == pytest.approx(binary_dice(labels > 0, masks >= 128), abs=1e-12)
    assert table["score"] > 0.8

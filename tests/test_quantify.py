
import numpy as np
import pytest

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError
from ichdemo.quantify import (
    PAPER_MASK_THRESHOLDS,
    Thresholds,
    abc2_ml,
    algorithm1,
    feret_diameters,
    labels_from_heatmaps,
    parse_thresholds,
    scale_heatmaps,
    volumes_ml,
)


def reference_algorithm1(probs, maps, c, m):
    """Algorithm 1 written literally: a 6-channel M, channel 0 zeros, then argmax (numpy: first max wins)."""
    n, _, h, w = maps.shape
    big = np.zeros((n, 6, h, w), np.float64)
    for i in range(n):
        for k in range(5):
            if probs[i, k] > c[k]:
                big[i, k + 1] = np.where(maps[i, k] > m[k], maps[i, k], 0)
    return big.argmax(1).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- Algorithm 1


def test_algorithm1_hand_computed():
    # one slice, 1 x 5 pixels; thresholds m = 100 for every class, c = 0.5
    maps = np.zeros((1, 5, 1, 5), np.float32)
    maps[0, 0] = [150, 100, 200, 120, 0]  # IPH
    maps[0, 1] = [250, 250, 250, 250, 250]  # IVH: gated off below (prob 0.2), never counts
    maps[0, 2] = [140, 101, 200, 130, 0]  # SAH
    maps[0, 4] = [0, 0, 0, 0, 90]  # EDH: 90 <= 100, below its mask threshold
    probs = np.array([[0.9, 0.2, 0.6, 0.0, 0.99]])
    labels = algorithm1(probs, maps, [0.5] * 5, [100] * 5)
    # px0: IPH 150 > SAH 140 -> 1; px1: IPH 100 is not > 100, SAH 101 -> 3; px2: tie 200/200 -> lowest, IPH -> 1;
    # px3: SAH 130 > IPH 120 -> 3; px4: nothing passes -> 0 (normal)
    assert labels.dtype == np.uint8 and labels.shape == (1, 1, 5)
    assert labels[0, 0].tolist() == [1, 3, 1, 3, 0]
    # the same with uint8 maps, and for one image given without the batch axis
    assert algorithm1(probs, maps.astype(np.uint8), [0.5] * 5, [100] * 5).tolist() == labels.tolist()
    assert algorithm1(probs[0], maps[0], [0.5] * 5, [100] * 5).tolist() == labels[0].tolist()


def test_algorithm1_class_gate_is_strict():
    maps = np.full((1, 5, 2, 2), 200, np.uint8)
    labels = algorithm1(np.array([[0.5, 0.5, 0.5, 0.5, 0.51]]), maps, [0.5] * 5, [0] * 5)
    assert (labels == 5).all()  # only EDH has prob > c
    assert (algorithm1(np.full((1, 5), 0.5), maps, [0.5] * 5, [0] * 5) == 0).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
def test_algorithm1_matches_literal_reference(dtype):
    rng = np.random.default_rng(7)
    maps = rng.integers(0, 256, (9, 5, 13, 11)).astype(dtype)
    maps[:, 3] = maps[:, 1]  # exact ties between IVH and SDH
    if dtype != np.uint8:
        maps += (rng.random(maps.shape) < 0.3).astype(dtype) * dtype(0.5)
    probs = rng.random((9, 5))
    c, m = rng.random(5), np.array([0, 62.5, 100, 254, 255])
    expected = reference_algorithm1(probs, maps.astype(np.float64), c, m)
    np.testing.assert_array_equal(algorithm1(probs, maps, c, m), expected)


def test_algorithm1_uint8_cache_equals_float_path_for_integer_thresholds():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(4, 5, 16, 16)).astype(np.float32)
    probs = np.ones((4, 5))
    f32 = scale_heatmaps(raw)
    u8 = scale_heatmaps(raw, dtype=np.uint8)
    for m in ([25, 50, 75, 100, 125], [200, 0, 254, 1, 128]):
        a, b = algorithm1(probs, f32, [0.5] * 5, m), algorithm1(probs, u8, [0.5] * 5, m)
        # pass/fail per pixel and class is identical; only float near-ties may resolve differently after rounding
        np.testing.assert_array_equal(a > 0, b > 0)
        assert np.mean(a == b) > 0.98


def test_algorithm1_rejects_bad_shapes_and_thresholds():
    maps = np.zeros((2, 5, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="probs shape"):
        algorithm1(np.zeros((3, 5)), maps, [0.5] * 5, [100] * 5)
    with pytest.raises(ValueError, match=r"\(N, 5, H, W\)"):
        algorithm1(np.zeros((2, 4)), maps[:, :4], [0.5] * 5, [100] * 5)
    with pytest.raises(ConfigError, match="mask thresholds must lie in"):
        algorithm1(np.zeros((2, 5)), maps, [0.5] * 5, [100, 100, 100, 100, 300])
    with pytest.raises(ConfigError, match="need 5 class thresholds"):
        algorithm1(np.zeros((2, 5)), maps, [0.5] * 4, [100] * 5)


# ----------------------------------------------------------------------------------------------- scaling


def test_scale_heatmaps_image_mode_hand_computed():
    maps = np.zeros((1, 5, 2, 2), np.float32)
    maps[0, 0] = [[0, 2], [4, -1]]  # max 4: [0, 127.5, 255, 0 (negative clipped)]
    maps[0, 1] = [[np.nan, 1], [0.5, 0]]  # NaN -> 0, max 1
    out = scale_heatmaps(maps, "image")
    np.testing.assert_allclose(out[0, 0], [[0, 127.5], [255, 0]])
    np.testing.assert_allclose(out[0, 1], [[0, 255], [127.5, 0]])
    assert (out[0, 2:] == 0).all()  # all-zero maps stay zero (no division by 0)
    u8 = scale_heatmaps(maps, "image", dtype=np.uint8)
    assert u8.dtype == np.uint8 and u8[0, 0].tolist() == [[0, 128], [255, 0]]  # rounded up


def test_scale_heatmaps_fixed_mode_is_per_class_and_clipped():
    maps = np.zeros((2, 5, 1, 3), np.float32)
    maps[0, 0, 0] = [2, 8, 16]
    maps[1, 0, 0] = [1, 0, 0]  # a weak slice stays weak with a fixed scale (image mode would lift it to 255)
    maps[0, 3, 0] = [1, 2, 3]
    out = scale_heatmaps(maps, "fixed", scale=[8, 1, 1, 3, 1])
    np.testing.assert_allclose(out[0, 0, 0], [63.75, 255, 255])
    np.testing.assert_allclose(out[1, 0, 0], [31.875, 0, 0])
    np.testing.assert_allclose(out[0, 3, 0], [85, 170, 255])
    assert scale_heatmaps(maps, "image")[1, 0, 0, 0] == 255
    with pytest.raises(ConfigError, match="needs a per-class scale"):
        scale_heatmaps(maps, "fixed")
    with pytest.raises(ConfigError, match="scale mode"):
        scale_heatmaps(maps, "percentile")


def test_labels_from_heatmaps_uses_the_threshold_scale():
    maps = np.zeros((1, 5, 1, 2), np.float32)
    maps[0, 0, 0] = [1.0, 0.2]  # image scale: [255, 51]; fixed scale 2: [127.5, 25.5]
    probs = np.array([[0.9, 0, 0, 0, 0]])
    image = Thresholds(mask_thresholds=[50] * 5)
    fixed = Thresholds(mask_thresholds=[50] * 5, scale_mode="fixed", scale=[2] * 5)
    assert labels_from_heatmaps(probs, maps, image)[0, 0].tolist() == [1, 1]
    assert labels_from_heatmaps(probs, maps, fixed)[0, 0].tolist() == [1, 0]


# ----------------------------------------------------------------------------------------------- thresholds


def test_thresholds_defaults_round_trip_and_overrides():
    t = Thresholds()
    assert t.class_thresholds == (0.5,) * 5 and t.mask_thresholds == (75, 125, 125, 75, 25)
    assert t.scale_mode == "image" and t.scale is None
    d = t.to_dict()
    assert d == {"class_thresholds": [0.5] * 5, "mask_thresholds": [75.0, 125.0, 125.0, 75.0, 25.0],
                 "scale_mode": "image", "scale": None}
    assert Thresholds.from_config(d) == t
    assert Thresholds.from_config({"thresholds": d, "architecture": "lse_unet"}) == t  # a whole model config
    fixed = Thresholds.from_config({"mask_thresholds": "25,50,75,100,125", "scale_mode": "fixed",
                                    "scale": {"IPH": 1, "IVH": 2, "SAH": 3, "SDH": 4, "EDH": 5}})
    assert fixed.mask_thresholds == (25, 50, 75, 100, 125) and fixed.scale == (1, 2, 3, 4, 5)
    assert Thresholds.from_config(fixed.to_dict()) == fixed
    over = fixed.replace(class_thresholds=[0.1, 0.2, 0.3, 0.4, 0.5], mask_thresholds=None)
    assert over.class_thresholds == (0.1, 0.2, 0.3, 0.4, 0.5) and over.mask_thresholds == fixed.mask_thresholds


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"class_thresholds": [0.5] * 4}, "need 5 class thresholds"),
        ({"class_thresholds": [0.5, 0.5, 0.5, 0.5, 1.5]}, r"EDH=1.5"),
        ({"class_thresholds": [0.5, float("nan"), 0.5, 0.5, 0.5]}, "IVH=nan"),
        ({"mask_thresholds": [75, 125, -1, 75, 25]}, r"\[0, 255\].*SAH=-1"),
        ({"mask_thresholds": ["a", 1, 2, 3, 4]}, "must be numbers"),
        ({"scale_mode": "global"}, "scale_mode must be one of"),
        ({"scale_mode": "fixed"}, "needs a per-class 'scale'"),
        ({"scale_mode": "fixed", "scale": [1, 1, 0, 1, 1]}, "positive"),
        ({"mask_threshold": [1] * 5}, "unknown threshold setting"),
        ({"class_thresholds": {"IPH": 0.5}}, "missing"),
    ],
)
def test_thresholds_validation(cfg, match):
    with pytest.raises(ConfigError, match=match):
        Thresholds.from_config(cfg)


def test_parse_thresholds():
    assert parse_thresholds("0.1, 0.2,0.3,0.4 ,0.5") == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert parse_thresholds("75,125,125,75,25", kind="mask") == PAPER_MASK_THRESHOLDS
    for text, kind, match in [
        ("0.5,0.5,0.5,0.5", "class", "need 5 comma-separated class thresholds"),
        ("0.5,0.5,,0.5,0.5", "class", "need 5"),
        ("0.5,0.5,x,0.5,0.5", "class", "must be numbers"),
        ("75,125,125,75,25", "class", r"must lie in \[0, 1\]"),
        ("75,125,125,75,256", "mask", "EDH=256"),
        ("1,1,1,1,1", "probability", "kind"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_thresholds(text, kind=kind)


# ----------------------------------------------------------------------------------------------- volumes


def test_algorithm1_then_volumes_gives_exact_ml():
    # 3 slices of 20 x 20; IPH block 2 slices x 10 x 5 = 100 voxels, SDH block 1 slice x 4 x 4 = 16 voxels
    maps = np.zeros((3, 5, 20, 20), np.uint8)
    maps[0:2, 0, 2:12, 3:8] = 200
    maps[2, 3, 10:14, 10:14] = 180
    maps[2, 2, :, :] = 250  # SAH everywhere on slice 2, but its class probability is below c
    probs = np.array([[0.9, 0, 0, 0, 0], [0.9, 0, 0, 0, 0], [0, 0, 0.3, 0.8, 0]])
    labels = algorithm1(probs, maps, [0.5] * 5, PAPER_MASK_THRESHOLDS)
    spacing = (5.0, 0.5, 0.4)  # 1 voxel = 1.0 mm^3 = 0.001 mL
    vol = volumes_ml(labels, spacing)
    assert vol == pytest.approx({"IPH": 0.100, "IVH": 0.0, "SAH": 0.0, "SDH": 0.016, "EDH": 0.0, "total": 0.116})
    assert list(vol) == [*CLASSES, "total"]


def test_volumes_reject_bad_spacing_and_labels():
    labels = np.zeros((2, 3, 3), np.uint8)
    for bad in [(1, 1), (1, 0, 1), (1, float("nan"), 1), "abc"]:
        with pytest.raises(ConfigError, match="spacing"):
            volumes_ml(labels, bad)
    with pytest.raises(ValueError, match="0..5"):
        volumes_ml(labels + 6, (1, 1, 1))
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        volumes_ml(labels[0], (1, 1, 1))


# ----------------------------------------------------------------------------------------------- ABC/2


def test_abc2_of_a_box_is_hand_computable():
    # a 10 x 20 pixel rectangle on 3 slices, 1 mm pixels, 5 mm slices. A = diagonal sqrt(10^2 + 20^2);
    # B = the rectangle's extent across the diagonal = 2 * w * h / A, so A * B = 2 * 10 * 20 = 400 mm^2;
    # C = 3 slices * 5 mm = 15 mm; ABC/2 = 400 * 15 / 2 = 3000 mm^3 = 3.0 mL (the true volume is 200 * 15 = 3 mL)
    labels = np.zeros((5, 40, 40), np.uint8)
    labels[1:4, 5:15, 10:30] = 4  # SDH
    a, b = feret_diameters(labels[1] == 4, 1.0, 1.0)
    assert a == pytest.approx(np.hypot(10, 20)) and b == pytest.approx(400 / np.hypot(10, 20))
    est = abc2_ml(labels, (5.0, 1.0, 1.0))
    assert est["SDH"] == pytest.approx(3.0) and est["total"] == pytest.approx(3.0)
    assert est["IPH"] == 0.0 and est["EDH"] == 0.0


def test_abc2_uses_the_largest_slice_and_weighted_c():
    # slice areas 100, 400 (largest), 200 pixels. "count": C = 3 slices. "weighted" (Kothari): 400/400 -> 1,
    # 100/400 = 25 % -> 0.5, 200/400 = 50 % -> 0.5, so C = 2 slices. A and B come from slice 1 (the 20 x 20 square).
    labels = np.zeros((3, 30, 30), np.uint8)
    labels[0, 0:10, 0:10] = 1
    labels[1, 0:20, 0:20] = 1
    labels[2, 0:10, 0:20] = 1
    a, b = np.hypot(20, 20), 2 * 20 * 20 / np.hypot(20, 20)
    assert abc2_ml(labels, (2, 1, 1))["IPH"] == pytest.approx(a * b * 3 * 2 / 2 / 1000)
    assert abc2_ml(labels, (2, 1, 1), c_method="weighted")["IPH"] == pytest.approx(a * b * 2 * 2 / 2 / 1000)
    with pytest.raises(ConfigError, match="c_method"):
        abc2_ml(labels, (2, 1, 1), c_method="kothari")


@pytest.mark.parametrize("angle", [0.0, 35.0])
def test_abc2_on_an_ellipsoid_matches_the_formula(angle):
    # ellipsoid with diameters A = 60 (in plane), B = 40 (in plane), C = 50 mm (across slices), rotated in plane.
    # True volume pi/6 * A*B*C = 62.83 mL; ABC/2 = 60 mL, i.e. 3/pi = 0.955 of the truth (ABC/2 assumes pi ~ 3).
    sp = (1.0, 0.5, 0.5)
    z, y, x = np.meshgrid(np.arange(-27, 27) + 0.5, (np.arange(-70, 70) + 0.5) * 0.5, (np.arange(-70, 70) + 0.5) * 0.5,
                          indexing="ij")
    t = np.deg2rad(angle)
    u, v = np.cos(t) * y + np.sin(t) * x, -np.sin(t) * y + np.cos(t) * x
    inside = (u / 30) ** 2 + (v / 20) ** 2 + (z / 25) ** 2 <= 1
    labels = inside.astype(np.uint8) * 2  # IVH
    true_ml, abc2_expected = np.pi / 6 * 60 * 40 * 50 / 1000, 60 * 40 * 50 / 2 / 1000
    vol = volumes_ml(labels, sp)["IVH"]
    est = abc2_ml(labels, sp)["IVH"]
    assert vol == pytest.approx(true_ml, rel=0.01)
    assert est == pytest.approx(abc2_expected, rel=0.03)
    assert est / vol == pytest.approx(3 / np.pi, rel=0.03)


def test_torch_tensors_are_accepted_at_the_boundary():
    torch = pytest.importorskip("torch")
    maps = torch.zeros((1, 5, 2, 2), dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        maps[0, 0, 0, 1] = 2.0
    probs = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.0]])
    scaled = scale_heatmaps(maps)  # bf16 with grad -> float32 numpy
    assert scaled.dtype == np.float32 and scaled[0, 0].tolist() == [[0, 255], [0, 0]]
    assert algorithm1(probs, torch.from_numpy(scaled), [0.5] * 5, [100] * 5)[0].tolist() == [[0, 1], [0, 0]]

"""ichdemo.refine on seeded phantoms, where every voxel's truth is known.

The raw drafts here are made to look like a weak model's: the true lesion dilated by several millimetres, noisy
blobs around it and hot spots outside the skull, with heatmaps that are a blur of the draft.
"""

import numpy as np
import pytest
from scipy import ndimage

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.io.window import grey_to_hu
from ichdemo.phantom import generate_phantom
from ichdemo.refine import (
    RefineParams,
    RefineResult,
    anatomy,
    intracranial_mask,
    refine,
    skull_threshold,
    subtype_rule,
)

C = [0.5] * len(CLASSES)
PLANE = np.ones((1, 3, 3), bool)  # in-plane 8-neighbourhood


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def cavity(p) -> np.ndarray:
    """Inside of the phantom's skull ring (noise-free), slice by slice."""
    skull = p.masks["skull"]
    filled = np.stack([ndimage.binary_fill_holes(s) for s in skull])
    return filled & ~skull


def spilled_draft(p, seed: int = 0, grow: int = 6, outside: bool = True):
    """(raw labels, maps255, probs) of a weak model: dilated, noisy truth, plus evidence in the scalp and air."""
    rng = np.random.default_rng(seed)
    raw = np.zeros(p.labels.shape, np.uint8)
    maps = np.zeros((p.shape[0], len(CLASSES)) + p.shape[1:], np.uint8)
    for k in range(len(CLASSES)):
        truth = p.labels == k + 1
        if not truth.any():
            continue
        near = ndimage.binary_dilation(truth, PLANE, iterations=grow)
        halo = ndimage.binary_dilation(truth, PLANE, iterations=3 * grow)
        noise = ndimage.gaussian_filter(rng.standard_normal(truth.shape), (0, 4, 4)) > 0.12
        draft = near | (noise & halo)
        raw[draft & (raw == 0)] = k + 1
        maps[:, k] = np.clip(ndimage.gaussian_filter(draft.astype(np.float32), (0, 3, 3)) * 255, 0, 255)
    if outside:  # hot evidence in the scalp and in the air: must never survive
        head_only = p.masks["head"] & ~cavity(p) & ~p.masks["skull"]
        air = ~p.masks["head"]
        for s in np.flatnonzero(p.slice_labels.any(axis=1)):
            raw[s][head_only[s]] = 1
            raw[s, :20, :20] = 1
            maps[s, :, :, :][:, head_only[s] | air[s]] = 255
    probs = np.where(p.slice_labels > 0, 0.9, 0.1)
    return raw, maps, probs


@pytest.fixture(scope="module")
def sdh_iph():
    return generate_phantom(11, ("IPH", "SDH"))


@pytest.fixture(scope="module")
def edh():
    return generate_phantom(8, ("EDH",))


# ----------------------------------------------------------------------------------------------- parameters


def test_params_round_trip():
    p = RefineParams(blood_hu=(48, 90), rim_mm=2.0, support=0.4)
    d = p.to_dict()
    assert d["blood_hu"] == [48.0, 90.0]
    assert RefineParams.from_config(d) == p
    assert RefineParams.from_config({"refine": d}) == p
    assert RefineParams.from_config(None) == RefineParams()
    assert RefineParams.from_config({"min_area_mm2": 20}).min_area_mm2 == 20.0


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({"blood_hu": (90, 50)}, "blood_hu"),
        ({"blood_hu": (50,)}, "blood_hu"),
        ({"blood_hu": "hot"}, "blood_hu"),
        ({"bone_hu": 80}, "bone_hu"),
        ({"air_hu": 60}, "air_hu"),
        ({"rim_mm": -1}, "rim_mm"),
        ({"support": 1.5}, "support"),
        ({"heat_support": 128}, "heat_support"),
        ({"min_area_mm2": float("nan")}, "min_area_mm2"),
        ({"extra_axial_mm": "near"}, "extra_axial_mm"),
        ({"rimm_mm": 1.0}, "unknown"),
    ],
)
def test_bad_params_raise_config_error(cfg, words):
    with pytest.raises(ConfigError, match=words):
        RefineParams.from_config(cfg)


# ----------------------------------------------------------------------------------------------- intracranial


def test_intracranial_volume_matches_phantom_geometry(sdh_iph):
    p = sdh_iph
    icm = intracranial_mask(p.hu, p.spacing)
    truth = cavity(p) & (p.hu > -200)  # the cavity less the skull base's air (sinus) voxels
    ml = icm.sum() * p.voxel_ml
    assert 1000.0 < ml < 1900.0  # an adult cranial cavity over 12 cm of height
    assert abs(ml - truth.sum() * p.voxel_ml) < 0.05 * truth.sum() * p.voxel_ml
    assert dice(icm, truth) > 0.97
    assert not (icm & p.masks["skull"]).any() or (icm & p.masks["skull"]).sum() < 0.005 * icm.sum()


def test_intracranial_handles_open_ring_and_no_skull(sdh_iph):
    p = sdh_iph
    s = p.shape[0] // 2
    hu = p.hu.copy()
    closed_area = intracranial_mask(hu[s : s + 1], p.spacing).sum()
    ring = p.masks["skull"][s]
    rows = np.arange(p.shape[1])[:, None]
    hu[s][ring & (rows < p.shape[1] // 2 - 20)] = 30.0  # a craniectomy: the front half of the ring is gone
    opened = intracranial_mask(hu[s : s + 1], p.spacing).sum()
    assert abs(opened - closed_area) < 0.2 * closed_area
    hu[s] = np.where(p.masks["head"][s], 30.0, -1000.0)  # no bone at all on this slice (the others have some)
    icm = intracranial_mask(hu, p.spacing)
    assert not icm[s].any() and icm[s - 1].any() and icm[s + 1].any()


def test_skull_threshold_follows_a_saturated_window(sdh_iph):
    params = RefineParams()
    assert skull_threshold(sdh_iph.hu, params) == (params.bone_hu, params.air_hu)
    clipped = np.clip(sdh_iph.hu, -20, 100)
    bone, air = skull_threshold(clipped, params)
    assert bone == pytest.approx(100 - params.saturation_margin_hu)
    assert air == pytest.approx(-20 + params.saturation_margin_hu)
    with pytest.raises(UnsupportedInputError, match="saturates"):
        skull_threshold(np.clip(sdh_iph.hu, -20, 50), params)


# ----------------------------------------------------------------------------------------------- refine


@pytest.mark.parametrize(
    "seed, subtypes",
    [(3, ("SDH",)), (1, ("IPH", "EDH")), (5, ("SAH", "IVH")), (7, ("IPH",))],
)
def test_refined_beats_a_spilled_draft(seed, subtypes):
    p = generate_phantom(seed, subtypes)
    raw, maps, probs = spilled_draft(p, seed)
    res = refine(p.hu, probs, maps, raw, C, p.spacing)
    truth = p.labels > 0
    d_raw, d_ref = dice(raw > 0, truth), dice(res.labels > 0, truth)
    assert d_ref > d_raw + 0.2
    assert d_ref > 0.75
    assert isinstance(res, RefineResult) and res.labels.dtype == np.uint8 and res.labels.shape == p.shape


def test_nothing_outside_the_skull_survives(sdh_iph):
    p = sdh_iph
    raw, maps, probs = spilled_draft(p, outside=True)
    res = refine(p.hu, probs, maps, raw, C, p.spacing)
    assert res.labels.any()
    assert not (res.labels > 0)[~cavity(p)].any()
    assert not (res.labels > 0)[~res.intracranial].any()


def test_gate_decides_whether_and_which(sdh_iph):
    p = sdh_iph
    raw, maps, probs = spilled_draft(p)
    probs = probs.copy()
    probs[:, CLASSES.index("SDH")] = 0.1  # SDH gated off everywhere, though its draft and heatmap are there
    res = refine(p.hu, probs, maps, raw, C, p.spacing)
    assert not (res.labels == CLASSES.index("SDH") + 1).any()
    assert all(r.subtype != "SDH" for r in res.regions)
    probs[:] = 0.0  # nothing gated: no blood anywhere, whatever the draft says
    res = refine(p.hu, probs, maps, raw, C, p.spacing)
    assert not res.labels.any() and res.regions == []


def test_a_series_anatomy_reused_across_thresholds_gives_what_a_fresh_one_does(sdh_iph):
    """The app keeps one ``anatomy`` per series, and with it each slice's candidate regions, across slider moves:
    re-thresholded drafts and gates must come out as a fresh refinement makes them."""
    p = sdh_iph
    raw, maps, probs = spilled_draft(p)
    known = anatomy(p.hu, p.spacing)
    for m, c in [(0, C), (40, C), (0, [0.05] * len(CLASSES)), (120, C)]:
        moved = np.where(maps.max(axis=1) > m, raw, 0).astype(np.uint8)  # a higher mask threshold: a smaller draft
        again = refine(p.hu, probs, maps, moved, c, p.spacing, known=known)
        fresh = refine(p.hu, probs, maps, moved, c, p.spacing)
        assert np.array_equal(again.labels, fresh.labels) and again.regions == fresh.regions
    assert known._slices  # the regions were kept, and used


def test_min_area_respected(sdh_iph):
    p = sdh_iph
    raw, maps, probs = spilled_draft(p)
    params = RefineParams(min_area_mm2=60.0)
    res = refine(p.hu, probs, maps, raw, C, p.spacing, params)
    px_mm2 = p.spacing[1] * p.spacing[2]
    assert res.regions and all(r.area_mm2 >= 60.0 for r in res.regions)
    for s in range(p.shape[0]):
        lab, n = ndimage.label(res.labels[s] > 0, np.ones((3, 3)))
        if n:
            assert np.bincount(lab.ravel())[1:].min() * px_mm2 >= 60.0
    small = refine(p.hu, probs, maps, raw, C, p.spacing, RefineParams(min_area_mm2=2.0))
    assert len(small.regions) >= len(res.regions)


def test_anatomy_types_extra_axial_blood(sdh_iph):
    """IPH and SDH both gated with the same heatmap over both lesions: only anatomy can tell them apart."""
    p = sdh_iph
    raw, maps, probs = spilled_draft(p, outside=False)
    both = np.maximum(maps[:, CLASSES.index("IPH")], maps[:, CLASSES.index("SDH")])
    maps[:, CLASSES.index("IPH")] = maps[:, CLASSES.index("SDH")] = both
    probs[:, CLASSES.index("IPH")] = probs[:, CLASSES.index("SDH")] = 0.9
    res = refine(p.hu, probs, maps, raw, C, p.spacing)
    for name in ("IPH", "SDH"):
        k = CLASSES.index(name) + 1
        assert dice(res.labels == k, p.labels == k) > 0.8, name
    sdh = [r for r in res.regions if r.subtype == "SDH"]
    assert sdh and all(r.extra_axial for r in sdh)


def test_edh_against_sdh_by_heat(edh):
    """Both extra-axial subtypes gated: the one with more heat mass in the region wins; IPH gated too never does."""
    p = edh
    raw, maps, probs = spilled_draft(p, outside=False)
    k_edh = CLASSES.index("EDH")
    maps[:, CLASSES.index("SDH")] = (maps[:, k_edh] * 0.6).astype(np.uint8)
    maps[:, CLASSES.index("IPH")] = (maps[:, k_edh] * 0.9).astype(np.uint8)
    probs[:, CLASSES.index("SDH")] = probs[:, CLASSES.index("IPH")] = probs[:, k_edh]
    res = refine(p.hu, probs, maps, raw, C, p.spacing)
    assert dice(res.labels == k_edh + 1, p.labels == k_edh + 1) > 0.85
    assert not np.isin(res.labels, [CLASSES.index("SDH") + 1, CLASSES.index("IPH") + 1]).any()


def test_subtype_rule_cases():
    mass = np.array([5.0, 1.0, 2.0, 3.0, 4.0])  # IPH IVH SAH SDH EDH
    assert subtype_rule(["IPH", "SDH", "EDH"], mass, abuts=True, layer=True)[0] == "EDH"
    assert subtype_rule(["IPH", "SDH", "EDH"], mass, abuts=False, layer=False)[0] == "IPH"
    assert subtype_rule(["IPH", "SAH"], mass, abuts=True, layer=True)[0] == "IPH"  # no extra-axial gate
    assert subtype_rule(["SDH", "EDH"], mass, abuts=True, layer=False)[0] == "EDH"  # thick lens
    assert subtype_rule(["SDH", "EDH"], mass, abuts=False, layer=False)[0] == "SDH"  # falx / tentorium
    assert subtype_rule(["EDH"], mass, abuts=False, layer=False)[0] is None  # an EDH lies against bone


def test_works_on_a_saturated_8bit_volume(sdh_iph):
    """A 40/120 JPEG turned back into HU: bone saturates at 100 HU, air and fat at -20 HU."""
    p = sdh_iph
    grey = np.round(np.clip((p.hu + 20.0) / 120.0 * 255.0, 0, 255)).astype(np.uint8)
    hu8 = grey_to_hu(grey, 40.0, 120.0)
    assert hu8.min() == pytest.approx(-20.0) and hu8.max() == pytest.approx(100.0)
    raw, maps, probs = spilled_draft(p)
    full = refine(p.hu, probs, maps, raw, C, p.spacing)
    sat = refine(hu8, probs, maps, raw, C, p.spacing)
    assert abs(sat.intracranial_ml - full.intracranial_ml) < 0.03 * full.intracranial_ml
    truth = p.labels > 0
    assert dice(sat.labels > 0, truth) > dice(raw > 0, truth) + 0.2
    assert dice(sat.labels > 0, truth) > 0.75
    assert not (sat.labels > 0)[~cavity(p)].any()


def test_bad_shapes_raise(sdh_iph):
    p = sdh_iph
    raw, maps, probs = spilled_draft(p, outside=False)
    with pytest.raises(ValueError, match="probs"):
        refine(p.hu, probs[:-1], maps, raw, C, p.spacing)
    with pytest.raises(ValueError, match="maps255"):
        refine(p.hu, probs, maps[:, :, ::2], raw, C, p.spacing)
    with pytest.raises(ValueError, match="raw_labels"):
        refine(p.hu, probs, maps, raw[:-1], C, p.spacing)
    with pytest.raises(ConfigError, match="spacing"):
        refine(p.hu, probs, maps, raw, C, (5.0, 0.0, 0.9))
    with pytest.raises(ConfigError, match="class thresholds"):
        refine(p.hu, probs, maps, raw, [0.5] * 4, p.spacing)


def test_blood_regions_cover_the_phantom_lesions_without_any_model():
    from ichdemo.metrics import binary_dice
    from ichdemo.refine import blood_regions

    p = generate_phantom(5, ("IPH", "SDH"), shape=(16, 192, 192))
    lesion = p.labels > 0
    slices = [s for s in range(p.shape[0]) if lesion[s].any()]
    regions = blood_regions(p.hu, p.spacing, slices)
    assert not regions[[s for s in range(p.shape[0]) if s not in slices]].any()  # only the slices asked for
    assert binary_dice(regions[slices], lesion[slices]) > 0.9  # measured 0.985

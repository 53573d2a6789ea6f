"""Image windows: parsing, the grey -> HU inverse, the estimate on real and synthetic head CT, declared-window checks.

Real slices are CT-ICH training patients (``window_cases``); the estimate's accuracy over many more slices is
measured outside the test suite (see the commit that added ``ichdemo/io/window.py``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from window_cases import REAL_SLICES, REAL_STACKS, WINDOWS, ctich_hu, export, phantom_hu

from ichdemo.errors import ConfigError
from ichdemo.io.window import (
    PRESETS,
    UNSURE_BELOW,
    Window,
    check_declared,
    estimate_window,
    grey_to_hu,
    hu_to_grey,
    parse_window,
)


# ---------------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "spec, centre, width, name",
    [
        ("ctich", 40, 120, "ctich"),
        ("Brain", 40, 80, "brain"),
        ("subdural", 80, 200, "subdural"),
        ("bone", 40, 380, "bone"),
        ("paper", 25, 130, "paper"),
        ("hu", 127.5, 255, "hu"),
        ("40/80", 40, 80, "brain"),
        (" 35 , 100 ", 35, 100, "35/100"),
        ("-10.5/300", -10.5, 300, "-10.5/300"),
        ((50, 150), 50, 150, "50/150"),
        ([40.0, 80.0], 40, 80, "brain"),
        ("127.5/255", 127.5, 255, "hu"),
    ],
)
def test_parse_window(spec, centre, width, name):
    assert parse_window(spec) == Window(centre, width, name)


@pytest.mark.parametrize("spec", [None, "auto", "AUTO", ""])
def test_parse_window_auto_means_estimate(spec):
    assert parse_window(spec) is None


def test_parse_window_passes_a_window_through():
    w = Window(40.0, 80.0, "brain")
    assert parse_window(w) is w


@pytest.mark.parametrize(
    "spec, message",
    [
        ("brian", r"image window 'brian' not understood; give a preset \(ctich, brain, .*hu\), centre/width"),
        ("40/80/3", r"not understood"),
        ("40-80", r"not understood"),
        ("40/0", r"window width must be positive, got 0"),
        ("40/-80", r"window width must be positive, got -80"),
        ((40, 0), r"window width must be positive"),
        ((40,), r"must be a preset name or \(centre, width\) in HU, got \(40,\)"),
        (("a", "b"), r"must be a preset name or \(centre, width\)"),
        (40, r"must be a preset name or \(centre, width\)"),
        ((float("nan"), 80), r"must be finite numbers"),
    ],
)
def test_parse_window_errors_say_what_to_give(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_window(spec)


# ---------------------------------------------------------------------------------------------------- mapping
def test_grey_to_hu_inverts_the_ctich_jpeg_window():
    grey = np.array([0.0, 127.5, 255.0, 300.0, -5.0])
    np.testing.assert_allclose(grey_to_hu(grey, 40, 120), [-20, 40, 100, 100, -20])
    np.testing.assert_allclose(grey_to_hu(grey, 40, 120)[:3], grey[:3] / 255 * 120 - 20)
    assert grey_to_hu(grey, 40, 120).dtype == np.float32


def test_hu_preset_is_grey_equals_hu():
    grey = np.arange(256, dtype=np.float32)
    np.testing.assert_array_equal(grey_to_hu(grey, *PRESETS["hu"]), grey)


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trip_within_half_a_grey_level(name):
    centre, width = PRESETS[name]
    hu = np.linspace(centre - width / 2, centre + width / 2, 1001)
    back = grey_to_hu(hu_to_grey(hu, centre, width), centre, width)
    assert np.abs(back - hu).max() <= width / 255 / 2 + 1e-4
    np.testing.assert_array_equal(hu_to_grey(hu, centre, width), export(hu, centre, width))


# ---------------------------------------------------------------------------------------------------- estimate
@pytest.fixture(scope="module")
def real_stacks() -> dict[int, np.ndarray]:
    return {p: ctich_hu(p, s) for p, s in REAL_STACKS.items()}


@pytest.mark.parametrize("patient", list(REAL_STACKS))
@pytest.mark.parametrize("truth", list(WINDOWS))
def test_estimate_tells_the_windows_apart_on_real_stacks(real_stacks, patient, truth):
    est = estimate_window(export(real_stacks[patient], *WINDOWS[truth]))
    assert (est.name, est.centre, est.width) == (truth, *WINDOWS[truth])
    assert not est.unsure, est.reason
    assert est.candidates[truth] == max(est.candidates.values())


@pytest.mark.parametrize("patient, slice_", REAL_SLICES)
@pytest.mark.parametrize("truth", list(WINDOWS))
def test_estimate_picks_the_window_of_one_real_slice(patient, slice_, truth):
    """One slice: right, though 40/120 and 40/80 (both centred on 40 HU) may be close enough to be called unsure."""
    est = estimate_window(export(ctich_hu(patient, (slice_,)), *WINDOWS[truth]))
    assert est.name == truth, est.reason
    assert est.reason.startswith("unsure: ") == (est.confidence < UNSURE_BELOW)
    if truth in ("subdural", "hu"):
        assert not est.unsure, est.reason


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("truth", list(WINDOWS))
def test_estimate_on_synthetic_heads(seed, truth):
    est = estimate_window(export(phantom_hu(seed), *WINDOWS[truth]))
    assert est.name == truth, est.reason
    assert 0 < est.confidence <= 1


def test_reason_names_the_anchors_and_the_runner_up(real_stacks):
    est = estimate_window(export(real_stacks[87], *WINDOWS["brain"]))
    assert est.reason.startswith("brain 40/80 fits (brain ") and "darkest CSF" in est.reason
    assert "; next " in est.reason and "8 slice(s) measured" in est.reason


@pytest.mark.parametrize(
    "grey",
    [
        np.zeros((64, 64)),
        np.full((2, 64, 64), 200.0),
        np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.float32),
    ],
    ids=["black", "flat", "noise"],
)
def test_no_head_is_an_honest_unsure_default(grey):
    est = estimate_window(grey)
    assert est.name == "default" and est.confidence == 0 and est.unsure
    assert (est.centre, est.width) == WINDOWS["ctich"]
    assert est.reason.startswith("unsure: no brain inside a skull found")


def test_a_face_slice_without_brain_is_unsure():
    """The lowest CT-ICH slices (face and neck) enclose no brain in the skull."""
    est = estimate_window(export(ctich_hu(114, (2,)), *WINDOWS["ctich"]))
    assert est.unsure


def test_estimate_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"expected a \(H, W\) slice or an \(S, H, W\) stack"):
        estimate_window(np.zeros((2, 2, 8, 8)))


# ---------------------------------------------------------------------------------------------------- declared
@pytest.mark.parametrize("truth", list(WINDOWS))
def test_the_right_declaration_gives_no_warning(real_stacks, truth):
    assert check_declared(export(real_stacks[114], *WINDOWS[truth]), *WINDOWS[truth]) is None


@pytest.mark.parametrize(
    "truth, declared, message",
    [
        ("hu", "brain", r"declared image window brain 40/80 looks wrong: brain tissue would be at \d+ HU \(expected"),
        ("ctich", "hu", r"brain tissue would be at 1\d\d HU"),
        ("ctich", "subdural", r"brain tissue would be at [6-9]\d HU.*the image looks like ctich 40/120"),
        ("brain", "ctich", r"the darkest CSF would be at -\d+ HU, below water.*looks like brain 40/80"),
        ("subdural", "hu", r"image window hu 127.5/255 looks wrong: brain tissue would be at [6-9]\d HU"),
    ],
)
def test_a_misdeclared_window_is_called_wrong(real_stacks, truth, declared, message):
    warning = check_declared(export(real_stacks[87], *WINDOWS[truth]), *WINDOWS[declared])
    assert warning is not None
    assert warning.startswith("declared image window")
    assert re.search(message, warning), warning


def test_check_declared_says_nothing_without_a_head():
    assert check_declared(np.zeros((32, 32)), 40, 80) is None

"""PNG/JPG slices and stacks: grey conversion, natural order, assumed spacing, folder choice, grey -> HU.

The reader tests declare ``image_window="hu"`` (grey level = HU) so that values read back are the grey levels
written; the window tests write head CT in HU through real display windows and read it back with and without one.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image
from window_cases import REAL_SLICES, REAL_STACKS, WINDOWS, ctich_hu, export, phantom_hu, unsaturated, write_stack

from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.io import load_volume, write_nifti
from ichdemo.io.image import AIR_HU, DEFAULT_SPACING, is_mask_name, natural_key, stack_images
from ichdemo.io.limits import Limits

GREY = {"image_window": "hu"}
"""Read grey levels as HU one to one, for the tests of the reader itself."""


def save_grey(path, value, size=(6, 4)):
    Image.fromarray(np.full(size[::-1], value, np.uint8), "L").save(path)
    return path


def test_natural_key_order():
    names = ["10.jpg", "2.jpg", "1.jpg", "b1.png", "a10.png", "a9.png"]
    assert sorted(names, key=natural_key) == ["1.jpg", "2.jpg", "10.jpg", "a9.png", "a10.png", "b1.png"]


def test_stack_in_natural_order_with_assumed_spacing(tmp_path):
    for n in (1, 2, 10, 3, 11):
        save_grey(tmp_path / f"{n}.png", n * 10)
    vol = load_volume(tmp_path, **GREY)
    assert vol.source == "image" and not vol.prewindowed and vol.spacing_assumed
    assert vol.slice_names == ["1", "2", "3", "10", "11"]
    assert [float(v) for v in vol.data[:, 0, 0]] == [10, 20, 30, 100, 110]
    assert vol.shape == (5, 4, 6) and vol.data.dtype == np.float32
    assert vol.spacing == DEFAULT_SPACING == (5.0, 1.0, 1.0)
    assert any("estimates" in w for w in vol.warnings)


def test_list_of_uploads_in_any_order(tmp_path):
    paths = [save_grey(tmp_path / f"{n}.jpg", n * 20) for n in range(1, 11)]
    random.Random(0).shuffle(paths)
    vol = load_volume(paths, **GREY)
    assert vol.slice_names == [str(n) for n in range(1, 11)]
    assert np.allclose(vol.data[:, 2, 2], np.arange(1, 11) * 20, atol=3)  # JPEG is lossy


def test_given_spacing_is_not_assumed(tmp_path):
    vol = load_volume(save_grey(tmp_path / "a.png", 5), spacing=(3, 0.5, 0.5), **GREY)
    assert vol.spacing == (3.0, 0.5, 0.5) and not vol.spacing_assumed
    assert not any("estimates" in w for w in vol.warnings)
    assert vol.affine[0, 0] == -0.5 and vol.affine[2, 2] == 3.0


def test_rgb_converted_to_grey_with_warning_when_colourful(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    Image.fromarray(rgb, "RGB").save(tmp_path / "red.png")
    vol = load_volume(tmp_path / "red.png", **GREY)
    assert vol.data[0, 0, 0] == pytest.approx(round(200 * 0.299), abs=1)
    assert any("colour image" in w for w in vol.warnings)


def test_grey_stored_as_rgb_gives_no_colour_warning(tmp_path):
    rgb = np.repeat(np.full((4, 6, 1), 90, np.uint8), 3, axis=2)
    Image.fromarray(rgb, "RGB").save(tmp_path / "g.png")
    vol = load_volume(tmp_path / "g.png", **GREY)
    assert vol.data[0, 0, 0] == 90 and not any("colour" in w for w in vol.warnings)


def test_sixteen_bit_png_scaled(tmp_path):
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "a.png")
    vol = load_volume(tmp_path / "a.png", **GREY)
    assert vol.data.max() == pytest.approx(255.0)


def test_stack_sizes_must_match(tmp_path):
    save_grey(tmp_path / "1.png", 1, (6, 4))
    save_grey(tmp_path / "2.png", 1, (6, 4))
    save_grey(tmp_path / "3.png", 1, (8, 8))
    with pytest.raises(UnsupportedInputError, match=r"share one size; found 6x4 \(2\), 8x8 \(1\)"):
        load_volume(tmp_path)


def test_masks_left_out_and_brain_folder_preferred(tmp_path):
    for folder in ("bone", "brain"):
        (tmp_path / folder).mkdir()
        for n in (1, 2):
            save_grey(tmp_path / folder / f"{n}.jpg", 100 if folder == "brain" else 10)
    save_grey(tmp_path / "brain" / "2_HGE_Seg.jpg", 255)
    vol = load_volume(tmp_path, **GREY)
    assert vol.shape[0] == 2 and np.all(vol.data > 90)
    assert any("mask image" in w for w in vol.warnings)
    assert any("stacked brain/" in w and "bone/ (2)" in w for w in vol.warnings)


@pytest.mark.parametrize(
    "name, mask", [("3_HGE_Seg.jpg", True), ("a_mask.png", True), ("seg.png", False), ("12.jpg", False)]
)
def test_mask_names(name, mask):
    assert is_mask_name(name) is mask


def test_png_named_jpg_loads(tmp_path):
    path = save_grey(tmp_path / "x.png", 42)
    renamed = path.rename(tmp_path / "x.jpg")
    assert load_volume(renamed, **GREY).data[0, 0, 0] == 42


# ------------------------------------------------------------------------------------------------- grey -> HU
FORMAT = {"ctich": "jpg", "brain": "png", "subdural": "png", "hu": "png"}
"""(a) CT-ICH's 40/120 JPEG, (b) an HU-clipped PNG, (c) a 40/80 PNG, (d) a subdural 80/200 PNG."""


def assert_hu_back(vol, hu, truth: str, fmt: str, folder) -> None:
    """HU read back equal the original to the 8-bit rounding inside the window; a JPEG's HU are its decoded grey
    levels inverted exactly, and off the original only by the compression's own loss."""
    centre, width = WINDOWS[truth]
    level = width / 255
    kept = unsaturated(hu, centre, width)
    if fmt == "png":
        err = np.abs(vol.data - hu)[kept]
        assert err.max() <= level / 2 + 1e-3, (truth, err.max())
        return
    decoded = np.stack([np.asarray(Image.open(folder / f"{i}.jpg"), np.float32) for i in range(1, len(hu) + 1)])
    np.testing.assert_allclose(
        vol.data[decoded > 2], (decoded / 255 * width + centre - width / 2)[decoded > 2], atol=1e-3
    )
    err = np.abs(vol.data - hu)[kept & (hu > centre - width / 2 + 10 * level)]  # near-black pixels may become air
    assert err.mean() <= 2 * level and np.percentile(err, 99) <= 8 * level, (truth, err.mean())


@pytest.fixture(scope="module")
def real_hu() -> np.ndarray:
    patient = next(iter(REAL_STACKS))
    return ctich_hu(patient, REAL_STACKS[patient])


@pytest.mark.parametrize("truth", list(WINDOWS))
def test_real_stack_without_a_window_is_estimated_and_read_as_hu(tmp_path, real_hu, truth):
    folder = write_stack(tmp_path / truth, export(real_hu, *WINDOWS[truth]), FORMAT[truth])
    vol = load_volume(folder)
    info = vol.meta["input_window"]
    assert (info["name"], info["centre"], info["width"], info["declared"]) == (truth, *WINDOWS[truth], False)
    assert info["confidence"] >= 0.6 and info["reason"].startswith(truth)
    assert not vol.prewindowed and vol.data.dtype == np.float32
    assert not any("image window" in w for w in vol.warnings)
    assert f"HU from grey by window {truth} " in vol.description and "(estimated, confidence" in vol.description
    assert_hu_back(vol, real_hu, truth, FORMAT[truth], folder)


@pytest.mark.parametrize("truth", list(WINDOWS))
def test_phantom_stack_without_a_window_is_estimated_and_read_as_hu(tmp_path, truth):
    hu = phantom_hu(4)
    vol = load_volume(write_stack(tmp_path, export(hu, *WINDOWS[truth]), FORMAT[truth]))
    assert vol.meta["input_window"]["name"] == truth, vol.meta["input_window"]["reason"]
    assert_hu_back(vol, hu, truth, FORMAT[truth], tmp_path)
    centre, width = WINDOWS[truth]
    slack = 10 * width / 255 if FORMAT[truth] == "jpg" else 0  # JPEG ringing lifts a little air off black
    assert np.all(vol.data[hu <= -900] <= centre - width / 2 + slack)  # air: at most the window's low end
    assert vol.data[0, 0, 0] == AIR_HU  # the background around the head is air


@pytest.mark.parametrize("patient, slice_", REAL_SLICES[:2])
@pytest.mark.parametrize("truth", list(WINDOWS))
def test_one_real_slice_gets_its_window_and_a_warning_when_unsure(tmp_path, patient, slice_, truth):
    hu = ctich_hu(patient, (slice_,))
    vol = load_volume(write_stack(tmp_path, export(hu, *WINDOWS[truth]), FORMAT[truth]))
    info = vol.meta["input_window"]
    assert info["name"] == truth, info["reason"]
    unsure = [w for w in vol.warnings if w.startswith("image window not declared and estimated with low confidence")]
    assert bool(unsure) == (info["confidence"] < 0.6)
    assert all("image_window" in w and info["reason"] in w for w in unsure)


def test_declared_window_is_used_as_given(tmp_path, real_hu):
    folder = write_stack(tmp_path, export(real_hu, *WINDOWS["ctich"]), "jpg")
    vol = load_volume(folder, image_window="40/120")
    assert vol.meta["input_window"] == {
        "centre": 40.0,
        "width": 120.0,
        "name": "ctich",
        "declared": True,
        "confidence": 1.0,
        "reason": "declared by the caller",
    }
    assert not any("window" in w for w in vol.warnings)
    assert "(declared)" in vol.description
    assert_hu_back(vol, real_hu, "ctich", "jpg", folder)


def test_misdeclared_window_is_used_but_warned_about(tmp_path, real_hu):
    grey = export(real_hu, *WINDOWS["hu"])
    vol = load_volume(write_stack(tmp_path, grey, "png"), image_window="brain")
    inside = grey > 2
    np.testing.assert_allclose(vol.data[inside], grey[inside] / 255 * 80, atol=1e-4)  # as declared, not estimated
    info = vol.meta["input_window"]
    assert info["declared"] and info["name"] == "brain" and info["confidence"] == 0.0
    wrong = [w for w in vol.warnings if "looks wrong" in w]
    assert wrong == [info["reason"]]
    assert wrong[0].startswith("declared image window brain 40/80 looks wrong: brain tissue would be at")


@pytest.mark.parametrize(
    "spec, message",
    [("brian", r"image window 'brian' not understood"), ((40, -1), r"window width must be positive, got -1")],
)
def test_bad_window_raises_config_error_before_reading(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_volume(tmp_path / "not-read.png", image_window=spec)


def test_image_without_a_head_is_read_with_an_unsure_default(tmp_path):
    vol = load_volume(save_grey(tmp_path / "flat.png", 64))
    info = vol.meta["input_window"]
    assert (info["name"], info["confidence"], info["declared"]) == ("default", 0.0, False)
    assert vol.data[0, 0, 0] == pytest.approx(64 / 255 * 120 - 20)  # CT-ICH's window, the least surprising guess
    assert any(w.startswith("image window not declared and estimated with low confidence (0.00)") for w in vol.warnings)


def test_only_black_touching_the_border_becomes_air(tmp_path):
    grey = np.zeros((40, 40), np.uint8)
    grey[5:35, 5:35] = 255  # a "skull" ...
    grey[8:32, 8:32] = 0  # ... around black inside it
    grey[10:30, 10:30] = 120
    vol = load_volume(save_array(tmp_path / "ring.png", grey), image_window="brain")
    assert vol.data[0, 0, 0] == AIR_HU and vol.data[0, 8, 8] == 0.0 and vol.data[0, 6, 6] == 80.0


def test_image_window_is_ignored_for_nifti(tmp_path):
    path = write_nifti(np.zeros((3, 8, 8), np.float32), (5.0, 1.0, 1.0), tmp_path / "ct.nii.gz")
    vol = load_volume(path, image_window="brain")
    assert "input_window" not in vol.meta
    assert any(w == "image_window=brain 40/80 ignored: NIFTI input holds HU" for w in vol.warnings)


def test_stack_images_keeps_grey_for_training(tmp_path):
    """CT-ICH training data (``ichdemo.io.ctich``) reads the JPEG grey levels directly: no window, no HU."""
    files = [save_grey(tmp_path / f"{n}.png", 10 * n) for n in (1, 2)]
    vol = stack_images(files, Limits(), DEFAULT_SPACING, spacing_assumed=True, what="CT-ICH patient 1")
    assert vol.prewindowed and vol.data[:, 0, 0].tolist() == [10.0, 20.0]
    assert "input_window" not in vol.meta and "pre-windowed grey 0..255" in vol.description


def save_array(path, grey):
    Image.fromarray(grey, "L").save(path)
    return path


def test_files_uploaded_together_are_one_stack_whatever_folders_they_sit_in(tmp_path):
    """A web server puts every uploaded file in a folder of its own (Gradio: one hash folder each): the files are
    one series all the same, in the natural order of their names, masks still left out."""
    for n in (10, 2, 1):
        (tmp_path / f"h{n}").mkdir()
        save_grey(tmp_path / f"h{n}" / f"{n}.jpg", 10 * n)
    (tmp_path / "hm").mkdir()
    save_grey(tmp_path / "hm" / "2_HGE_Seg.jpg", 255)
    files = sorted(tmp_path.rglob("*.jpg"))  # upload order is not name order
    vol = load_volume(files, **GREY)
    assert vol.slice_names == ["1", "2", "10"]
    assert vol.shape[0] == 3 and not any("folders" in w for w in vol.warnings)

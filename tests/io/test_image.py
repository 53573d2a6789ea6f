"""PNG/JPG slices and stacks: grey conversion, natural order, assumed spacing, folder choice."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from ichdemo.errors import UnsupportedInputError
from ichdemo.io import load_volume
from ichdemo.io.image import DEFAULT_SPACING, is_mask_name, natural_key


def save_grey(path, value, size=(6, 4)):
    Image.fromarray(np.full(size[::-1], value, np.uint8), "L").save(path)
    return path


def test_natural_key_order():
    names = ["10.jpg", "2.jpg", "1.jpg", "b1.png", "a10.png", "a9.png"]
    assert sorted(names, key=natural_key) == ["1.jpg", "2.jpg", "10.jpg", "a9.png", "a10.png", "b1.png"]


def test_stack_in_natural_order_with_assumed_spacing(tmp_path):
    for n in (1, 2, 10, 3, 11):
        save_grey(tmp_path / f"{n}.png", n * 10)
    vol = load_volume(tmp_path)
    assert vol.source == "image" and vol.prewindowed and vol.spacing_assumed
    assert vol.slice_names == ["1", "2", "3", "10", "11"]
    assert [float(v) for v in vol.data[:, 0, 0]] == [10, 20, 30, 100, 110]
    assert vol.shape == (5, 4, 6) and vol.data.dtype == np.float32
    assert vol.spacing == DEFAULT_SPACING == (5.0, 1.0, 1.0)
    assert any("estimates" in w for w in vol.warnings)


def test_list_of_uploads_in_any_order(tmp_path):
    paths = [save_grey(tmp_path / f"{n}.jpg", n * 20) for n in range(1, 11)]
    random.Random(0).shuffle(paths)
    vol = load_volume(paths)
    assert vol.slice_names == [str(n) for n in range(1, 11)]
    assert np.allclose(vol.data[:, 2, 2], np.arange(1, 11) * 20, atol=3)  # JPEG is lossy


def test_given_spacing_is_not_assumed(tmp_path):
    vol = load_volume(save_grey(tmp_path / "a.png", 5), spacing=(3, 0.5, 0.5))
    assert vol.spacing == (3.0, 0.5, 0.5) and not vol.spacing_assumed
    assert not any("estimates" in w for w in vol.warnings)
    assert vol.affine[0, 0] == -0.5 and vol.affine[2, 2] == 3.0


def test_rgb_converted_to_grey_with_warning_when_colourful(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    Image.fromarray(rgb, "RGB").save(tmp_path / "red.png")
    vol = load_volume(tmp_path / "red.png")
    assert vol.data[0, 0, 0] == pytest.approx(round(200 * 0.299), abs=1)
    assert any("colour image" in w for w in vol.warnings)


def test_grey_stored_as_rgb_gives_no_colour_warning(tmp_path):
    rgb = np.repeat(np.full((4, 6, 1), 90, np.uint8), 3, axis=2)
    Image.fromarray(rgb, "RGB").save(tmp_path / "g.png")
    vol = load_volume(tmp_path / "g.png")
    assert vol.data[0, 0, 0] == 90 and not any("colour" in w for w in vol.warnings)


def test_sixteen_bit_png_scaled(tmp_path):
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "a.png")
    vol = load_volume(tmp_path / "a.png")
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
    vol = load_volume(tmp_path)
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
    assert load_volume(renamed).data[0, 0, 0] == 42

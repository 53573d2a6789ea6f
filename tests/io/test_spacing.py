"""ichdemo.io.spacing: in-plane spacing of images without one, from the skull's width."""

import numpy as np
import pytest

from ichdemo.io.spacing import estimate_in_plane_mm
from ichdemo.phantom import generate_phantom


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_spacing_is_recovered_from_the_skull(seed):
    p = generate_phantom(seed, ("SDH",), shape=(24, 256, 256))  # 0.9 mm pixels, adult-sized heads
    assert estimate_in_plane_mm(p.hu) == pytest.approx(p.spacing[1], rel=0.12)
    clipped = np.clip(p.hu, -20.0, 100.0)  # as a 40/120 brain-window JPEG read back to HU: the bone saturates
    assert estimate_in_plane_mm(clipped) == pytest.approx(p.spacing[1], rel=0.12)


def test_no_skull_no_estimate():
    assert estimate_in_plane_mm(np.full((3, 64, 64), 30.0, np.float32)) is None
    tiny = np.zeros((1, 200, 200), np.float32)
    tiny[0, 90:110, 90:110] = 1000.0  # a 20-pixel "skull" would mean 7 mm pixels: not a head at this size
    assert estimate_in_plane_mm(tiny) is None

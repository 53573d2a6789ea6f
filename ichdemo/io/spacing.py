"""In-plane pixel spacing of an image that carries none, estimated from the width of the skull.

PNG/JPG slices have no spacing, and a default of 1 mm per pixel makes every volume wrong by the square of the true
spacing (CT-ICH's 650-pixel JPEGs hold a head about 450 pixels wide: 0.3 mm per pixel, so 1 mm inflates volumes
about tenfold). The skull gives a scale for free: the maximum cranial breadth of adults (euryon to euryon, outer
table to outer table) is 135-145 mm in anthropometric surveys, so the widest skull section of a head CT, measured
across its shorter axis, is about ``CRANIAL_BREADTH_MM``. The estimate is stated as such wherever it is used;
children, and heads cut off by the field of view, are where it is wrong, and a user who knows the spacing sets it.
"""

from __future__ import annotations

import cv2
import numpy as np

CRANIAL_BREADTH_MM = 140.0
"""Adult maximum cranial breadth (135-145 mm, outer table to outer table): anatomy, not fitted to any image."""
BONE_HU = 300.0
"""Cancellous bone and above; a windowed image that saturates lower has its skull at the saturation level."""
MIN_SKULL_SHARE = 0.01
"""Smallest bone component, as a share of the slice, taken for a skull section (not a calcification or the table)."""
PLAUSIBLE_MM = (0.15, 1.5)
"""Pixel sizes outside this range mean the measurement failed (no skull, a cropped head)."""


SATURATION_MARGIN_HU = 3.0
"""How far below a saturated maximum the skull still counts (JPEG ringing; one grey level of 40/120 is 0.47 HU)."""


def _bone_level(hu: np.ndarray) -> float:
    """``BONE_HU``, or just under the maximum when the data saturate below it (a windowed 8-bit image)."""
    top = float(hu.max())
    return BONE_HU if top >= BONE_HU else top - SATURATION_MARGIN_HU


def skull_breadth_px(hu: np.ndarray) -> float | None:
    """The largest skull breadth over the slices, in pixels: per slice, the shorter side of the minimum-area
    rectangle around the largest bone component; None when no slice shows a skull section."""
    level = _bone_level(hu)
    best = 0.0
    for s in range(hu.shape[0]):
        bone = (hu[s] >= level).astype(np.uint8)
        n, ids, stats, _ = cv2.connectedComponentsWithStats(bone, connectivity=8)
        if n < 2:
            continue
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[k, cv2.CC_STAT_AREA] < MIN_SKULL_SHARE * bone.size:
            continue
        pts = np.column_stack(np.nonzero(ids == k)[::-1]).astype(np.float32)  # (x, y)
        (_, _), (w, h), _ = cv2.minAreaRect(pts)
        best = max(best, float(min(w, h)))
    return best or None


def estimate_in_plane_mm(hu: np.ndarray) -> float | None:
    """Pixel size (mm, square pixels) that makes the widest skull section ``CRANIAL_BREADTH_MM`` across; None when
    no skull is found or the result is outside ``PLAUSIBLE_MM``.

    Args:
        hu: (S, H, W) Hounsfield units (windowed images converted back to HU first).
    """
    breadth = skull_breadth_px(np.asarray(hu, np.float32))
    if not breadth:
        return None
    mm = CRANIAL_BREADTH_MM / breadth
    return mm if PLAUSIBLE_MM[0] <= mm <= PLAUSIBLE_MM[1] else None

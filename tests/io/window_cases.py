"""Head CT in HU for the image-window tests, and its 8-bit exports.

Two sources: synthetic phantoms (``ichdemo.phantom``, true HU over the full range) and real CT-ICH slices of
training patients (never the held-out 77-81, never any other data set). CT-ICH ships 40/120 JPEGs, so its HU are
rebuilt with that window's inverse: each grey level stands for half a level either side (a seeded uniform draw
inside it), black for air or fat (-1000) and white for bone (1000); only -20..100 HU is real detail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichdemo.phantom import generate_phantom

CTICH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct-ich" / "Patients_CT"
HELD_OUT = range(77, 82)
"""CT-ICH patients whose masks evaluate the models: not used here."""

REAL_STACKS: dict[int, tuple[int, ...]] = {87: tuple(range(10, 26, 2)), 114: tuple(range(10, 26, 2))}
"""Training patients and slice numbers for the stack tests (eight slices through the ventricles each)."""

REAL_SLICES: tuple[tuple[int, int], ...] = ((52, 22), (66, 18), (90, 19), (114, 16))
"""(patient, slice) for the single-slice tests."""

WINDOWS = {"ctich": (40.0, 120.0), "brain": (40.0, 80.0), "subdural": (80.0, 200.0), "hu": (127.5, 255.0)}
"""The four exports the estimate must tell apart, written out here rather than taken from the code under test."""


def export(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """What an 8-bit export does: HU -> grey 0..255, rounded and clipped (uint8)."""
    lo = centre - width / 2
    return np.clip(np.round((hu - lo) / width * 255), 0, 255).astype(np.uint8)


def unsaturated(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Voxels whose HU the export kept: inside the window, off its clipped ends (and off grey 0-2, which the
    reader takes for background air when it touches the image border)."""
    lo, hi = centre - width / 2, centre + width / 2
    step = width / 255
    return (hu > lo + 2.5 * step) & (hu < hi - step)


def ctich_hu(patient: int, slices: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(S, H, W) float32 HU rebuilt from a CT-ICH patient's 40/120 brain JPEGs; skips when the data is missing."""
    assert patient not in HELD_OUT, "patients 77-81 are held out for evaluation"
    paths = [CTICH / f"{patient:03d}" / "brain" / f"{s}.jpg" for s in slices]
    missing = [p for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"CT-ICH slices not found ({missing[0]}): real-data test needs ../shared/data/ct-ich")
    grey = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in paths])
    jitter = np.random.default_rng(seed).uniform(-0.5, 0.5, grey.shape).astype(np.float32)
    hu = (grey + jitter) / 255 * 120 - 20
    hu[grey >= 253] = 1000.0
    hu[grey <= 2] = -1000.0
    return hu.astype(np.float32)


def phantom_hu(seed: int, slices: tuple[int, ...] = (6, 9, 12, 15, 18)) -> np.ndarray:
    """(S, H, W) HU of a synthetic head (an IPH and an SDH), a few slices from skull base to vertex."""
    return generate_phantom(seed, ("IPH", "SDH"), shape=(24, 192, 192)).hu[list(slices)]


def write_stack(folder: Path, grey: np.ndarray, fmt: str = "png") -> Path:
    """Write (S, H, W) uint8 as 1.png, 2.png... (or .jpg at quality 95) in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, g in enumerate(grey, start=1):
        Image.fromarray(g, "L").save(folder / f"{i}.{fmt}", **({"quality": 95} if fmt == "jpg" else {}))
    return folder

"""CT-ICH (PhysioNet layout) as training series: one series per patient, pre-windowed JPEG slices.

Built on ``ichdemo.io.ctich.CTICHDataset`` (CSV labels, images, masks). Neighbours for the 3-slice stack are the
slices numbered one below and one above; where that slice is missing from the release (30 are), or at the ends,
the centre slice is repeated instead of jumping 10 mm.

Masks mark any hemorrhage (the release has no subtype masks): on a slice with exactly one subtype the mask becomes
that subtype's label, otherwise ``MASK_ANY``. They exist for patients 77 to 81 only and serve evaluation and mask
threshold calibration, never training (the method is weakly supervised).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.data.series import MASK_ANY, Series
from ichdemo.io.ctich import SLICE_MM, CTICHDataset, SliceRecord
from ichdemo.io.image import read_grey

MASKED_PATIENTS: tuple[str, ...] = ("77", "78", "79", "80", "81")
"""The only CT-ICH patients with pixel masks: held out of training and validation, so Dice is scored on unseen
heads."""


def gap_aware_neighbours(numbers: Sequence[int]) -> np.ndarray:
    """(S, 2) indices of the previous/next slice by slice number; the centre itself where that number is absent."""
    pos = {int(n): i for i, n in enumerate(numbers)}
    return np.array([[pos.get(int(n) - 1, i), pos.get(int(n) + 1, i)] for i, n in enumerate(numbers)], dtype=np.int64)


def mask_label(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary any-hemorrhage mask -> label map: the subtype's label on single-subtype slices, else ``MASK_ANY``."""
    present = np.flatnonzero(np.asarray(labels) > 0)
    value = int(present[0]) + 1 if len(present) == 1 else MASK_ANY
    return np.where(mask, value, 0).astype(np.int16)


class CTICHSeries(Series):
    """One CT-ICH patient, slices read lazily from their JPEGs (values 0..255 rescaled to [0, 1])."""

    def __init__(self, patient: int, records: list[SliceRecord]) -> None:
        self.records = records
        super().__init__(
            patient=str(patient),
            name=f"ctich-{patient:03d}",
            labels=np.stack([r.labels for r in records]).astype(np.float32),
            spacing=(SLICE_MM, 1.0, 1.0),
            mask_slices=tuple(i for i, r in enumerate(records) if r.mask_path is not None),
            neighbours=gap_aware_neighbours([r.slice for r in records]),
        )

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([read_grey(self.records[i].path)[0] for i in indices]).astype(np.float32) / 255.0

    def read_mask(self, index: int) -> np.ndarray | None:
        rec = self.records[index]
        if rec.mask_path is None:
            return None
        return mask_label(read_grey(rec.mask_path)[0] >= 128, rec.labels)


def ctich_series(root: str | Path) -> list[CTICHSeries]:
    """Every patient of a CT-ICH folder as a series (raises the reader's typed errors on a bad folder)."""
    data = CTICHDataset(root)
    return [CTICHSeries(p, data.slices(p)) for p in data.patients()]


__all__ = ["CLASSES", "CTICHSeries", "MASKED_PATIENTS", "ctich_series", "gap_aware_neighbours", "mask_label"]

"""``ExportJob``: one label map of one series, to be written in one or more formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.export.images import slice_names, write_slice_images
from ichdemo.export.provenance import Provenance
from ichdemo.volume import Volume

IMAGES_DIR = "images"


def check_labels(labels: np.ndarray, volume: Volume) -> np.ndarray:
    """``labels`` as uint8 (S, H, W) on the volume's grid, values 0..5; raises ValueError otherwise."""
    arr = np.asarray(labels)
    if arr.shape != volume.shape:
        raise ValueError(f"labels shape {arr.shape} != volume shape {volume.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > len(CLASSES)):
        raise ValueError(f"label values must be 0..{len(CLASSES)} (0 normal, k = {'/'.join(CLASSES)}[k-1])")
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        raise ValueError("labels must be whole numbers")
    return arr.astype(np.uint8)


@dataclass
class ExportJob:
    """Everything a format writer needs.

    Attributes:
        labels: (S, H, W) uint8 label map on ``volume``'s grid (0 normal, k = CLASSES[k-1]).
        volume: the source volume (geometry, DICOM references, slice names).
        out_dir: the export folder; each format writes inside it.
        provenance: model, version, thresholds and notice to stamp on every file.
        name: series name used in file names.
        keep_phi: keep patient name/ID/birth date where a format copies source headers (DICOM SEG).
        review: each slice's status in a person's review (``ichdemo.edits.STATUSES``: "draft" = the model's,
            untouched; "edited", "reviewed", "no-hemorrhage"), or None when nobody reviewed the draft.
    """

    labels: np.ndarray
    volume: Volume
    out_dir: Path
    provenance: Provenance
    name: str = "labels"
    keep_phi: bool = False
    review: list[str] | None = None
    _images: list[str] | None = field(default=None, repr=False)

    @property
    def touched(self) -> int:
        """How many slices a person edited or reviewed."""
        return sum(s != "draft" for s in self.review or [])

    @property
    def present(self) -> list[int]:
        """Label values 1..5 that occur in the map, ascending."""
        return [int(v) for v in np.unique(self.labels) if v > 0]

    def slice_images(self) -> tuple[Path, list[str]]:
        """Write the slice PNGs once per job; return their folder and file stems (slice order)."""
        folder = self.out_dir / IMAGES_DIR
        if self._images is None:
            self._images = slice_names(self.volume, self.name)
            write_slice_images(self.volume, folder, self._images)
        return folder, self._images

"""BHSD (Brain Hemorrhage Segmentation Dataset, 3D multi-class) as series with subtype masks.

Layout::

    ROOT/images/<name>.nii.gz            head CT in HU
    ROOT/ground truths/<name>.nii.gz     label volume on the same grid (also accepted: labels/, masks/,
                                         ground_truths/, ground_truth/)

Label values follow the BHSD release: 0 background, 1 EDH, 2 IPH, 3 IVH, 4 SAH, 5 SDH (``BHSD_LABELS``; pass
``label_map`` for another convention). They are converted to this project's values (k + 1 for ``CLASSES[k]``),
and slice labels are derived from them (a slice is positive for a subtype when it holds any of its voxels). Both
volumes go through ``ichdemo.io.nifti.load_nifti``, so they share the display orientation of every other input.
BHSD is the paper's test set: evaluate on it, do not train on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.data.series import Series
from ichdemo.errors import UnsupportedInputError
from ichdemo.io.nifti import load_nifti
from ichdemo.transforms import to_unit

BHSD_LABELS: dict[int, str] = {1: "EDH", 2: "IPH", 3: "IVH", 4: "SAH", 5: "SDH"}
"""Label value -> subtype in the BHSD release."""

LABEL_DIRS: tuple[str, ...] = ("ground truths", "ground_truths", "ground_truth", "labels", "masks")
SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _nifti_files(folder: Path) -> dict[str, Path]:
    return {_stem(p): p for p in sorted(folder.iterdir()) if p.name.endswith(SUFFIXES)}


def find_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, label volume) pairs matched by file name.

    Raises:
        UnsupportedInputError: no images/ folder, no label folder, or no image with a label volume.
    """
    images = root / "images"
    labels = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if not images.is_dir() or labels is None:
        raise UnsupportedInputError(f"{root}: not a BHSD folder (need images/ and one of {', '.join(LABEL_DIRS)}/)")
    imgs, labs = _nifti_files(images), _nifti_files(labels)
    pairs = [(imgs[k], labs[k]) for k in sorted(imgs) if k in labs]
    if not pairs:
        raise UnsupportedInputError(f"{root}: no NIfTI image in images/ has a label volume of the same name")
    return pairs


def convert_labels(raw: np.ndarray, label_map: Mapping[int, str] = BHSD_LABELS) -> np.ndarray:
    """Dataset label values -> project label map (0 normal, k + 1 for ``CLASSES[k]``), int16."""
    out = np.zeros(raw.shape, np.int16)
    values = np.rint(raw).astype(np.int64)
    for value, name in label_map.items():
        out[values == value] = CLASSES.index(name) + 1
    return out


@lru_cache(maxsize=2)
def _load(image: Path, label: Path, window: str, label_items: tuple) -> tuple[np.ndarray, np.ndarray, tuple]:
    vol = load_nifti(image)
    lab = load_nifti(label)
    if lab.data.shape != vol.data.shape:
        raise UnsupportedInputError(f"{label.name}: label grid {lab.data.shape} differs from the image's "
                                    f"{vol.data.shape}")
    unit = to_unit(vol.data, prewindowed=False, window_=window)
    return unit, convert_labels(lab.data, dict(label_items)), vol.spacing


class BHSDSeries(Series):
    """One BHSD scan (image + label volume), loaded on first use."""

    def __init__(self, image: Path, label: Path, window: str, label_map: Mapping[int, str]) -> None:
        self.image, self.label, self.window = image, label, window
        self.label_items = tuple(sorted(label_map.items()))
        _, masks, spacing = _load(image, label, window, self.label_items)
        slice_labels = np.stack([[np.any(m == k + 1) for k in range(len(CLASSES))] for m in masks])
        super().__init__(patient=_stem(image), name=_stem(image), labels=slice_labels.astype(np.float32),
                         spacing=tuple(spacing), mask_slices=tuple(range(len(masks))))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        unit, _, _ = _load(self.image, self.label, self.window, self.label_items)
        return unit[list(indices)]

    def read_mask(self, index: int) -> np.ndarray | None:
        _, masks, _ = _load(self.image, self.label, self.window, self.label_items)
        return masks[index]


def bhsd_series(
    root: str | Path, window: str = "paper", label_map: Mapping[int, str] = BHSD_LABELS
) -> tuple[list[BHSDSeries], list[str]]:
    """Every scan of a BHSD folder with its masks, and notes (images without a label volume)."""
    root = Path(root)
    pairs = find_pairs(root)
    n_images = len(_nifti_files(root / "images"))
    notes = [f"BHSD: {n_images - len(pairs)} image(s) without a label volume skipped"] if n_images > len(pairs) else []
    return [BHSDSeries(img, lab, window, label_map) for img, lab in pairs], notes

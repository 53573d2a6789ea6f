"""Reader of the CT-ICH dataset layout (PhysioNet "Computed Tomography Images for Intracranial Hemorrhage
Detection and Segmentation" 1.0.0).

Layout::

    ROOT/hemorrhage_diagnosis.csv         one row per slice; UTF-8 with a byte-order mark
    ROOT/Patients_CT/NNN/brain/S.jpg      slice S of patient NNN, brain window, 8-bit grey
    ROOT/Patients_CT/NNN/brain/S_HGE_Seg.jpg   binary mask of any hemorrhage (a few slices only)

The CSV's subtype columns come in the order IVH, IPH, SAH, EDH, SDH; labels here follow ``CLASSES`` (IPH, IVH,
SAH, SDH, EDH). Rows whose brain image is missing are skipped with one summary warning.
"""

from __future__ import annotations

import csv
import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.errors import CorruptInputError, UnsupportedInputError
from ichdemo.io.image import read_grey, stack_images
from ichdemo.io.limits import Limits
from ichdemo.volume import Volume

CSV_NAME = "hemorrhage_diagnosis.csv"
CSV_COLUMNS: dict[str, str] = {
    "IPH": "Intraparenchymal",
    "IVH": "Intraventricular",
    "SAH": "Subarachnoid",
    "SDH": "Subdural",
    "EDH": "Epidural",
}
"""CSV column of each subtype in ``CLASSES``."""

SLICE_SUFFIXES = (".jpg", ".webp")
"""Slice image names tried in order: the dataset's JPEGs, then the WebP of a compact copy (train/pack_ctich.py)."""

SLICE_MM = 5.0
"""Slice thickness stated by the dataset; the in-plane spacing is not recorded and is assumed."""


@dataclass(frozen=True)
class SliceRecord:
    """One CSV row whose brain image exists.

    Attributes:
        patient: PatientNumber.
        slice: SliceNumber (1-based, as in the file name).
        path: the brain-window JPEG.
        labels: (5,) uint8 in ``CLASSES`` order (IPH, IVH, SAH, SDH, EDH).
        mask_path: the ``S_HGE_Seg.jpg`` mask of any hemorrhage, or None.
        fracture: the CSV's Fracture_Yes_No.
    """

    patient: int
    slice: int
    path: Path
    labels: np.ndarray
    mask_path: Path | None
    fracture: bool

    @property
    def hemorrhage(self) -> bool:
        return bool(self.labels.any())


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        needed = {"PatientNumber", "SliceNumber", *CSV_COLUMNS.values()}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise CorruptInputError(f"{csv_path.name}: missing column(s) {sorted(missing)}")
        return list(reader)


def _record(row: dict[str, str], patients_dir: Path) -> tuple[int, int, SliceRecord | None]:
    patient, number = int(row["PatientNumber"]), int(row["SliceNumber"])
    folder = patients_dir / f"{patient:03d}" / "brain"
    path = next((p for p in (folder / f"{number}{ext}" for ext in SLICE_SUFFIXES) if p.is_file()), None)
    if path is None:
        return patient, number, None
    mask = folder / f"{number}_HGE_Seg.jpg"
    labels = np.array([int(row[CSV_COLUMNS[c]]) for c in CLASSES], dtype=np.uint8)
    fracture = str(row.get("Fracture_Yes_No", "0")).strip() == "1"
    return patient, number, SliceRecord(patient, number, path, labels, mask if mask.is_file() else None, fracture)


class CTICHDataset:
    """Slice-level labels, images and masks of a CT-ICH folder.

    Attributes:
        root: the dataset folder.
        records: present slices, sorted by (patient, slice).
        missing: (patient, slice) of CSV rows without a brain image.
        warnings: the summary of what was skipped (also issued once through ``warnings.warn``).
    """

    def __init__(self, root: str | Path) -> None:
        """Index the dataset.

        Raises:
            UnsupportedInputError: ``root`` is not a CT-ICH folder (no CSV, no Patients_CT, or no image).
            CorruptInputError: the CSV lacks expected columns.
        """
        self.root = Path(root)
        csv_path = self.root / CSV_NAME
        if not csv_path.is_file():
            raise UnsupportedInputError(f"{self.root}: not a CT-ICH folder ({CSV_NAME} not found)")
        patients_dir = self.root / "Patients_CT"
        self.records: list[SliceRecord] = []
        self.missing: list[tuple[int, int]] = []
        missing_hem = 0
        for row in _read_rows(csv_path):
            patient, number, rec = _record(row, patients_dir)
            if rec is None:
                self.missing.append((patient, number))
                missing_hem += any(row[CSV_COLUMNS[c]].strip() == "1" for c in CLASSES)
            else:
                self.records.append(rec)
        if not self.records:
            raise UnsupportedInputError(f"{self.root}: no brain images found under Patients_CT/NNN/brain/")
        self.records.sort(key=lambda r: (r.patient, r.slice))
        self.warnings = self._summarise_missing(missing_hem)
        for message in self.warnings:
            _warnings.warn(message, stacklevel=2)

    def _summarise_missing(self, missing_hem: int) -> list[str]:
        if not self.missing:
            return []
        first = ", ".join(f"{p:03d}/{s}" for p, s in self.missing[:3])
        return [
            f"CT-ICH: {len(self.missing)} slice(s) listed in {CSV_NAME} have no brain image and were skipped "
            f"({missing_hem} of them with hemorrhage; first: {first})"
        ]

    def __len__(self) -> int:
        return len(self.records)

    def patients(self) -> list[int]:
        """Patient numbers with at least one image, ascending."""
        return sorted({r.patient for r in self.records})

    def slices(self, patient: int) -> list[SliceRecord]:
        """A patient's present slices in slice-number order.

        Raises:
            KeyError: unknown patient (or one without images).
        """
        found = [r for r in self.records if r.patient == patient]
        if not found:
            raise KeyError(f"CT-ICH: no images for patient {patient}")
        return found

    def volume(self, patient: int, *, in_plane_mm: float = 1.0, limits: Limits | None = None) -> Volume:
        """The patient's brain-window slices as one pre-windowed ``Volume``.

        Spacing is (``SLICE_MM``, ``in_plane_mm``, ``in_plane_mm``), flagged as assumed because the dataset does
        not record the pixel size. ``slice_names`` are the SliceNumbers.
        """
        recs = self.slices(patient)
        vol = stack_images(
            [r.path for r in recs],
            limits or Limits(),
            (SLICE_MM, in_plane_mm, in_plane_mm),
            spacing_assumed=True,
            what=f"CT-ICH patient {patient:03d}",
        )
        vol.slice_names = [str(r.slice) for r in recs]
        vol.meta.update(dataset="CT-ICH", patient=patient)
        return vol

    def labels(self, patient: int) -> np.ndarray:
        """(S, 5) uint8 slice labels in ``CLASSES`` order, aligned with ``volume(patient)``."""
        return np.stack([r.labels for r in self.slices(patient)])

    def masks(self, patient: int) -> dict[int, np.ndarray]:
        """Hemorrhage masks {slice index in ``volume(patient)``: (H, W) bool}; only slices that have one.

        The masks are JPEGs, so they are thresholded at grey level 128.
        """
        return {i: read_grey(r.mask_path)[0] >= 128 for i, r in enumerate(self.slices(patient)) if r.mask_path}

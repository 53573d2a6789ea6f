"""The one in-memory form of every CT input: a ``Volume``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DicomRef:
    """What a DICOM SEG or an aligned export needs to point back at the source series.

    Lists are in the volume's slice order (index 0 = ``Volume.data[0]``).
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str
    sop_instance_uids: list[str]
    image_positions: list[tuple[float, float, float]]  # ImagePositionPatient per slice, LPS mm
    image_orientation: tuple[float, float, float, float, float, float]  # row then column direction cosines
    files: list[str] = field(default_factory=list)  # source paths, same order (empty for zips once extracted)


@dataclass
class Volume:
    """A CT volume in slice order, with what is needed to write results back onto the source grid.

    Attributes:
        data: (S, H, W) float32. Hounsfield units, or 0..255 grey levels when ``prewindowed``.
        spacing: (slice, row, col) voxel spacing in mm.
        prewindowed: True for 0..255 grey levels that carry a display window (CT-ICH training stacks read by
            ``ichdemo.io.image.stack_images``); ``ichdemo.io.load_volume`` turns PNG/JPG into HU, so it is False there.
        affine: 4x4 voxel-to-world (RAS, mm) matrix of the array ``data.transpose(2, 1, 0)`` (NIfTI's i, j, k =
            col, row, slice), so ``nibabel.Nifti1Image(labels.transpose(2, 1, 0), affine)`` is aligned.
        source: "dicom", "nifti" or "image".
        description: one human line about what was read.
        warnings: things a user should know (other series skipped, gantry tilt, uneven spacing, assumed spacing...).
        slice_names: a short name per slice (file stem, InstanceNumber...).
        spacing_assumed: True when the input carried no spacing and a default was used (volumes are then estimates).
        dicom: source references for DICOM input, else None.
        nifti_header: for NIfTI input: the original affine and the orientation transform, so labels can be written
            back in the file's own voxel order (see ``ichdemo.io.nifti.to_source_grid``).
        meta: free-form, non-identifying facts (modality, manufacturer, kernel...). Never patient identifiers.
            PNG/JPG input records the window its grey levels were inverted with in ``meta["input_window"]``
            (centre, width, name, declared, confidence, reason).
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    prewindowed: bool = False
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    source: str = "image"
    description: str = ""
    warnings: list[str] = field(default_factory=list)
    slice_names: list[str] = field(default_factory=list)
    spacing_assumed: bool = False
    dicom: DicomRef | None = None
    nifti_header: dict | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0

    def summary(self) -> dict:
        """Plain facts for `ichdemo info`, the app and reports."""
        lo, hi = (float(self.data.min()), float(self.data.max())) if self.data.size else (0.0, 0.0)
        return {
            "source": self.source,
            "description": self.description,
            "slices": self.shape[0],
            "rows": self.shape[1],
            "cols": self.shape[2],
            "spacing_mm": [round(s, 4) for s in self.spacing],
            "spacing_assumed": self.spacing_assumed,
            "values": "grey 0..255 (pre-windowed)" if self.prewindowed else "HU",
            "range": [round(lo, 1), round(hi, 1)],
            "warnings": list(self.warnings),
        }

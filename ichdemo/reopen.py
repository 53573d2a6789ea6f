"""Re-open an exported review: the labels a person exported (the draft zip's ``prediction/labels.nii.gz``, a
``formats/nifti`` label map or its DICOM SEG), uploaded beside the CT with the export's ``report.json``, become the
session's edits again, slice by slice as the report says a person left them.

Which uploaded files are labels: a NIfTI of unsigned 8-bit integers whose header says NIFTI_INTENT_LABEL or whose
name says "label" (a CT is never stored so), a DICOM file of modality SEG, and a ``report.json``. The rest is the CT.

Example:
    >>> ct, labels = split_uploads(paths)
    >>> vol = load_volume(ct)
    >>> edits, note = review_from_files(labels, vol)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.edits import STATUSES, Edits
from ichdemo.errors import UnsupportedInputError
from ichdemo.volume import Volume

NIFTI_INTENT_LABEL = 1002
REPORT_NAME = "report.json"


def is_labels(path: str | Path) -> bool:
    """Whether an uploaded file is exported labels (see the module docstring), not part of the CT."""
    p = Path(path)
    name = p.name.lower()
    if name == REPORT_NAME:
        return True
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            header = nib.load(str(p)).header
        except Exception:  # noqa: BLE001 - not readable here: the CT reader says why
            return False
        return header.get_data_dtype() == np.uint8 and (
            int(header["intent_code"]) == NIFTI_INTENT_LABEL or "label" in name
        )
    try:
        with open(p, "rb") as f:
            if f.read(132)[128:] != b"DICM":  # a SEG is written with the preamble; images are not read further
                return False
        import pydicom

        ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001 - unreadable here: the CT reader says why
        return False
    return str(ds.get("Modality", "")).upper() == "SEG"


def split_uploads(paths: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    """(the CT's files, the exported labels' files) of an upload."""
    ct, labels = [], []
    for p in paths:
        (labels if is_labels(p) else ct).append(str(p))
    return ct, labels


def labels_from_seg(path: str | Path, volume: Volume) -> np.ndarray:
    """A DICOM SEG of ``volume``'s series (as ``ichdemo.export.dicom_seg`` writes it) as a (S, H, W) label map.

    Raises:
        UnsupportedInputError: the CT is not DICOM, or the SEG refers to another series.
    """
    import highdicom as hd

    if volume.dicom is None:
        raise UnsupportedInputError(f"{Path(path).name}: a DICOM SEG re-opens over its DICOM series only")
    seg = hd.seg.segread(str(path))
    refs = seg.get("ReferencedSeriesSequence") or []
    if not refs or refs[0].SeriesInstanceUID != volume.dicom.series_instance_uid:
        raise UnsupportedInputError(f"{Path(path).name}: this DICOM SEG was made for another series than the CT")
    numbers = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
    unknown = sorted(set(numbers.values()) - set(CLASSES))
    if unknown:
        raise UnsupportedInputError(f"{Path(path).name}: segments {unknown} are not subtypes of {', '.join(CLASSES)}")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=volume.dicom.sop_instance_uids, combine_segments=True, skip_overlap_checks=True,
        assert_missing_frames_are_empty=True,
    )
    lut = np.zeros(max(numbers) + 1, np.uint8)
    for n, name in numbers.items():
        lut[n] = CLASSES.index(name) + 1
    return lut[pixels]


def review_from_files(files: Sequence[str | Path], volume: Volume) -> tuple[Edits, str]:
    """The edits that the exported labels ``files`` hold for ``volume``, and a line that says what was re-opened.

    With the export's report.json, the slices it marks edited, reviewed or no-hemorrhage take the exported labels
    and their status, the rest stay the model's draft; without it, every slice takes the exported labels as edited.

    Raises:
        UnsupportedInputError: no label map among ``files``, two of them, labels of another grid or series, or a
            report of another slice count.
    """
    from ichdemo.export.nifti import labels_from_nifti

    maps = [Path(f) for f in files if Path(f).name.lower() != REPORT_NAME]
    reports = [Path(f) for f in files if Path(f).name.lower() == REPORT_NAME]
    if len(maps) != 1 or len(reports) > 1:
        raise UnsupportedInputError(
            f"upload one label map (NIfTI or DICOM SEG) and at most one report.json beside the CT, not {len(maps)} "
            f"and {len(reports)}"
        )
    path = maps[0]
    is_nifti = path.name.lower().endswith((".nii", ".nii.gz"))
    labels = labels_from_nifti(path, volume) if is_nifti else labels_from_seg(path, volume)
    if labels.max(initial=0) > len(CLASSES):
        raise UnsupportedInputError(f"{path.name}: label values above {len(CLASSES)} are not subtypes")
    n = volume.shape[0]
    statuses = ["edited"] * n
    if reports:
        try:
            statuses = json.loads(reports[0].read_text())["review"]["slices"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UnsupportedInputError(f"report.json: no per-slice review in it ({err})") from None
        if not isinstance(statuses, list) or not all(isinstance(x, str) and x in STATUSES for x in statuses):
            raise UnsupportedInputError(f"report.json: review statuses must be among {', '.join(STATUSES)}")
        if len(statuses) != n:
            raise UnsupportedInputError(f"report.json: its review covers {len(statuses)} slices, the CT has {n}")
    edits = Edits.from_labels(labels, statuses)
    kept = edits.reviewed()
    source = "its report" if reports else "no report.json beside it: every slice counts as edited"
    return edits, f"Labels re-opened from {path.name}: {kept} of {n} slices as a person left them ({source})."

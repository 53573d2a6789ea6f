"""NIfTI label map on the source geometry, with ITK-SNAP and JSON label descriptions.

Files: ``nifti/<name>.nii.gz`` (uint8, 0 normal, k = CLASSES[k-1]), ``nifti/<name>.label.txt`` (ITK-SNAP label
description file, also read by ITK-SNAP-compatible tools) and ``nifti/<name>.labels.json`` (names, colours and
provenance). The grid is the source's own: for NIfTI input the file's voxel order, affine and sform/qform codes
(``ichdemo.io.nifti.to_source_grid``), otherwise ``Volume.affine`` over ``labels.transpose(2, 1, 0)``. The header's
``descrip`` says draft, model and version; ``intent`` is NIFTI_INTENT_LABEL.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from ichdemo.atomic import atomic_path, write_text
from ichdemo.constants import CLASS_COLORS, CLASS_NAMES, CLASSES
from ichdemo.errors import UnsupportedInputError
from ichdemo.export.job import ExportJob
from ichdemo.export.provenance import DRAFT_LABEL
from ichdemo.io.nifti import to_source_grid
from ichdemo.volume import Volume

FOLDER = "nifti"


def source_grid(labels: np.ndarray, volume: Volume) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    """The label map on the source's own voxel grid.

    Returns:
        (array indexed i, j, k as the source file is, its 4x4 RAS affine, a uint8 ``Nifti1Image`` of it).
    """
    if volume.nifti_header:
        img = to_source_grid(np.asarray(labels, np.uint8), volume)
    else:
        img = nib.Nifti1Image(np.ascontiguousarray(np.asarray(labels, np.uint8).transpose(2, 1, 0)), volume.affine)
        img.set_sform(volume.affine, code=1)
        img.set_qform(volume.affine, code=1)
        img.header.set_xyzt_units("mm")
    img.set_data_dtype(np.uint8)
    return np.asarray(img.dataobj), np.asarray(img.affine, float), img


def labels_from_nifti(path: str | Path, volume: Volume, atol: float = 1e-3) -> np.ndarray:
    """Read a label map written on ``volume``'s source grid (by this module or by ``predict``) back to (S, H, W).

    The file may store the grid in any axis order and direction; it is reoriented (never resampled) onto
    ``volume.data``'s order.

    Raises:
        UnsupportedInputError: the file's grid is not the volume's (different shape or world positions).
    """
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    transform = ornt_transform(io_orientation(img.affine), io_orientation(volume.affine))
    moved = apply_orientation(data, transform)
    affine = img.affine @ inv_ornt_aff(transform, data.shape)
    expected = volume.shape[::-1]
    if moved.shape != expected or not np.allclose(affine, volume.affine, atol=atol):
        raise UnsupportedInputError(
            f"{Path(path).name}: label grid {data.shape} does not match the source volume {expected} (cols, rows, "
            "slices) and its affine; was it written for another series?"
        )
    return np.ascontiguousarray(moved.transpose(2, 1, 0)).astype(np.uint8)


def itksnap_labels() -> str:
    """ITK-SNAP label description file for label values 0..5."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (ichdemo, draft output)",
        "# Columns: IDX -R- -G- -B- -A-- VIS MSH LABEL",
        "################################################",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for k, c in enumerate(CLASSES, start=1):
        r, g, b = CLASS_COLORS[c]
        lines.append(f'{k:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{c} - {CLASS_NAMES[c]}"')
    return "\n".join(lines) + "\n"


def labels_json(job: ExportJob) -> dict:
    """Names, colours and provenance of the label values."""
    return {
        "labels": [{"value": 0, "name": "normal", "color": [0, 0, 0]}]
        + [
            {"value": k, "name": c, "description": CLASS_NAMES[c], "color": list(CLASS_COLORS[c])}
            for k, c in enumerate(CLASSES, start=1)
        ],
        "present": [CLASSES[v - 1] for v in job.present],
        "provenance": job.provenance.as_dict(),
    }


def write(job: ExportJob) -> Path:
    """Write the three files; returns the .nii.gz path."""
    folder = job.out_dir / FOLDER
    _, _, img = source_grid(job.labels, job.volume)
    img.header["descrip"] = f"{DRAFT_LABEL} {job.provenance.model_text}".encode()[:79]
    img.header.set_intent("label", name="ICH draft")
    path = folder / f"{job.name}.nii.gz"
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    write_text(folder / f"{job.name}.label.txt", itksnap_labels())
    write_text(folder / f"{job.name}.labels.json", json.dumps(labels_json(job), indent=2) + "\n")
    return path

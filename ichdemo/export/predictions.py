"""A ``predict`` output folder: written by ``write_prediction``, read back by ``read_prediction``.

The folder holds ``labels.nii.gz`` (the label map on the source grid), ``heatmaps.npz`` (float16 per subtype),
``report.json`` (model, thresholds, probabilities, volumes), ``labels/<stem>.png`` for image input, and
``source.json``, a local sidecar naming the input. ``python -m ichdemo export PRED_DIR`` reads the source again with
``load_volume`` (its geometry and, for DICOM, the UIDs a DICOM SEG must reference) and puts the label map back onto
that volume's grid without resampling.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichdemo.atomic import atomic_path, write_bytes, write_text
from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError
from ichdemo.export.nifti import labels_from_nifti
from ichdemo.volume import Volume

SOURCE_NAME = "source.json"

EXPORT_NAME = "draft"
"""File-name stem of exports: neutral, since an input's own name may be the patient's name (privacy)."""


@dataclass
class Prediction:
    """A ``predict`` output, ready for ``ichdemo.export.export``."""

    labels: np.ndarray
    volume: Volume
    model_info: dict[str, Any]
    thresholds: dict[str, Any]
    name: str


def _report(folder: Path) -> dict:
    path = folder / "report.json"
    if not path.is_file():
        raise ConfigError(f"{folder} is not a predict output folder: no report.json (run `ichdemo predict` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg})") from None


def _source_paths(folder: Path) -> list[str]:
    sidecar = folder / SOURCE_NAME
    try:
        paths = json.loads(sidecar.read_text()).get("paths") or []
    except (OSError, json.JSONDecodeError, AttributeError):
        paths = []
    if not paths:
        raise ConfigError(
            f"{sidecar} is missing or names no input; run predict again with this version, "
            "or export straight from predict with --format"
        )
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise ConfigError(f"the source input has moved or is gone: {missing[0]} (from {sidecar})")
    return paths


def read_prediction(folder: str | Path) -> Prediction:
    """Labels, source volume, model and thresholds of a ``predict`` output folder.

    Raises:
        ConfigError: not a predict folder, or the source it names is gone.
        UnsupportedInputError: labels.nii.gz is not on the source's grid.
    """
    from ichdemo.io import load_volume

    folder = Path(folder)
    report = _report(folder)
    paths = _source_paths(folder)
    volume = load_volume(paths[0] if len(paths) == 1 else paths)
    labels = labels_from_nifti(folder / "labels.nii.gz", volume)
    return Prediction(labels, volume, report.get("model") or {}, report.get("thresholds") or {}, EXPORT_NAME)


def write_prediction(
    out_dir: str | Path,
    volume: Volume,
    labels: np.ndarray,
    report: dict[str, Any],
    maps255: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    source_paths: list[str] | None = None,
) -> dict[str, Path]:
    """Write a predict output folder; every file atomically.

    Args:
        out_dir: the folder (created).
        volume: the source series (grid, NIfTI header).
        labels: (S, H, W) uint8 label map on the source grid.
        report: the JSON report (``ichdemo.pipeline.Analysis.report``).
        maps255: (S, 5, H, W) heatmaps on the source grid for heatmaps.npz (with ``probs``); None to skip the file.
        probs: (S, 5) slice probabilities stored beside the heatmaps.
        source_paths: where the input came from, written to the local sidecar ``source.json`` (not into the
            report, since folder names may carry patient names) so that `ichdemo export PRED_DIR` can re-read the
            source geometry (e.g. DICOM UIDs for DICOM SEG).

    Returns:
        {"labels", "report", and where written "heatmaps", "source", "label_pngs" (image input)}: paths.
    """
    import nibabel as nib

    from ichdemo.io.nifti import to_source_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = to_source_grid(labels, volume) if volume.nifti_header else nib.Nifti1Image(
        np.ascontiguousarray(labels.transpose(2, 1, 0)), volume.affine)
    img.set_data_dtype(np.uint8)
    paths = {"labels": out / "labels.nii.gz", "report": out / "report.json"}
    with atomic_path(paths["labels"], suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    if maps255 is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{c: maps255[:, k].astype(np.float16) for k, c in enumerate(CLASSES)}, probs=probs)
        paths["heatmaps"] = write_bytes(out / "heatmaps.npz", buf.getvalue())
    write_text(paths["report"], json.dumps(report, indent=2) + "\n")
    if source_paths:
        paths["source"] = write_text(out / SOURCE_NAME, json.dumps({
            "note": "local only: where predict read its input (for `ichdemo export`); "
                    "may name the patient, do not share",
            "paths": [str(Path(p).resolve()) for p in source_paths],
        }, indent=2) + "\n")
    if volume.source == "image":
        paths["label_pngs"] = _write_label_pngs(labels, volume, out / "labels")
    return paths


def _write_label_pngs(labels: np.ndarray, volume: Volume, folder: Path) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    names = volume.slice_names or [f"{i:04d}" for i in range(labels.shape[0])]
    for name, lab in zip(names, labels):
        ok, png = cv2.imencode(".png", lab)
        write_bytes(folder / f"{Path(name).stem}.png", png.tobytes())
    return folder

"""Read a ``predict`` output folder back for ``python -m ichdemo export PRED_DIR``.

``source.json`` (a local sidecar) names the input, ``report.json`` the model and the thresholds; ``labels.nii.gz`` holds the label
map on the source grid. The source is read again with ``load_volume`` (its geometry and, for DICOM, the UIDs a
DICOM SEG must reference), and the label map is put back onto that volume's grid without resampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichdemo.errors import ConfigError
from ichdemo.export.nifti import labels_from_nifti
from ichdemo.predict import SOURCE_NAME
from ichdemo.volume import Volume

EXPORT_NAME = "draft"
"""File-name stem of exports: neutral, since an input's own name may be the patient's (issue 9, privacy)."""


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

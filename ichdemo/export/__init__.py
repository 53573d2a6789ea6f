"""Draft masks in the formats annotators use, so that a reviewer corrects a draft in their own tool.

Example:
    >>> from ichdemo.export import export
    >>> paths = export(labels, volume, ["nifti", "dicom-seg", "cvat"], "out/",
    ...                model_info=lm.describe(), thresholds=lm.thresholds)

Formats (``FORMATS``), one module each: ``nifti`` (label map on the source grid + ITK-SNAP/JSON label files),
``dicom-seg`` (highdicom, DICOM input only), ``seg-nrrd`` (3D Slicer), ``cvat`` (Segmentation mask 1.1 zip),
``labelstudio`` (tasks with BrushLabels predictions), ``coco`` (JSON with RLE) and ``overlay`` (review PNGs).
The 2-D formats share the slice images written once under ``images/``. Every file is written atomically and
stamped with the model, its version, the thresholds and a "draft / research use only" label. ``export.json`` in
the output folder lists what was written and what was skipped, and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichdemo.atomic import write_text
from ichdemo.edits import STATUSES
from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.export import coco, cvat, dicom_seg, labelstudio, nifti, overlay, seg_nrrd
from ichdemo.export.images import safe_name
from ichdemo.export.job import ExportJob, check_labels
from ichdemo.export.provenance import Provenance
from ichdemo.quantify import Thresholds
from ichdemo.volume import Volume

__all__ = [
    "FORMATS",
    "MANIFEST",
    "ExportFormat",
    "ExportJob",
    "Exported",
    "Provenance",
    "export",
    "parse_formats",
    "unsupported_reason",
]

MANIFEST = "export.json"


@dataclass(frozen=True)
class ExportFormat:
    """A registered export: its writer, and a check of whether a volume can have it."""

    name: str
    description: str
    write: Callable[[ExportJob], Path]
    unsupported: Callable[[Volume], str | None] = lambda volume: None


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("nifti", "NIfTI label map + ITK-SNAP/JSON label descriptions", nifti.write),
        ExportFormat("dicom-seg", "DICOM SEG referencing the source series", dicom_seg.write, dicom_seg.unsupported),
        ExportFormat("seg-nrrd", "3D Slicer .seg.nrrd", seg_nrrd.write),
        ExportFormat("cvat", "CVAT Segmentation mask 1.1 zip", cvat.write),
        ExportFormat("labelstudio", "Label Studio tasks with BrushLabels predictions", labelstudio.write),
        ExportFormat("coco", "COCO JSON with RLE masks", coco.write),
        ExportFormat("overlay", "PNG overlays for review", overlay.write),
    )
}


class Exported(dict):
    """``{format: path of its main file or folder}`` of what ``export`` wrote, with ``skipped`` (``{format: why}``)
    and ``manifest`` (the export.json that records both), so a caller never re-reads a file to learn what happened."""

    def __init__(self, written: dict[str, Path], skipped: dict[str, str], manifest: Path | None) -> None:
        super().__init__(written)
        self.skipped = dict(skipped)
        self.manifest = manifest


def parse_formats(text: str | Iterable[str]) -> list[str]:
    """Validated, de-duplicated format names from "nifti,dicom-seg" (or a list), in order; "all" = every one.

    Raises:
        ConfigError: an unknown format name.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [s.strip().lower() for s in items if s.strip()]
    if names == ["all"]:
        return list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)} or all")
    if not names:
        raise ConfigError(f"no export format given; choose from {', '.join(FORMATS)} or all")
    return list(dict.fromkeys(names))


def unsupported_reason(fmt: str, volume: Volume) -> str | None:
    """Why ``volume`` cannot be exported as ``fmt`` (e.g. DICOM SEG for a NIfTI input), or None."""
    return FORMATS[fmt].unsupported(volume)


def export(
    labels: np.ndarray,
    volume: Volume,
    formats: str | Iterable[str],
    out_dir: str | Path,
    *,
    model_info: Mapping[str, Any] | str,
    thresholds: Thresholds | Mapping[str, Any],
    keep_phi: bool = False,
    name: str = "labels",
    skip_unsupported: bool = False,
    review: Sequence[str] | None = None,
) -> Exported:
    """Write ``labels`` of ``volume`` in each of ``formats`` under ``out_dir``.

    Args:
        labels: (S, H, W) label map on the volume's grid (0 normal, k = CLASSES[k-1]), e.g. ``Analysis.labels()``.
        volume: the source ``Volume`` (geometry, DICOM references).
        formats: names from ``FORMATS`` (a list or a comma-separated string; "all" for every one).
        out_dir: output folder (created); each format writes in its own subfolder, slice images in ``images/``.
        model_info: ``LoadedModel.describe()`` (or a report's "model" entry, or a model name).
        thresholds: the thresholds that made ``labels``.
        keep_phi: keep patient name, ID and birth date in exports that copy source headers (DICOM SEG); by
            default they are de-identified (Basic Application Level Confidentiality Profile).
        name: series name used in file names.
        skip_unsupported: skip formats the input cannot have (DICOM SEG for NIfTI, or with nothing segmented),
            recording why in ``export.json``, instead of raising before anything is written.
        review: each slice's status in a person's review (``Edits.provenance()``), carried by the formats that
            have room for it: DICOM SEG (algorithm type SEMIAUTOMATIC, content description), Label Studio (each
            task's ``data.review``; reviewed slices also as an annotation), CVAT (labelmap.txt comments).

    Returns:
        ``Exported``: {format: path of its main file or folder} for the formats written, and what was skipped.

    Raises:
        ConfigError: unknown format.
        UnsupportedInputError: a format the input cannot have, unless ``skip_unsupported``.
        ValueError: ``labels`` not on the volume's grid or with values outside 0..5.
    """
    names = parse_formats(formats)
    job = ExportJob(
        check_labels(labels, volume),
        volume,
        Path(out_dir),
        Provenance.build(model_info, thresholds),
        safe_name(name),
        keep_phi,
        _check_review(review, volume),
    )
    skipped = _skipped(job, names)
    if skipped and not skip_unsupported:
        raise UnsupportedInputError("; ".join(skipped.values()))
    job.out_dir.mkdir(parents=True, exist_ok=True)
    written = {n: FORMATS[n].write(job) for n in names if n not in skipped}
    return Exported(written, skipped, _write_manifest(job, written, skipped))


def _check_review(review: Sequence[str] | None, volume: Volume) -> list[str] | None:
    if review is None:
        return None
    if len(review) != volume.shape[0] or not set(review) <= set(STATUSES):
        raise ValueError(f"review: one status of {STATUSES} per slice ({volume.shape[0]}), got {list(review)[:8]}")
    return list(review)


def _skipped(job: ExportJob, names: list[str]) -> dict[str, str]:
    """{format: reason} for requested formats this job cannot have."""
    out = {n: r for n in names if (r := FORMATS[n].unsupported(job.volume))}
    if "dicom-seg" in names and "dicom-seg" not in out and not job.present:
        out["dicom-seg"] = "no DICOM SEG written: no hemorrhage was segmented, and a SEG needs at least one segment"
    return out


def _write_manifest(job: ExportJob, written: dict[str, Path], skipped: dict[str, str]) -> Path:
    doc = {
        "series": job.name,
        "written": {k: str(v.relative_to(job.out_dir)) for k, v in written.items()},
        "skipped": skipped,
        "de_identified": not job.keep_phi,
        "provenance": job.provenance.as_dict(),
    }
    return write_text(job.out_dir / MANIFEST, json.dumps(doc, indent=2) + "\n")

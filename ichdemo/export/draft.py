"""The draft zip an annotator downloads from the app: the predict folder, the requested formats and DRAFT.txt."""

from __future__ import annotations

import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ichdemo import __version__
from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.quantify import Thresholds


def available_formats() -> list[tuple[str, str]]:
    """(label, name) of every export format, for a format picker."""
    from ichdemo.export import FORMATS

    return [(f"{name}: {fmt.description}", name) for name, fmt in FORMATS.items()]


def draft_stamp(
    model_info: dict, t: Thresholds, formats: Sequence[str], skipped: dict[str, str] | None = None,
    review: dict | None = None,
) -> str:
    """The text of DRAFT.txt: what produced these masks, that they are drafts, and how many slices a person
    edited or reviewed (``review``: ``Edits.summary``)."""
    counts = (review or {}).get("counts") or {}
    touched = sum(v for k, v in counts.items() if k != "draft")
    head = "DRAFT MASKS FOR ANNOTATION - NOT REVIEWED"
    if touched:
        head = (f"DRAFT MASKS FOR ANNOTATION - {touched} of {sum(counts.values())} slices edited or reviewed by a "
                "person (report.json: review), the others the model's draft")
    return "\n".join(
        [
            head,
            RESEARCH_NOTICE,
            "",
            f"ichdemo version: {__version__}",
            f"created: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
            (
                f"model: {model_info.get('name')} ({model_info.get('family')}, version {model_info.get('version')}, "
                f"weights sha256 {model_info.get('weights_sha256')}, trained: {model_info.get('trained')})"
            ),
            f"class thresholds ({','.join(CLASSES)}): {', '.join(f'{v:g}' for v in t.class_thresholds)}",
            f"mask thresholds ({','.join(CLASSES)}): {', '.join(f'{v:g}' for v in t.mask_thresholds)}",
            f"heatmap scale: {t.scale_mode}",
            "label values: 0 normal, " + ", ".join(f"{k + 1} {c}" for k, c in enumerate(CLASSES)),
            "formats: prediction/ (labels.nii.gz, heatmaps.npz, report.json)"
            + (f", formats/ ({', '.join(formats)})" if formats else ""),
            *[f"skipped {k}: {v}" for k, v in (skipped or {}).items()],
            "",
        ]
    )


def zip_folder(folder: Path, zpath: Path) -> Path:
    """Zip every file under ``folder`` (paths relative to it) into ``zpath``, then remove ``folder``."""
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    shutil.rmtree(folder, ignore_errors=True)
    return zpath

"""PNG overlays for a quick review: the CT slice (brain window) with each subtype filled in its colour at 40%
opacity and outlined, the draft notice in the top-left corner, and provenance in the PNG text chunks.

Only slices with a segmented voxel get an overlay (``overlay/<image name>.png``); a series with none gets its
middle slice, so a reviewer always has something to open and sees "no hemorrhage segmented" on it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ichdemo.atomic import write_bytes
from ichdemo.constants import CLASS_COLORS, CLASSES
from ichdemo.export.images import grey8, slice_names
from ichdemo.export.job import ExportJob
from ichdemo.export.provenance import DRAFT_LABEL

FOLDER = "overlay"
ALPHA = 0.4


def blend(grey: np.ndarray, lab: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """(H, W) uint8 grey + (H, W) labels -> (H, W, 3) uint8 RGB with filled, outlined subtypes."""
    import cv2

    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for k, c in enumerate(CLASSES, start=1):
        mask = lab == k
        if mask.any():
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(CLASS_COLORS[c], np.float32)
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    for k, c in enumerate(CLASSES, start=1):
        mask = (lab == k).astype(np.uint8)
        if mask.any():
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, CLASS_COLORS[c], 1)
    return out


def _caption(rgb: np.ndarray, text: str) -> np.ndarray:
    import cv2

    scale = max(0.3, rgb.shape[1] / 1400)
    cv2.putText(rgb, text, (4, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return rgb


def png(rgb: np.ndarray, job: ExportJob, index: int) -> bytes:
    """PNG bytes with provenance in tEXt chunks."""
    meta = PngInfo()
    meta.add_text("Description", f"{job.provenance.headline}. {job.provenance.notice}")
    meta.add_text("Software", job.provenance.software)
    meta.add_text("ichdemo", json.dumps(job.provenance.as_dict() | {"series": job.name, "slice": index}))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def chosen_slices(labels: np.ndarray) -> list[int]:
    """Slices with a segmented voxel, or the middle slice when there is none."""
    found = [int(s) for s in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))]
    return found or [labels.shape[0] // 2]


def write(job: ExportJob) -> Path:
    """Write the overlays; returns the folder."""
    folder = job.out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    grey, names = grey8(job.volume), slice_names(job.volume, job.name)
    for s in chosen_slices(job.labels):
        lab = job.labels[s]
        present = [CLASSES[v - 1] for v in np.unique(lab) if v > 0]
        caption = f"{DRAFT_LABEL} | {job.provenance.model} | " + (", ".join(present) or "no hemorrhage segmented")
        write_bytes(folder / f"{names[s]}.png", png(_caption(blend(grey[s], lab), caption), job, s))
    return folder

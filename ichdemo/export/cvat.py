"""CVAT "Segmentation mask 1.1" archive (Pascal VOC layout) for the slice images.

``cvat/<name>_segmentation_mask_1.1.zip`` holds:
- ``labelmap.txt``: "label:R,G,B::" per class (background first); comment lines carry the provenance;
- ``ImageSets/Segmentation/default.txt``: the image names (without extension), one per slice;
- ``SegmentationClass/<image>.png``: palette PNG, index = label value, palette = the class colours;
- ``SegmentationObject/<image>.png``: palette PNG, one instance per class present on the slice (1, 2, ...; VOC
  colour map), so CVAT creates one mask object per subtype and slice.
Create the CVAT task from the ``images/`` PNGs written beside it (same names), then upload this zip as annotations
in the "Segmentation mask 1.1" format. The format has no field per image, so the slices a person edited or reviewed
are listed in labelmap.txt's comments ("# review <image>: edited").
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ichdemo.atomic import write_bytes
from ichdemo.constants import CLASS_COLORS, CLASSES
from ichdemo.export.job import ExportJob

FOLDER = "cvat"
FORMAT_NAME = "Segmentation mask 1.1"


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (n, 3) uint8, used by VOC and CVAT for instance masks."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def class_palette() -> np.ndarray:
    """(256, 3) palette: 0 black (background), k -> CLASS_COLORS[CLASSES[k-1]], the rest black."""
    pal = np.zeros((256, 3), np.uint8)
    for k, c in enumerate(CLASSES, start=1):
        pal[k] = CLASS_COLORS[c]
    return pal


def labelmap_txt(job: ExportJob) -> str:
    """CVAT/VOC label map with provenance comments."""
    lines = ["# label:color_rgb:parts:actions", f"# {job.provenance.headline}", f"# {job.provenance.notice}"]
    if job.touched:  # the mask format has no field per image: the person's review goes here (and in report.json)
        _, names = job.slice_images()
        lines += [f"# review {stem}: {status}" for stem, status in zip(names, job.review) if status != "draft"]
    lines.append("background:0,0,0::")
    lines += [f"{c}:{','.join(str(v) for v in CLASS_COLORS[c])}::" for c in CLASSES]
    return "\n".join(lines) + "\n"


def palette_png(index: np.ndarray, palette: np.ndarray) -> bytes:
    """A 'P' mode PNG of (H, W) uint8 indices with ``palette``."""
    img = Image.fromarray(np.ascontiguousarray(index, dtype=np.uint8), mode="P")
    img.putpalette(palette.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def instance_map(lab: np.ndarray) -> np.ndarray:
    """(H, W) instance indices: the classes present on the slice numbered 1, 2, ... in class order."""
    out = np.zeros_like(lab, dtype=np.uint8)
    for n, value in enumerate(v for v in np.unique(lab) if v > 0):
        out[lab == value] = n + 1
    return out


def archive(job: ExportJob, names: list[str]) -> bytes:
    """The zip's bytes."""
    classes, voc = class_palette(), voc_colormap()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labelmap.txt", labelmap_txt(job))
        zf.writestr("ImageSets/Segmentation/default.txt", "\n".join(names) + "\n")
        for stem, lab in zip(names, job.labels):
            zf.writestr(f"SegmentationClass/{stem}.png", palette_png(lab, classes))
            zf.writestr(f"SegmentationObject/{stem}.png", palette_png(instance_map(lab), voc))
    return buf.getvalue()


def write(job: ExportJob) -> Path:
    """Write the slice images (once) and the CVAT zip; returns the zip path."""
    _, names = job.slice_images()
    path = job.out_dir / FOLDER / f"{job.name}_segmentation_mask_1.1.zip"
    return write_bytes(path, archive(job, names))

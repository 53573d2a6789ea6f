"""Slice images for the 2-D annotation tools (CVAT, Label Studio, COCO) and the overlays.

Those tools annotate images, not volumes, so each slice is written once as an 8-bit greyscale PNG under
``images/`` in the export folder, and every 2-D export refers to those names. HU input is shown in the brain
window (centre 40, width 80 HU), the usual reading window for hemorrhage; pre-windowed input (PNG/JPG) is kept as
it is. Names: the source file stems for image input (so predictions match images an annotator already has),
otherwise ``<name>_<slice index, 4 digits>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ichdemo.atomic import write_bytes
from ichdemo.transforms import to_unit
from ichdemo.volume import Volume

REVIEW_WINDOW = "brain"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, '.', '_', '-'); never empty."""
    return _UNSAFE.sub("_", text).strip("._") or "series"


def slice_names(volume: Volume, name: str) -> list[str]:
    """One unique file stem per slice (see the module docstring)."""
    n = volume.shape[0]
    if volume.source == "image" and len(volume.slice_names) == n:
        stems = [safe_name(Path(s).stem) for s in volume.slice_names]
        if len(set(stems)) == n:
            return stems
    return [f"{safe_name(name)}_{i:04d}" for i in range(n)]


def grey8(volume: Volume) -> np.ndarray:
    """(S, H, W) uint8 display images of the volume: PNG/JPG input through the window it was made with (the
    annotator sees the images they gave), other HU through the brain window."""
    w = volume.meta.get("input_window") or {}
    window = (float(w["centre"]), float(w["width"])) if "centre" in w and "width" in w else REVIEW_WINDOW
    unit = to_unit(volume.data, volume.prewindowed, window)
    return np.rint(unit * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a (H, W) grey or (H, W, 3) RGB uint8 image."""
    import cv2

    img = image if image.ndim == 2 else np.ascontiguousarray(image[..., ::-1])  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"could not encode a PNG of shape {image.shape}")
    return buf.tobytes()


def write_slice_images(volume: Volume, folder: Path, names: list[str]) -> Path:
    """Write ``<folder>/<name>.png`` for every slice (atomically, file by file); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, img in zip(names, grey8(volume)):
        write_bytes(folder / f"{stem}.png", png_bytes(img))
    return folder

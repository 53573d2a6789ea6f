"""COCO instance-segmentation JSON with compressed RLE masks, for the slice images.

``coco/<name>_coco.json``: ``images`` = the slice PNGs under ``images/`` (file_name relative to the export
folder), ``categories`` = the five subtypes with id = label value, ``annotations`` = one per subtype present on a
slice, with ``segmentation`` a compressed RLE ({"size": [h, w], "counts": str}, pycocotools' encoding),
``area`` its pixel count, ``bbox`` [x, y, w, h], ``iscrowd`` 0 (a pre-annotation to train on, not a region to
ignore). ``info`` carries the draft notice, model, version and thresholds.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from ichdemo.atomic import write_text
from ichdemo.constants import CLASS_NAMES, CLASSES
from ichdemo.export.job import IMAGES_DIR, ExportJob
from ichdemo.export.rle import bbox_xywh, coco_rle

FOLDER = "coco"


def info(job: ExportJob) -> dict:
    prov = job.provenance
    return {
        "description": f"{prov.headline}. {prov.notice}",
        "version": prov.model_text,
        "year": _dt.date.today().year,
        "contributor": prov.software,
        "url": "",
        "date_created": prov.created,
        "ichdemo": prov.as_dict(),
    }


def categories() -> list[dict]:
    return [
        {"id": k, "name": c, "supercategory": "intracranial hemorrhage", "description": CLASS_NAMES[c]}
        for k, c in enumerate(CLASSES, start=1)
    ]


def annotations(job: ExportJob) -> list[dict]:
    out = []
    for s, lab in enumerate(job.labels):
        for value in (int(v) for v in np.unique(lab) if v > 0):
            mask = lab == value
            out.append(
                {
                    "id": len(out) + 1,
                    "image_id": s + 1,
                    "category_id": value,
                    "segmentation": coco_rle(mask),
                    "area": float(mask.sum()),
                    "bbox": bbox_xywh(mask),
                    "iscrowd": 0,
                }
            )
    return out


def document(job: ExportJob, names: list[str]) -> dict:
    """The COCO document."""
    _, h, w = job.labels.shape
    images = [
        {"id": s + 1, "file_name": f"{IMAGES_DIR}/{stem}.png", "width": int(w), "height": int(h)}
        for s, stem in enumerate(names)
    ]
    return {
        "info": info(job),
        "licenses": [],
        "images": images,
        "categories": categories(),
        "annotations": annotations(job),
    }


def write(job: ExportJob) -> Path:
    """Write the slice images (once) and the COCO JSON; returns its path."""
    _, names = job.slice_images()
    return write_text(job.out_dir / FOLDER / f"{job.name}_coco.json", json.dumps(document(job, names)) + "\n")

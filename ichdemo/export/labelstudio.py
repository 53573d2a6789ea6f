"""Label Studio tasks with pre-annotations (``predictions``) as BrushLabels in Label Studio's own RLE.

``labelstudio/<name>_tasks.json`` is a list of tasks, one per slice image, to import into a project whose
labelling config is ``labelstudio/config.xml`` (an ``Image`` named "image" and ``BrushLabels`` named "label" with
the five subtypes). Each task's ``data.image`` is ``<image_root><image file>``, by default the relative path
``images/<file>.png``; set ``image_root`` to where Label Studio serves the images (e.g. "/data/local-files/?d=").
Each subtype present on a slice is one brush result ({"format": "rle", "rle": [...], "brushlabels": [subtype]});
``model_version`` names the model, version and thresholds, and ``data.ichdemo`` carries the full provenance.
``data.review`` says what a person did on the slice ("draft": nothing); a slice a person edited or reviewed also
carries its labels as an annotation, so that Label Studio counts it as labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from ichdemo.atomic import write_text
from ichdemo.constants import CLASS_COLORS, CLASSES
from ichdemo.export.job import IMAGES_DIR, ExportJob
from ichdemo.export.rle import ls_mask_rle

FOLDER = "labelstudio"
FROM_NAME = "label"
TO_NAME = "image"
IMAGE_ROOT = f"{IMAGES_DIR}/"


def config_xml(job: ExportJob) -> str:
    """The labelling config matching the tasks."""
    labels = "\n".join(
        f'    <Label value="{c}" background="#{"".join(f"{v:02x}" for v in CLASS_COLORS[c])}"/>' for c in CLASSES
    )
    return (
        f"<!-- {job.provenance.headline} -->\n"
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n'
        f"  <Header value={quoteattr(job.provenance.notice)}/>\n"
        "</View>\n"
    )


def results(lab: np.ndarray, slice_id: str) -> list[dict]:
    """Brush results for one (H, W) label slice: one per subtype present."""
    h, w = lab.shape
    out = []
    for value in (int(v) for v in np.unique(lab) if v > 0):
        c = CLASSES[value - 1]
        out.append(
            {
                "id": f"{slice_id}_{c}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "brushlabels",
                "origin": "prediction",
                "original_width": int(w),
                "original_height": int(h),
                "image_rotation": 0,
                "value": {"format": "rle", "rle": ls_mask_rle(lab == value), "brushlabels": [c]},
            }
        )
    return out


def tasks(job: ExportJob, names: list[str], image_root: str = IMAGE_ROOT) -> list[dict]:
    """One task per slice, with its prediction."""
    prov = job.provenance
    version = f"{prov.model_text} ({prov.thresholds_text})"
    out = []
    for i, (stem, lab) in enumerate(zip(names, job.labels)):
        status = job.review[i] if job.review else "draft"
        task = {
            "data": {"image": f"{image_root}{stem}.png", "series": job.name, "slice": i, "review": status,
                     "ichdemo": prov.as_dict()},
            "predictions": [{"model_version": version, "result": results(lab, stem)}],
        }
        if status != "draft":  # a person's labels: an annotation, not only the model's prediction
            task["annotations"] = [{"result": results(lab, stem), "ground_truth": False}]
        out.append(task)
    return out


def write(job: ExportJob, image_root: str = IMAGE_ROOT) -> Path:
    """Write the slice images (once), the tasks and the labelling config; returns the tasks path."""
    _, names = job.slice_images()
    folder = job.out_dir / FOLDER
    write_text(folder / "config.xml", config_xml(job))
    return write_text(folder / f"{job.name}_tasks.json", json.dumps(tasks(job, names, image_root)) + "\n")

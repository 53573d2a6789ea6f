"""python -m train.probe_pointing --model runs/ctich_aug --model checkpoints/lse_unet_lite0_fg --split runs/ctich_aug

Does a model's heatmap point at blood on CT-ICH's VALIDATION patients (no pixel masks there)? For every validation
slice labelled with hemorrhage, the peak of the heatmap of its most probable labelled subtype (as in
``train.evaluate.pointing_game``) is checked against the CT's own blood-density regions
(``ichdemo.refine.blood_regions``: acute-blood HU inside the skull, what refined drafts can at best become). No
annotation is used, so this can guide the choice of a training recipe without touching the held-out patients 77-81
(the only masks) or ../shared/data/ich-boxes.

Reported per model: ``hit`` (peak inside a blood region), ``hit_tol`` (within ``--tolerance`` input pixels of
one), ``chance`` (the share of the intracranial area that the blood regions cover, averaged over the same slices:
what a peak dropped at random inside the skull would score), ``in_skull`` (peak inside the skull), ``flat_maps``
(slices whose map is zero everywhere: no peak, counted as misses), and the
validation slice AUROC computed the same way for every model (uncached float input, all validation slices).
Beside them, for the data alone, ``blood_share``: the mean share of the skull interior that the blood regions cover
on the positive and on the negative validation slices (how much the density alone says about where the blood is).

Everything is on the model's input grid (``--size``, letterboxed): HU = grey * 120 - 20 (CT-ICH's 40/120 JPEGs),
spacing (5, px, px) with px from ``ichdemo.io.spacing.estimate_in_plane_mm`` on that grid. Slices without any blood
region are counted apart (``no_region``) and left out of the rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.data.series import SliceStackDataset
from ichdemo.data.sources import open_source
from ichdemo.data.splits import Split
from ichdemo.evaluation import predict
from ichdemo.io.spacing import estimate_in_plane_mm
from ichdemo.metrics import auroc_per_class
from ichdemo.models import load_pretrained
from ichdemo.refine import anatomy, blood_regions
from ichdemo.transforms import ResizeSpec

CTICH_WINDOW = (40.0, 120.0)
"""CT-ICH's JPEGs are windowed at centre 40, width 120: grey g in [0, 1] is g * 120 - 20 HU."""
SLICE_MM = 5.0
FALLBACK_MM = 0.9


def series_hu(series, size: int) -> np.ndarray:
    """(S, size, size) HU of a CT-ICH series on the model's letterboxed input grid."""
    raw = series.read(range(len(series)))
    unit = ResizeSpec(raw.shape[1], raw.shape[2], size).to_model(raw)
    centre, width = CTICH_WINDOW
    return np.clip(unit, 0, 1).astype(np.float32) * width + (centre - width / 2)


def truth_regions(data: SliceStackDataset, rows: list[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """{item: blood regions (size, size) bool} and {item: skull interior} for the dataset items ``rows``."""
    by_series: dict[int, list[int]] = {}
    for r in rows:
        s, i = data.items[r]
        by_series.setdefault(s, []).append(i)
    blood, inside = {}, {}
    for s, slices in by_series.items():
        hu = series_hu(data.series[s], data.size)
        px = estimate_in_plane_mm(hu) or FALLBACK_MM
        spacing = (SLICE_MM, px, px)
        known = anatomy(hu, spacing)
        regions = blood_regions(hu, spacing, slices, known=known)
        for r in rows:
            if data.items[r][0] == s:
                blood[r], inside[r] = regions[data.items[r][1]], known.inside[data.items[r][1]]
    return blood, inside


def pointing(model_dir: Path, data: SliceStackDataset, rows: list[int], blood: dict, inside: dict,
             tolerance: int) -> dict[str, Any]:
    """Pointing measures of one model on the positive rows, plus validation AUROC over all of ``data``."""
    model, _ = load_pretrained(model_dir, map_location="cpu")
    every = predict(model, data, maps=False)
    pred = predict(model, data, rows, maps=True)
    grow = np.ones((2 * tolerance + 1,) * 2, np.uint8)
    hit = hit_tol = in_skull = n = no_region = flat = 0
    chance: list[float] = []
    per_class = {c: [0, 0] for c in CLASSES}
    for j, r in enumerate(rows):
        region = blood[r]
        if not region.any():
            no_region += 1
            continue
        labelled = np.flatnonzero(pred.labels[j] > 0)
        k = int(labelled[np.argmax(pred.probs[j][labelled])])
        heat = cv2.resize(pred.raw[j, k].astype(np.float32), (data.size, data.size), interpolation=cv2.INTER_LINEAR)
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        n += 1
        flat += not heat.max() > 0  # an all-zero map has no peak: its "peak" is the first pixel, a miss
        got = bool(region[y, x])
        hit += got
        hit_tol += bool(cv2.dilate(region.astype(np.uint8), grow)[y, x])
        in_skull += bool(inside[r][y, x])
        chance.append(float(region.sum() / max(int(inside[r].sum()), 1)))
        per_class[CLASSES[k]][0] += got
        per_class[CLASSES[k]][1] += 1
    auroc = auroc_per_class(every.labels, every.probs)
    return {
        "model": str(model_dir), "positive_slices": len(rows), "scored": n, "no_region": no_region,
        "hit": hit / n if n else None, "hit_tol": hit_tol / n if n else None, "tolerance_px": tolerance,
        "chance": float(np.mean(chance)) if chance else None, "in_skull": in_skull / n if n else None,
        "flat_maps": flat,
        "hits_by_subtype": {c: f"{h}/{m}" for c, (h, m) in per_class.items() if m},
        "val_auroc": {k: round(float(v), 4) for k, v in auroc.items()},
    }


def _share(blood: dict[int, np.ndarray], inside: dict[int, np.ndarray], rows: list[int]) -> float | None:
    """Mean share of the skull interior covered by blood regions, over the ``rows`` that have an interior."""
    shares = [float(blood[r].sum() / inside[r].sum()) for r in rows if inside[r].any()]
    return float(np.mean(shares)) if shares else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.probe_pointing", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="model folder (repeat to compare several)")
    p.add_argument("--split", required=True, help="training run folder whose split.json names the validation part")
    p.add_argument("--data", default="ctich:../shared/data/ct-ich", help="CT-ICH data spec")
    p.add_argument("--size", type=int, default=256, help="model input side in pixels (the models' own)")
    p.add_argument("--tolerance", type=int, default=8, help="input pixels of slack for hit_tol")
    p.add_argument("--out", help="write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    split = Split.load(Path(args.split))
    if any(p in split.val for p in ("77", "78", "79", "80", "81")):
        print("error: the split's validation part holds a held-out patient (77-81)", file=sys.stderr)
        return 2
    source = open_source(args.data)
    data = SliceStackDataset(source.select(split.val), args.size, cache=False)
    labels = data.labels
    rows = [r for r in range(len(data)) if labels[r].any()]
    blood, inside = truth_regions(data, list(range(len(data))))  # one anatomy per series for both shares
    negative = [r for r in range(len(data)) if not labels[r].any()]
    results = {"split": args.split, "val_patients": list(split.val), "val_slices": len(data),
               "blood_share": {"positive": _share(blood, inside, rows), "negative": _share(blood, inside, negative)},
               "models": [pointing(Path(m), data, rows, blood, inside, args.tolerance) for m in args.model]}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

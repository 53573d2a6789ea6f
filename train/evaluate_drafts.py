"""python -m train.evaluate_drafts [--models NAME,...] [--md docs/RESULTS.md] [--json docs/drafts.json] [--from-json J]
                                 [--quality]

How well the drafts a user gets sit on the blood, measured the way a user makes them: every input goes through
``ichdemo.pipeline`` (``load_volume`` -> ``analyze`` -> ``Analysis.labels``) with each model's shipped thresholds,
once as the paper's raw Algorithm 1 and once refined (``ichdemo.refine``). Nothing here tunes anything: both data
sets are held out of training and of every calibration.

- CT-ICH patients 77-81 (``--ctich``), the 35 slices with masks (any hemorrhage): Dice pooled over all their
  pixels with the model's own class gate; the same on mask-positive slices only (as HGI-SAM reports it); the
  pointing game (the peak of the most probable labelled subtype's heatmap on the lesion, within 15 px).
- ich-boxes (``--boxes``, 355 slices of other patients and scanners with subtype boxes; one copy of each source
  slice): the labelled subtype's heatmap peak inside a box of that subtype; the share of all draft pixels that
  lie inside boxes (over every slice, those without boxes too); the share of boxes the draft touches; subtype
  AUROC of the slice probabilities.

The markdown table replaces the section between ``DRAFTS_BEGIN`` and ``DRAFTS_END`` of ``--md`` (appended when
absent), so ``python -m train.results`` and this script each regenerate their own part of RESULTS.md.
``--quality`` writes each local checkpoint's figures to its ``quality.json``, which the app shows in its model
picker and About tab (``ichdemo.catalogue.ModelInfo.quality``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from ichdemo import hub
from ichdemo.atomic import write_text
from ichdemo.catalogue import QUALITY_FILE
from ichdemo.constants import CLASSES
from ichdemo.io import load_volume
from ichdemo.pipeline import Analysis, analyze, load_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HELD_OUT = ("077", "078", "079", "080", "081")
BOX_CLASSES = ("EDH", "IPH", "IVH", "SAH", "SDH")  # ich-boxes' YOLO class ids 0..4 (its README)
CSV_SUBTYPES = {"IPH": "Intraparenchymal", "IVH": "Intraventricular", "SAH": "Subarachnoid", "SDH": "Subdural",
                "EDH": "Epidural"}
POINTING_TOLERANCE_PX = 15
DRAFTS_BEGIN, DRAFTS_END = "<!-- drafts:begin -->", "<!-- drafts:end -->"
VARIANTS = ("raw", "refined")


def _drafts(a: Analysis) -> dict[str, np.ndarray]:
    return {"raw": a.labels(refined=False), "refined": a.labels()}


def _dice(tp: int, fp: int, fn: int) -> float | None:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None


# ------------------------------------------------------------------------------------------------------- CT-ICH
def ctich_labels(root: Path) -> dict[tuple[str, str], list[str]]:
    """{(patient folder, slice number): labelled subtypes} from hemorrhage_diagnosis.csv."""
    out = {}
    with open(root / "hemorrhage_diagnosis.csv", newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            out[(f"{int(row['PatientNumber']):03d}", row["SliceNumber"])] = [
                c for c, col in CSV_SUBTYPES.items() if row[col] == "1"]
    return out


def evaluate_ctich(lm, root: Path) -> dict[str, Any]:
    """Dice and pointing game of raw and refined drafts on the masked slices of the held-out patients."""
    labels = ctich_labels(root)
    counts = {v: {"all": np.zeros(3, np.int64), "positive": np.zeros(3, np.int64)} for v in VARIANTS}
    hits = slices = n_pos = 0
    for patient in HELD_OUT:
        folder = root / "Patients_CT" / patient / "brain"
        vol = load_volume(folder)
        a = analyze(lm, vol)
        drafts = _drafts(a)
        for i, name in enumerate(vol.slice_names):
            stem = Path(name).stem
            mask_file = folder / f"{stem}_HGE_Seg.jpg"
            if not mask_file.is_file():
                continue
            truth = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) > 127
            slices += 1
            for v in VARIANTS:
                guess = drafts[v][i] > 0
                c = np.array([(guess & truth).sum(), (guess & ~truth).sum(), (~guess & truth).sum()])
                counts[v]["all"] += c
                if truth.any():
                    counts[v]["positive"] += c
            if truth.any():
                n_pos += 1
                hits += _points_at(a, i, labels.get((patient, stem), []), truth)
    return {
        "masked_slices": slices, "mask_positive_slices": n_pos,
        "dice_any": {v: _dice(*counts[v]["all"]) for v in VARIANTS},
        "dice_any_positive_slices": {v: _dice(*counts[v]["positive"]) for v in VARIANTS},
        "pointing": hits / n_pos if n_pos else None,
    }


def _points_at(a: Analysis, i: int, labelled: list[str], truth: np.ndarray) -> bool:
    """The peak of the most probable labelled subtype's heatmap (any subtype when unlabelled) on the lesion."""
    ks = [CLASSES.index(c) for c in labelled] or list(range(len(CLASSES)))
    k = max(ks, key=lambda j: a.probs[i, j])
    y, x = np.unravel_index(int(np.argmax(a.maps255[i, k])), truth.shape)
    grow = np.ones((2 * POINTING_TOLERANCE_PX + 1,) * 2, np.uint8)
    return bool(cv2.dilate(truth.astype(np.uint8), grow)[y, x])


# ---------------------------------------------------------------------------------------------------- ich-boxes
def read_boxes(root: Path, rel: str, shape: tuple[int, int]) -> list[tuple[str, slice, slice]]:
    """(subtype, rows, cols) of every YOLO box of image ``rel`` on an image of ``shape``."""
    label = (root / "labels" / rel).with_suffix(".txt")
    out = []
    for line in label.read_text().split("\n") if label.is_file() else []:
        parts = line.split()
        if len(parts) != 5:
            continue
        k, cx, cy, w, h = int(parts[0]), *(float(p) for p in parts[1:])
        rows, cols = shape
        r0, r1 = int(np.floor((cy - h / 2) * rows)), int(np.ceil((cy + h / 2) * rows))
        c0, c1 = int(np.floor((cx - w / 2) * cols)), int(np.ceil((cx + w / 2) * cols))
        out.append((BOX_CLASSES[k], slice(max(r0, 0), r1), slice(max(c0, 0), c1)))
    return out


def evaluate_boxes(lm, root: Path) -> dict[str, Any]:
    """Pointing game, draft pixels in boxes, boxes touched and subtype AUROC on one copy of each ich-boxes slice."""
    with open(root / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["copy"] == "1"]
    pixels = {v: np.zeros(2, np.int64) for v in VARIANTS}  # (draft pixels in boxes, all draft pixels)
    boxed_pixels = {v: np.zeros(2, np.int64) for v in VARIANTS}  # the same on slices with boxes only
    touched = {v: 0 for v in VARIANTS}
    n_boxes = hits = pairs = any_hits = boxed = 0
    probs, truth = [], []
    for r in rows:
        vol = load_volume(root / "images" / r["file"])
        a = analyze(lm, vol)
        boxes = read_boxes(root, r["file"], vol.shape[1:])
        inside = np.zeros(vol.shape[1:], bool)
        for _, rs, cs in boxes:
            inside[rs, cs] = True
        for v, lab in _drafts(a).items():
            draft = lab[0] > 0
            pixels[v] += [(draft & inside).sum(), draft.sum()]
            if boxes:
                boxed_pixels[v] += [(draft & inside).sum(), draft.sum()]
            touched[v] += sum(bool(draft[rs, cs].any()) for _, rs, cs in boxes)
        present = sorted({c for c, _, _ in boxes})
        for c in present:
            k = CLASSES.index(c)
            y, x = np.unravel_index(int(np.argmax(a.maps255[0, k])), inside.shape)
            hits += any(rs.start <= y < rs.stop and cs.start <= x < cs.stop for cc, rs, cs in boxes if cc == c)
            pairs += 1
        if boxes:
            k = int(np.argmax(a.probs[0]))
            y, x = np.unravel_index(int(np.argmax(a.maps255[0, k])), inside.shape)
            any_hits += bool(inside[y, x])
            boxed += 1
        n_boxes += len(boxes)
        probs.append(a.probs[0])
        truth.append([c in present for c in CLASSES])
    probs, truth = np.array(probs), np.array(truth)
    auroc = {c: float(roc_auc_score(truth[:, k], probs[:, k])) if 0 < truth[:, k].sum() < len(truth) else None
             for k, c in enumerate(CLASSES)}
    share = lambda p: float(p[0] / p[1]) if p[1] else None  # noqa: E731
    return {
        "slices": len(rows), "slices_with_boxes": boxed, "boxes": n_boxes, "labelled_subtypes": pairs,
        "pointing_labelled_subtype": hits / pairs if pairs else None,
        "pointing_any": any_hits / boxed if boxed else None,
        "draft_pixels_in_boxes": {v: share(pixels[v]) for v in VARIANTS},
        "draft_pixels_in_boxes_boxed_slices": {v: share(boxed_pixels[v]) for v in VARIANTS},
        "boxes_touched": {v: touched[v] / n_boxes if n_boxes else None for v in VARIANTS},
        "auroc": auroc,
    }


# ------------------------------------------------------------------------------------------------------ report
def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(results: dict[str, dict]) -> str:
    """The drafts section of RESULTS.md."""
    ct = [r["ctich"] for r in results.values() if r.get("ctich")]
    agree = "; here every masked slice holds hemorrhage, so the two agree" if ct and all(
        c["masked_slices"] == c["mask_positive_slices"] for c in ct) else ""
    lines = [
        DRAFTS_BEGIN,
        "## Drafts as a user gets them: raw Algorithm 1 and refined, on held-out data",
        "",
        "Generated by `python -m train.evaluate_drafts --md docs/RESULTS.md --json docs/drafts.json`: every input "
        "goes through the pipeline (`load_volume` -> `analyze` -> `Analysis.labels`) with each model's shipped "
        "thresholds (calibrated on the validation patients, never on these data); *raw* is the paper's Algorithm 1, "
        "*refined* keeps the draft's blood where the CT shows blood inside the skull (`ichdemo.refine`).",
        "",
        "CT-ICH patients 77-81, 35 masked slices (any hemorrhage): Dice pooled over every pixel of the masked "
        f"slices, own class gate; *pos.*: the mask-positive slices only (as HGI-SAM reports it{agree}); pointing: "
        "the peak of the most probable labelled subtype's heatmap on the lesion (15 px). For scale: HGI-SAM (weakly "
        "supervised, all of RSNA) reports 0.44 on CT-ICH, the dataset authors' supervised U-Net 0.31.",
        "",
        "| model | Dice raw | Dice refined | Dice pos. raw | Dice pos. refined | pointing |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = r.get("ctich")
        if c:
            lines.append(f"| {name} | {_f(c['dice_any']['raw'])} | {_f(c['dice_any']['refined'])} | "
                         f"{_f(c['dice_any_positive_slices']['raw'])} | "
                         f"{_f(c['dice_any_positive_slices']['refined'])} | {_f(c['pointing'])} |")
    lines += [
        "",
        "ich-boxes (355 slices, other patients and scanners; 257 with boxes): *peak in box*: the labelled "
        "subtype's heatmap peak inside a box of that subtype (per labelled subtype); *any peak*: the most probable "
        "subtype's peak inside any box; *in boxes*: the share of all draft pixels, over every slice (those without "
        "boxes too), that lie inside boxes; *touched*: the share of boxes with a draft pixel.",
        "",
        "| model | peak in box | any peak | in boxes raw | in boxes refined | touched raw | touched refined | "
        "AUROC IPH | IVH | SAH | SDH | EDH |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        b = r.get("boxes")
        if b:
            au = " | ".join(_f(b["auroc"][c]) for c in CLASSES)
            lines.append(f"| {name} | {_f(b['pointing_labelled_subtype'])} | {_f(b['pointing_any'])} | "
                         f"{_f(b['draft_pixels_in_boxes']['raw'])} | {_f(b['draft_pixels_in_boxes']['refined'])} | "
                         f"{_f(b['boxes_touched']['raw'])} | {_f(b['boxes_touched']['refined'])} | {au} |")
    return "\n".join(lines + ["", DRAFTS_END]) + "\n"


def replace_section(text: str, section: str, begin: str = DRAFTS_BEGIN, end: str = DRAFTS_END) -> str:
    """``text`` with its section between the markers ``begin`` and ``end`` replaced by ``section`` (appended when it
    has none)."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + section + rest.split(end, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + section


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate_drafts", description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated model references (default: every bundled checkpoint)")
    p.add_argument("--ctich", default=str(SHARED / "ct-ich"), help="CT-ICH folder (patients 77-81 are scored)")
    p.add_argument("--boxes", default=str(SHARED / "ich-boxes"), help="ich-boxes folder ('' to skip)")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--md", help="replace the drafts section of this markdown file (docs/RESULTS.md)")
    p.add_argument("--from-json", help="write --md from an earlier run's JSON instead of evaluating again")
    p.add_argument("--quality", action="store_true", help="write each local checkpoint's quality.json")
    args = p.parse_args(argv)
    refs = [r.strip() for r in args.models.split(",")] if args.models else hub.configured_refs()
    results: dict[str, dict] = json.loads(Path(args.from_json).read_text()) if args.from_json else {}
    for ref in [] if args.from_json else refs:
        t0 = time.perf_counter()
        lm = load_model(ref, device="cpu")
        out: dict[str, Any] = {}
        if args.ctich and Path(args.ctich).is_dir():
            out["ctich"] = evaluate_ctich(lm, Path(args.ctich))
        if args.boxes and Path(args.boxes).is_dir():
            out["boxes"] = evaluate_boxes(lm, Path(args.boxes))
        out["seconds"] = round(time.perf_counter() - t0, 1)
        results[lm.name] = out
        print(lm.name, json.dumps(out), file=sys.stderr)
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    if args.md:
        path = Path(args.md)
        write_text(path, replace_section(path.read_text() if path.is_file() else "", markdown(results)))
    if args.quality:
        for ref in refs:
            found = hub.resolve(ref)
            if found.name in results and Path(found.folder).is_dir():
                write_text(Path(found.folder) / QUALITY_FILE, json.dumps(quality(results[found.name]), indent=2) + "\n")
    return 0


def quality(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a user reads beside the model (``quality.json``): refined and raw drafts on the held-out data."""
    c, b = result.get("ctich", {}), result.get("boxes", {})
    return {
        "source": "python -m train.evaluate_drafts (held-out data, shipped thresholds; docs/RESULTS.md)",
        "ctich_held_out": {
            "slices": c.get("masked_slices"),
            "dice_any": c.get("dice_any"),
            "pointing": c.get("pointing"),
        },
        "ich_boxes": {
            "slices": b.get("slices"),
            "draft_pixels_in_boxes": b.get("draft_pixels_in_boxes"),
            "boxes_touched": b.get("boxes_touched"),
            "pointing_labelled_subtype": b.get("pointing_labelled_subtype"),
        },
    }


if __name__ == "__main__":
    sys.exit(main())

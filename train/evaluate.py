"""python -m train.evaluate --model runs/smoke --data phantom:12:777 --json eval.json [--html eval.html] [--md eval.md]

Evaluate a checkpoint the paper's way (METHOD.md "Evaluation protocol"):

- per-subtype AUROC on slice labels (the validation part of the saved split when ``--data`` is the training data,
  else every slice);
- Dice per class over all pixels of the masked slices (Normal included, and their average), any-hemorrhage Dice,
  and instance Dice per scan and subtype (mean, sd) over lesions above ``--min-voxels``;
- Dice under several threshold choices, each labelled: "calibrated" (the checkpoint's config.json), "lopo" (mask
  thresholds picked leave-one-patient-out on the other masked patients, the honest figure when the evaluation
  masks are the only masks), "tuned_on_eval" (picked on the evaluation slices themselves: optimistic) and
  "true_gate" (true slice labels instead of the class gate: the paper's upper bound of the gating step);
- ROC curves with the Youden point, Dice-versus-mask-threshold curves, and example overlays, in a self-contained
  HTML report (plotly, inline JS) and a markdown table.

Masks of CT-ICH mark any hemorrhage: per-subtype Dice uses the slices with one subtype, any-hemorrhage Dice all.
Dice is computed on the model's input grid.
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
from sklearn.metrics import roc_curve

from ichdemo.atomic import write_text
from ichdemo.calibrate import PAPER_GRID, grid_search_mask_thresholds
from ichdemo.constants import CLASSES
from ichdemo.data.series import MASK_ANY
from ichdemo.errors import IchdemoError, UnsupportedInputError
from ichdemo.evaluation import Predictions, dice_scores, instance_scores, label_maps, maps_to_input, predict
from ichdemo.metrics import auroc_per_class
from ichdemo.models import load_pretrained
from ichdemo.models.config import ModelConfig
from ichdemo.quantify import Thresholds
from train.calibrate import SPLIT_HELP, open_for_model, part_dataset


def roc_points(pred: Predictions, thresholds: Thresholds) -> dict[str, dict]:
    """Per subtype: ROC curve (fpr, tpr) and the operating point of the class threshold."""
    out = {}
    for k, name in enumerate(CLASSES):
        y, p = pred.labels[:, k] > 0.5, pred.probs[:, k]
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, p)
        c = thresholds.class_thresholds[k]
        point = {"fpr": float(np.mean(p[~y] > c)), "tpr": float(np.mean(p[y] > c)), "threshold": float(c)}
        out[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "point": point}
    return out


def _truth(masks: np.ndarray) -> tuple[np.ndarray, str]:
    binary = bool(np.any(masks == MASK_ANY))
    return ((masks > 0) if binary else masks.clip(0, 5)), ("binary" if binary else "labels")


def tuned_thresholds(pred: Predictions, base: Thresholds, size: int, grid=PAPER_GRID) -> tuple[Thresholds, dict]:
    """Mask thresholds picked on ``pred``'s own masked slices (the class gate of ``base`` kept)."""
    truth, kind = _truth(pred.masks)
    maps255 = maps_to_input(pred.raw, size, base)
    m, table = grid_search_mask_thresholds(pred.probs, maps255, truth, base.class_thresholds, grid=grid, mask_kind=kind)
    return base.replace(mask_thresholds=tuple(m)), table


def lopo_labels(pred: Predictions, base: Thresholds, size: int) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Label maps where each patient's mask thresholds were picked on the other patients' masked slices."""
    patients = list(dict.fromkeys(pred.patients))
    labels = np.zeros(pred.masks.shape, np.uint8)
    chosen = {}
    for p in patients:
        rows = np.array([i for i, q in enumerate(pred.patients) if q == p])
        rest = np.array([i for i, q in enumerate(pred.patients) if q != p])
        other = pred.subset(rest)
        if len(rest) == 0 or not np.any(other.masks > 0):
            t = base
        else:
            t, _ = tuned_thresholds(other, base, size)
        chosen[p] = list(t.mask_thresholds)
        labels[rows] = label_maps(pred.subset(rows), t, size)
    return labels, chosen


def score_labels(labels: np.ndarray, pred: Predictions, min_voxels: int) -> dict[str, Any]:
    """Dice (per class, any hemorrhage, subtype mean) and instance Dice of label maps against ``pred.masks``."""
    out = dice_scores(labels, pred.masks)
    out["instance"] = instance_scores(labels, pred.masks, pred.patients, min_voxels)
    return out


def evaluate(
    model_dir: str | Path,
    spec: str,
    auroc_part: str = "auto",
    mask_part: str = "auto",
    method: str = "auto",
    min_voxels: int = 3000,
    device: str = "cpu",
    batch_size: int = 16,
    lopo: bool = True,
    overlays: int = 6,
    split_mode: str = "auto",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate; returns (results for JSON, extras for the HTML report: overlay images)."""
    t0 = time.perf_counter()
    model, config = load_pretrained(model_dir, map_location=device)
    cfg = ModelConfig.from_dict(config)
    size, base = cfg.input_size, cfg.thresholds
    source, split = open_for_model(Path(model_dir), spec, config, split_mode)
    a_part = auroc_part if auroc_part != "auto" else ("val" if split else "all")
    m_part = mask_part if mask_part != "auto" else ("test" if split and split.test else "val" if split else "all")
    a_data = part_dataset(source, split, a_part, size)
    a_pred = predict(model, a_data, maps=False, batch_size=batch_size, device=device)
    m_data = part_dataset(source, split, m_part, size)
    items = m_data.mask_items()
    if not items:
        raise UnsupportedInputError(f"no slice with a mask in the {m_part} part of {spec}; nothing to score Dice on")
    pred = predict(model, m_data, items, maps=True, method=method, batch_size=batch_size, device=device)
    results: dict[str, Any] = {
        "model": str(model_dir), "architecture": cfg.architecture, "family": config.get("family"),
        "encoder": cfg.model_args.get("encoder") or cfg.model_args.get("backbone"),
        "data": spec, "auroc_part": a_part, "mask_part": m_part, "heatmap_method": method,
        "auroc_slices": len(a_pred.items), "mask_slices": len(items),
        "mask_patients": list(dict.fromkeys(pred.patients)), "input_size": size, "min_voxels": min_voxels,
        "auroc": auroc_per_class(a_pred.labels, a_pred.probs), "thresholds": base.to_dict(),
        "roc": roc_points(a_pred, base),
    }
    labels = label_maps(pred, base, size)
    results["dice"] = {"calibrated": score_labels(labels, pred, min_voxels)}
    tuned, table = tuned_thresholds(pred, base, size)
    results["dice"]["tuned_on_eval"] = score_labels(label_maps(pred, tuned, size), pred, min_voxels)
    results["dice"]["tuned_on_eval"]["mask_thresholds"] = list(tuned.mask_thresholds)
    results["dice_curves"] = {"grid": table["grid"], "objective": table["objective"], "curves": table["curves"],
                              "class_dice": table["class_dice"]}
    if lopo and len(set(pred.patients)) > 1:
        lab, chosen = lopo_labels(pred, base, size)
        results["dice"]["lopo"] = score_labels(lab, pred, min_voxels)
        results["dice"]["lopo"]["mask_thresholds"] = chosen
    gate = label_maps(pred, base, size, gate=pred.labels)
    results["dice"]["true_gate"] = score_labels(gate, pred, min_voxels)
    results["pointing"] = pointing_game(m_data, pred, size)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    extras = {"overlays": _overlays(m_data, pred, labels, overlays)} if overlays else {}
    return _clean(results), extras


POINTING_TOLERANCE_PX = 15
"""A peak within this many input pixels of the mask counts as a hit (the usual pointing-game tolerance)."""


def pointing_game(data, pred: Predictions, size: int) -> dict[str, Any]:
    """Threshold-free localisation on the masked slices with hemorrhage: does the peak of the heatmap fall on the
    lesion (within ``POINTING_TOLERANCE_PX``), and inside the head at all? The map pointed with is the slice's most
    probable labelled subtype (CT-ICH masks do not say which subtype a pixel is)."""
    from ichdemo.models.lse_unet import FOREGROUND_LEVEL

    hits = inside = n = 0
    grow = np.ones((2 * POINTING_TOLERANCE_PX + 1,) * 2, np.uint8)
    for r in range(len(pred.items)):
        lesion = pred.masks[r] > 0
        if not lesion.any():
            continue
        n += 1
        labelled = np.flatnonzero(pred.labels[r] > 0)
        k = labelled[np.argmax(pred.probs[r][labelled])] if len(labelled) else int(np.argmax(pred.probs[r]))
        heat = cv2.resize(pred.raw[r, k].astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits += bool(cv2.dilate(lesion.astype(np.uint8), grow)[y, x])
        head = data[pred.items[r]]["image"][1].numpy() > FOREGROUND_LEVEL
        head = cv2.morphologyEx(head.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8)) > 0
        inside += bool(head[y, x])
    return {"slices": n, "hit_rate": hits / n if n else None, "peak_in_head": inside / n if n else None,
            "tolerance_px": POINTING_TOLERANCE_PX}


def _overlays(data, pred: Predictions, labels: np.ndarray, n: int) -> list[dict]:
    """The ``n`` masked slices with the most hemorrhage: middle channel, true mask, predicted labels."""
    area = (pred.masks > 0).reshape(len(pred.items), -1).sum(1)
    order = np.argsort(-area, kind="stable")[:n]
    out = []
    for r in order:
        item = data[pred.items[r]]
        out.append({"image": item["image"][1].numpy(), "truth": pred.masks[r], "pred": labels[r],
                    "title": f"{pred.patients[r]} slice item {pred.items[r]}",
                    "probs": dict(zip(CLASSES, np.round(pred.probs[r], 3).tolist()))})
    return out


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy to lists, NaN to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--data", required=True, help="data spec (ctich:/path, phantom:N[:SEED], rsna:/path, bhsd:/path)")
    p.add_argument("--json", required=True, help="write the results here (JSON)")
    p.add_argument("--html", help="also write a self-contained HTML report (plotly, inline JS)")
    p.add_argument("--md", help="also write a markdown table")
    p.add_argument("--auroc-part", default="auto",
                   help="split part for AUROC (auto: val with the saved split, else all)")
    p.add_argument("--mask-part", default="auto", help="split part whose masked slices score Dice (auto: test, else "
                   "val, else all)")
    p.add_argument("--method", default="auto", help="heatmap method: auto, gradcam, lse, guided_backprop, "
                   "integrated_gradients")
    p.add_argument("--min-voxels", type=int, default=3000, help="instance Dice counts lesions above this size")
    p.add_argument("--no-lopo", action="store_true", help="skip the leave-one-patient-out mask thresholds")
    p.add_argument("--overlays", type=int, default=6, help="example overlays in the HTML report")
    p.add_argument("--split", default="auto", help=SPLIT_HELP)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results, extras = evaluate(args.model, args.data, args.auroc_part, args.mask_part, args.method,
                                   args.min_voxels, args.device, args.batch_size, not args.no_lopo, args.overlays,
                                   args.split)
    except IchdemoError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    from train import report

    write_text(args.json, json.dumps(results, indent=2) + "\n")
    if args.md:
        write_text(args.md, report.markdown(results))
    if args.html:
        write_text(args.html, report.html(results, extras.get("overlays", [])))
    print(report.summary_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m train.probe_refine --patients 50,51,70 [--out /tmp/refine_probe] [--held-out]

Look at ``ichdemo.refine`` on real CT: run the bundled default model over CT-ICH series, refine its Algorithm 1
draft with the CT's densities, and save one PNG overlay per hemorrhage slice (grey brain window; blue: raw draft,
green: refined, yellow: intracranial mask, red: the dataset's mask where one exists) to ``--out``.

Training patients are for looking at (no parameter of ``RefineParams`` is fitted here). Patients 77-81 hold the
only pixel masks and are held out: they run only with ``--held-out``, once, to report raw versus refined
any-hemorrhage Dice over their masked slices, pooled over pixels and averaged over slices.

CT-ICH's JPEGs carry no in-plane spacing (the loader assumes 1 mm, far from the truth: heads fill ~450 of 650 px).
Millimetre settings need one, so each series' spacing is estimated from anatomy, not from labels: the widest
left-right extent of its intracranial mask is taken as 130 mm, the adult internal cranial breadth (maximum cranial
breadth 135-145 mm between the outer tables, less 5-7 mm of bone on each side).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.io import load_volume
from ichdemo.pipeline import analyze, load_model
from ichdemo.refine import RefineParams, grey_to_hu, intracranial_mask, refine

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct-ich"
HELD_OUT = (77, 78, 79, 80, 81)
CTICH_WINDOW = (40.0, 120.0)  # the JPEGs' baked-in brain window (dataset README)
INTERNAL_BREADTH_MM = 130.0  # adult internal cranial breadth: anatomy, not fitted to any image
PROVISIONAL_MM = 0.4  # in-plane spacing used only to find the skull before measuring it
COLOURS = {"raw": (255, 0, 0), "refined": (0, 200, 0), "intracranial": (0, 220, 220), "truth": (0, 0, 255)}  # BGR


def estimate_spacing(hu: np.ndarray, slice_mm: float = 5.0) -> tuple[float, float, float]:
    """(slice, row, col) mm from the widest left-right extent of the intracranial mask (see module docstring)."""
    icm = intracranial_mask(hu, (slice_mm, PROVISIONAL_MM, PROVISIONAL_MM))
    cols = icm.any(axis=1)  # (S, W)
    widths = [np.flatnonzero(c)[-1] - np.flatnonzero(c)[0] + 1 for c in cols if c.any()]
    if not widths:
        return slice_mm, PROVISIONAL_MM, PROVISIONAL_MM
    px = float(np.clip(INTERNAL_BREADTH_MM / max(widths), 0.2, 1.0))
    return slice_mm, px, px


def hemorrhage_slices(patient: int) -> dict[int, list[str]]:
    """{slice number: subtypes} of the CSV's positive slices for one patient."""
    cols = {
        "IPH": "Intraparenchymal",
        "IVH": "Intraventricular",
        "SAH": "Subarachnoid",
        "SDH": "Subdural",
        "EDH": "Epidural",
    }
    out = {}
    with open(DATA / "hemorrhage_diagnosis.csv", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            if int(row["PatientNumber"]) == patient:
                subs = [c for c in CLASSES if row[cols[c]] == "1"]
                if subs:
                    out[int(row["SliceNumber"])] = subs
    return out


def _contour(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], width: int = 2) -> None:
    cnt, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, cnt, -1, colour, width)


def overlay(grey: np.ndarray, layers: dict[str, np.ndarray], title: str) -> np.ndarray:
    """Side by side: the plain slice, and the slice with every layer's outline."""
    base = cv2.cvtColor(np.clip(grey, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    drawn = base.copy()
    for name, mask in layers.items():
        _contour(drawn, mask, COLOURS[name], 1 if name == "intracranial" else 2)
    both = np.hstack([base, drawn])
    cv2.putText(both, title, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return both


def dice(a: np.ndarray, b: np.ndarray) -> float:
    den = int(a.sum() + b.sum())
    return 1.0 if den == 0 else 2.0 * float((a & b).sum()) / den


def run_patient(lm, patient: int, out: Path, params: RefineParams) -> dict:
    folder = DATA / "Patients_CT" / f"{patient:03d}" / "brain"
    vol = load_volume(folder)
    numbers = [int(n) for n in vol.slice_names] if vol.slice_names else list(range(1, vol.shape[0] + 1))
    hu = grey_to_hu(vol.data, CTICH_WINDOW)
    spacing = estimate_spacing(hu)
    t0 = time.perf_counter()
    an = analyze(lm, vol)
    t_net = time.perf_counter() - t0
    raw = an.labels()
    t0 = time.perf_counter()
    res = refine(hu, an.probs, an.maps255, raw, an.thresholds.class_thresholds, spacing, params)
    t_ref = time.perf_counter() - t0
    positives = hemorrhage_slices(patient)
    rec = {
        "patient": patient,
        "slices": vol.shape[0],
        "spacing_mm": spacing,
        "network_s": t_net,
        "refine_s": t_ref,
        "intracranial_ml": res.intracranial_ml,
        "slices_out": [],
    }
    for i, num in enumerate(numbers):
        mask_path = folder / f"{num}_HGE_Seg.jpg"
        truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127 if mask_path.exists() else None
        if num not in positives and truth is None:
            continue
        layers = {"intracranial": res.intracranial[i], "raw": raw[i] > 0, "refined": res.labels[i] > 0}
        item = {
            "slice": num,
            "csv": positives.get(num, []),
            "gated": [c for c, p, t in zip(CLASSES, an.probs[i], an.thresholds.class_thresholds) if p > t],
            "refined": sorted({CLASSES[v - 1] for v in np.unique(res.labels[i]) if v}),
        }
        if truth is not None:
            layers["truth"] = truth
            item["truth_px"] = int(truth.sum())
            item["raw"], item["refined_c"] = _counts(raw[i] > 0, truth), _counts(res.labels[i] > 0, truth)
        title = f"{patient:03d}/{num} csv {','.join(item['csv']) or '-'} gated {','.join(item['gated']) or '-'}"
        cv2.imwrite(str(out / f"{patient:03d}_{num:02d}.png"), overlay(vol.data[i], layers, title))
        rec["slices_out"].append(item)
    return rec


def _counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    return {"inter": int((pred & truth).sum()), "pred": int(pred.sum())}


def summarize_dice(records: list[dict]) -> dict:
    """Any-hemorrhage Dice of raw and refined over the masked slices: pooled over pixels and mean per slice."""
    out = {}
    masked = [s for r in records for s in r["slices_out"] if "truth_px" in s]
    for key in ("raw", "refined_c"):
        inter = sum(s[key]["inter"] for s in masked)
        den = sum(s[key]["pred"] + s["truth_px"] for s in masked)
        per = [
            1.0 if s[key]["pred"] + s["truth_px"] == 0 else 2 * s[key]["inter"] / (s[key]["pred"] + s["truth_px"])
            for s in masked
        ]
        out[key.replace("_c", "")] = {
            "pooled_dice": 2 * inter / den if den else 1.0,
            "mean_slice_dice": float(np.mean(per)) if per else float("nan"),
        }
    out["masked_slices"] = len(masked)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--patients", default="50,51,70,94", help="comma-separated CT-ICH patient numbers")
    p.add_argument("--out", default="/tmp/refine_probe", help="folder for the PNG overlays and probe.json")
    p.add_argument("--model", default="lse_unet_lite0_fg", help="bundled model name or folder")
    p.add_argument("--held-out", action="store_true", help="allow patients 77-81 (report only, never tune on them)")
    args = p.parse_args(argv)
    patients = [int(x) for x in args.patients.split(",") if x.strip()]
    if any(pt in HELD_OUT for pt in patients) and not args.held_out:
        print(f"patients {HELD_OUT} are held out; pass --held-out to report on them", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    params = RefineParams()
    records = []
    for pt in patients:
        rec = run_patient(lm, pt, out, params)
        records.append(rec)
        print(
            f"patient {pt:03d}: {rec['slices']} slices, spacing {rec['spacing_mm'][1]:.3f} mm, intracranial "
            f"{rec['intracranial_ml']:.0f} mL, network {rec['network_s']:.1f} s, refine {rec['refine_s'] * 1e3:.0f} ms"
        )
        for s in rec["slices_out"]:
            print(f"   slice {s['slice']:2d} csv {s['csv']} gated {s['gated']} refined {s['refined']}")
    summary = summarize_dice(records)
    if summary["masked_slices"]:
        print(json.dumps(summary, indent=1))
    (out / "probe.json").write_text(
        json.dumps({"params": params.to_dict(), "records": records, "dice": summary}, indent=1, default=float)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

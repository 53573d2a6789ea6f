"""python -m train.calibrate --model runs/smoke --data phantom:32 [--scale-mode image|fixed|compare]

Calibrate Algorithm 1 for a trained checkpoint and write the result into its config.json (``"thresholds"``, read by
``ichdemo.quantify.Thresholds.from_config`` and the app), with a ``"calibration"`` report beside it:

- class thresholds: Youden's J per subtype on the validation patients (slice labels);
- mask thresholds: joint grid search (25..200, step 25) maximising Dice on the validation slices against their
  masks, or, where the validation patients have none (CT-ICH: only the held-out 77-81 do), against pseudo-masks
  that need no annotation: the CT's own blood-density regions inside the skull on the slices labelled positive
  (``ichdemo.refine.blood_regions``, what refined drafts can at best become);
- with ``--scale-mode fixed`` the per-class heatmap scale too (median peak on positive validation slices);
  ``compare`` calibrates both scale modes and keeps the one with the higher Dice (both scores are recorded);
- with ``--map-floor gate`` (LSE U-Nets) the heatmap's per-class floor: the logit of the class threshold just found,
  written into ``model_args`` (``ichdemo.models.lse_unet``, ``map_floor``), before the mask thresholds are searched on
  the maps it gives. ``paper`` (the default) sets it to 0.

Which patients: when ``--data`` is the data the model was trained on, the split saved with the checkpoint is used
(``--class-part`` default val); ``--split provenance`` rebuilds it from the training settings recorded in
config.json. The held-out test part is never used unless asked for by name (``--mask-part test``, which the report
then says). With other data, every patient is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ichdemo.atomic import write_text
from ichdemo.calibrate import PAPER_GRID, fit_fixed_scale, grid_search_mask_thresholds, youden_thresholds
from ichdemo.constants import CLASSES
from ichdemo.data.series import MASK_ANY, SliceStackDataset
from ichdemo.data.sources import DataSource, open_source
from ichdemo.data.splits import Split, split_patients
from ichdemo.errors import ConfigError, IchdemoError, UnsupportedInputError
from ichdemo.evaluation import Predictions, maps_to_input, predict
from ichdemo.models import load_pretrained
from ichdemo.models.config import ModelConfig
from ichdemo.quantify import Thresholds


def open_for_model(
    model_dir: Path, spec: str, config: dict, split_mode: str = "auto"
) -> tuple[DataSource, Split | None]:
    """Open ``spec`` with the training run's data options and pick the split: ``split_mode`` "auto" takes the saved
    split when ``spec`` is the training data's spec, "saved" takes it for any spec whose patients include all of
    the split's (the same data elsewhere, e.g. a compact copy trained on another machine), "none" uses every patient.

    Raises:
        ConfigError: "saved" without a saved split, or with patients the data lacks; an unknown mode.
    """
    if split_mode not in ("auto", "saved", "provenance", "none"):
        raise ConfigError(f"--split must be auto, saved, provenance or none, got {split_mode!r}")
    train_cfg = (config.get("provenance") or {}).get("config") or {}
    source = open_source(spec, window=train_cfg.get("window", "paper"),
                         phantom_shape=train_cfg.get("phantom_shape", "16x128x128"),
                         phantom_subtypes=train_cfg.get("phantom_subtypes", "mixed"),
                         phantom_paired=train_cfg.get("phantom_paired", False), seed=train_cfg.get("seed", 0))
    saved = Split.load(model_dir) if (model_dir / "split.json").is_file() else None
    if split_mode == "provenance":
        return source, _split_from_provenance(source, train_cfg)
    if split_mode == "saved":
        if saved is None:
            raise ConfigError(f"--split saved: {model_dir} has no split.json")
        missing = sorted(set(saved.part("all")) - set(source.patients))
        if missing:
            raise ConfigError(
                f"--split saved: patient(s) {', '.join(missing[:5])} of the saved split are not in {spec}"
            )
        return source, saved
    return source, saved if split_mode == "auto" and saved is not None and saved.source == spec else None


SPLIT_HELP = ("auto: the split saved with the checkpoint when --data is the training data spec, else every patient; "
              "saved: the saved split for any --data holding its patients (the same data at another path); "
              "provenance: the split rebuilt from the training settings in config.json; none")


def _split_from_provenance(source: DataSource, train_cfg: dict) -> Split:
    """The training run's patient split, rebuilt with its recorded seed, validation share and test patients.

    Raises:
        ConfigError: config.json records no training settings.
    """
    if not train_cfg:
        raise ConfigError("--split provenance: config.json records no training settings (provenance.config)")
    test = [p.strip() for p in str(train_cfg.get("test_patients", "")).split(",") if p.strip()]
    per_patient = {p: np.concatenate([s.labels for s in source.select([p])]) for p in source.patients}
    return split_patients(per_patient, float(train_cfg.get("val_fraction", 0.2)), int(train_cfg.get("seed", 0)),
                          test, source=source.spec)


def part_dataset(source: DataSource, split: Split | None, part: str, size: int) -> SliceStackDataset:
    """The slices of a split part ("train", "val", "test", "all"); every patient when there is no split.

    Uncached: the network sees the same float input as in the pipeline (the training cache rounds it to 8 bits).
    """
    patients = source.patients if split is None or part == "all" else split.part(part)
    if not patients:
        raise UnsupportedInputError(f"the {part} part of {source.spec} has no patients")
    return SliceStackDataset(source.select(patients), size, cache=False)


def class_thresholds(pred: Predictions) -> tuple[np.ndarray, dict]:
    """Youden thresholds on the slice labels of ``pred``."""
    return youden_thresholds(pred.labels, pred.probs)


def mask_thresholds(
    pred: Predictions, c: np.ndarray, size: int, thresholds: Thresholds, grid: tuple[int, ...]
) -> tuple[np.ndarray, dict]:
    """Joint grid search on the masked slices of ``pred`` (binary any-hemorrhage masks where subtypes are unknown)."""
    masks = pred.masks
    binary = bool(np.any(masks == MASK_ANY))
    truth = (masks > 0) if binary else masks.clip(0, 5)
    maps255 = maps_to_input(pred.raw, size, thresholds)
    return grid_search_mask_thresholds(pred.probs, maps255, truth, c, grid=grid,
                                       mask_kind="binary" if binary else "labels")


def calibrate(
    model_dir: str | Path,
    spec: str,
    class_part: str = "val",
    mask_part: str = "auto",
    scale_mode: str = "image",
    grid: tuple[int, ...] = PAPER_GRID,
    device: str = "cpu",
    batch_size: int = 16,
    write: bool = True,
    split_mode: str = "auto",
    map_floor: str = "paper",
) -> dict[str, Any]:
    """Calibrate and (``write``) store the thresholds in ``model_dir``/config.json; returns the report."""
    model_dir = Path(model_dir)
    if scale_mode not in ("image", "fixed", "compare"):
        raise ConfigError(f"--scale-mode must be image, fixed or compare, got {scale_mode!r}")
    if map_floor not in ("paper", "gate"):
        raise ConfigError(f"--map-floor must be paper or gate, got {map_floor!r}")
    model, config = load_pretrained(model_dir, map_location=device)
    if map_floor == "gate" and getattr(model, "family", None) != "lse_unet":
        raise ConfigError("--map-floor gate needs an lse_unet model (Grad-CAM maps have no pixel logits)")
    size = ModelConfig.from_dict(config).input_size
    source, split = open_for_model(model_dir, spec, config, split_mode)
    cls_data = part_dataset(source, split, class_part, size)
    cls_pred = predict(model, cls_data, maps=map_floor == "paper", batch_size=batch_size, device=device)
    c, youden = class_thresholds(cls_pred)
    if hasattr(model, "set_map_floor"):
        p = np.clip(c, 1e-6, 1 - 1e-6)
        model.set_map_floor(np.log(p / (1 - p)) if map_floor == "gate" else None)
    if map_floor == "gate":  # the maps on the new floor
        cls_pred = predict(model, cls_data, maps=True, batch_size=batch_size, device=device)
    part, mask_pred = _mask_predictions(model, source, split, mask_part, class_part, cls_data, cls_pred, size,
                                        batch_size, device)
    candidates = []
    for mode in (("image", "fixed") if scale_mode == "compare" else (scale_mode,)):
        scale = None
        if mode == "fixed":
            scale, _ = fit_fixed_scale(cls_pred.raw, cls_pred.labels)
        t = Thresholds(class_thresholds=tuple(c), scale_mode=mode, scale=None if scale is None else tuple(scale))
        m, table = mask_thresholds(mask_pred, c, size, t, grid)
        candidates.append((table["score"], t.replace(mask_thresholds=tuple(m)), table))
    score, best, table = max(candidates, key=lambda x: x[0])
    report = {
        "data": spec, "class_part": class_part, "mask_part": part,
        "mask_part_note": "mask thresholds tuned on the held-out test slices" if part == "test" else
                          "pseudo-masks (no annotation): the CT's blood-density regions inside the skull on positive "
                          "slices" if "pseudo" in part else "",
        "class_slices": len(cls_pred.items), "mask_slices": len(mask_pred.items),
        "youden": youden, "grid_search": {k: v for k, v in table.items() if k not in ("curves", "class_dice")},
        "curves": table["curves"], "class_dice": table["class_dice"],
        "scale_modes": {t.scale_mode: s for s, t, _ in candidates}, "chosen_scale_mode": best.scale_mode,
        "map_floor": map_floor,
        "summary": f"class thresholds: Youden's J on the {len(cls_pred.items)} slices of the {class_part} patients; "
                   f"mask thresholds: joint grid search maximising Dice on {part} ({len(mask_pred.items)} slices, "
                   f"Dice {score:.3f}); patients held out of training never used",
    }
    if write:
        config = json.loads((model_dir / "config.json").read_text())
        config["thresholds"] = best.to_dict()
        config["calibration"] = _jsonable(report)
        if hasattr(model, "set_map_floor"):
            config["model_args"]["map_floor"] = model.ich_cfg["model_args"]["map_floor"]
        # the refinement's settings: physical values (ichdemo.refine), written out so the checkpoint says what it uses
        config["refine"] = ModelConfig.from_dict(config).refine.to_dict()
        write_text(model_dir / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"thresholds": best.to_dict(), **report}


def _mask_predictions(model, source, split, mask_part, class_part, cls_data, cls_pred, size, batch_size, device):
    """(part name, predictions on the slices whose masks tune the mask thresholds).

    ``auto``: the class part's masked slices; without any, the class part against pseudo-masks (``pseudo_masks``).
    A named part is used as asked (the held-out test part only so)."""
    if mask_part in ("auto", class_part) or (mask_part == "all" and split is None):
        rows = [i for i, k in enumerate(cls_pred.items) if k in set(cls_data.mask_items())]
        if rows:
            return class_part, cls_pred.subset(rows)
        if mask_part == "auto":
            masks = pseudo_masks(cls_data, cls_pred, source.window or "paper")
            pred = replace(cls_pred, masks=masks)
            return f"{class_part} (pseudo-masks: blood-density regions of positive slices)", pred
    try:
        data = part_dataset(source, split, mask_part, size)
    except UnsupportedInputError:
        data = None
    items = data.mask_items() if data is not None else []
    if not items:
        raise UnsupportedInputError(f"no slice with a mask in the {mask_part} part of {source.spec}; "
                                    "use --mask-part auto for pseudo-masks")
    return mask_part, predict(model, data, items, maps=True, batch_size=batch_size, device=device)


def pseudo_masks(data: SliceStackDataset, pred: Predictions, window: str | tuple[float, float]) -> np.ndarray:
    """(N, size, size) masks that need no annotation (``MASK_ANY`` where blood, else 0): on the slices labelled
    positive, the CT's own blood-density regions inside the skull (``ichdemo.refine.blood_regions``), series by
    series on the model's input grid; empty on negative slices.

    The input is read back to HU through the window it was made with; the pixel size, unknown for images, is
    estimated from the skull's width (``ichdemo.io.spacing``).
    """
    from ichdemo.io.spacing import estimate_in_plane_mm
    from ichdemo.refine import blood_regions
    from ichdemo.transforms import resolve_window

    centre, width = resolve_window(window)
    out = np.zeros((len(pred.items), data.size, data.size), np.int16)
    series: dict[int, list[int]] = {}
    for row, k in enumerate(pred.items):
        series.setdefault(data.items[k][0], []).append(row)
    for s, rows in series.items():
        hu = np.stack([data[pred.items[r]]["image"][1].numpy() for r in rows]) * width + (centre - width / 2)
        px = estimate_in_plane_mm(hu) or 0.5 * 512 / data.size  # a typical head CT pixel at 512 px
        spacing = (data.series[s].spacing or (5.0, px, px))[0], px, px
        positive = [j for j, r in enumerate(rows) if pred.labels[r].any()]
        if positive:
            # any hemorrhage, subtype unknown
            out[rows] = np.where(blood_regions(hu, spacing, positive), MASK_ANY, 0)
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _grid(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"grid must be comma-separated integers, got {text!r}") from err
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder written by train.train")
    p.add_argument("--data", required=True, help="data spec (ctich:/path, phantom:N[:SEED], rsna:/path, bhsd:/path)")
    p.add_argument("--class-part", default="val", help="split part for class thresholds: val, test, train or all")
    p.add_argument("--mask-part", default="auto", help="split part whose masked slices tune the mask thresholds "
                   "(auto: the class part's masks, else pseudo-masks on it; test only when named)")
    p.add_argument("--scale-mode", default="image", help="heatmap scale: image (paper), fixed, or compare (keep the "
                   "better)")
    p.add_argument("--map-floor", default="paper", choices=("paper", "gate"),
                   help="LSE U-Net heatmap floor: paper (pixel logit 0) or gate (the logit of the class threshold)")
    p.add_argument("--grid", type=_grid, default=PAPER_GRID, help="mask threshold grid (default 25,50,...,200)")
    p.add_argument("--split", default="auto", help=SPLIT_HELP)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    p.add_argument("--dry-run", action="store_true", help="print the result without writing config.json")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rep = calibrate(args.model, args.data, args.class_part, args.mask_part, args.scale_mode, args.grid,
                        args.device, args.batch_size, write=not args.dry_run, split_mode=args.split,
                        map_floor=args.map_floor)
    except IchdemoError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    t = rep["thresholds"]
    print(json.dumps({"thresholds": t, "mask_part": rep["mask_part"], "dice": rep["grid_search"]["score"],
                      "scale_modes": rep["scale_modes"]}, indent=2))
    for c, ct, mt in zip(CLASSES, t["class_thresholds"], t["mask_thresholds"]):
        print(f"{c}: class {ct:.3f} mask {mt:g}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

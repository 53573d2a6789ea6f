"""python -m train.model_card --model checkpoints/lse_unet_lite0 --eval runs/lse_unet_lite0/eval.json

Write a checkpoint's README.md (the Hugging Face model card) from its config.json (architecture, preprocessing,
calibrated thresholds, training provenance) and a `train.evaluate` JSON on the held-out patients. Every number in the
card comes from those two files, so rerunning train -> calibrate -> evaluate -> model_card reproduces it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ichdemo.atomic import write_text
from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from train.report import fmt, pointing_lines

ATTRIBUTION = (
    "CT-ICH: Hssayeni, M. (2019). Computed Tomography Images for Intracranial Hemorrhage Detection and Segmentation "
    "(version 1.0.0). PhysioNet. CC BY 4.0. Cite also Hssayeni et al. (2020), Data 5(1), 14, and Goldberger et al. "
    "(2000), Circulation 101(23), e215-e220."
)


def _row(values: dict, keys) -> str:
    return "| " + " | ".join(fmt(values.get(k)) for k in keys) + " |"


def _metrics(ev: dict, calibrated_on: str = "") -> list[str]:
    """The evaluation section; ``calibrated_on`` is the calibration's mask part (config.json)."""
    keys = [*CLASSES, "AVG"]
    optimistic = calibrated_on == "test"
    calibrated = ("which were tuned on these same slices (optimistic)" if optimistic else
                  f"which never saw them (calibrated on {calibrated_on or 'other patients'})")
    out = [
        f"AUROC on {ev['auroc_slices']} validation slices (patients held out of training, `{ev['auroc_part']}` part):",
        "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys), _row(ev["auroc"], keys), "",
        f"Dice on the {ev['mask_slices']} masked slices of patients {', '.join(ev['mask_patients'])} (never trained "
        f"on; input grid {ev['input_size']} px). The masks mark any hemorrhage, so subtype Dice counts only slices "
        "with a single subtype; *lopo* picks mask thresholds on four patients and scores the fifth (the honest "
        f"figure), *calibrated* uses the thresholds below, {calibrated}.",
        "", "| thresholds | Normal | " + " | ".join(CLASSES) + " | AVG | any ICH |", "|" + "---|" * 9,
    ]
    for name in ("lopo", "calibrated", "true_gate"):
        d = ev["dice"].get(name)
        if d:
            cells = [fmt(d["per_class"].get(k)) for k in ("Normal", *CLASSES, "AVG")]
            out.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(d['any'].get('ICH'))} |")
    pointing = pointing_lines(ev)
    return out + ["", *pointing] if pointing else out


def _resumed(prov: dict) -> str:
    return " (the last resumed process only)" if "--resume" in prov.get("command", "") else ""


def _reduced(config: dict) -> str:
    return " (reduced from the paper's 512 to train on CPU)" if config["input_size"][-1] < 512 else ""


def _scale(config: dict, machine: dict) -> str:
    where = "CPU" if str(machine.get("device", "cpu")).startswith("cpu") else "GPU"
    size = "at reduced resolution" if config["input_size"][-1] < 512 else "at the paper's 512 px"
    return f"{where} training {size} and few epochs on a small dataset"


def _drafts(d: dict) -> list[str]:
    """Raw and refined drafts on CT-ICH 77-81 and ich-boxes (``train.evaluate_drafts``)."""
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = []
    if d.get("ctich"):
        c = d["ctich"]
        out.append(f"- CT-ICH patients 77-81, {c['masked_slices']} masked slices, shipped thresholds: any-hemorrhage "
                   f"Dice raw {f(c['dice_any']['raw'])}, refined {f(c['dice_any']['refined'])}; on mask-positive "
                   f"slices {f(c['dice_any_positive_slices']['raw'])} / {f(c['dice_any_positive_slices']['refined'])};"
                   f" heatmap peak on the lesion {f(c['pointing'])}.")
    if d.get("boxes"):
        b = d["boxes"]
        out.append(f"- ich-boxes ({b['slices']} slices, other scanners): labelled subtype's peak in its box "
                   f"{f(b['pointing_labelled_subtype'])}; draft pixels inside boxes raw "
                   f"{f(b['draft_pixels_in_boxes']['raw'])}, refined {f(b['draft_pixels_in_boxes']['refined'])}; "
                   f"boxes touched {f(b['boxes_touched']['raw'])} / {f(b['boxes_touched']['refined'])}.")
    return out


def card(config: dict, ev: dict | None, name: str, drafts: dict | None = None) -> str:
    """The model card text."""
    prov = config.get("provenance") or {}
    data = prov.get("data") or {}
    machine = prov.get("machine") or {}
    t = config.get("thresholds") or {}
    w = config.get("window") or {}
    args = config["model_args"]
    arch = f"{config['architecture']} over {args.get('encoder') or args.get('backbone')}"
    lines = [
        f"# {name}: {arch}", "", f"> {RESEARCH_NOTICE}", "",
        "Weakly supervised intracranial hemorrhage subtype model after Chen and Kuo (MIDL 2026 submission): trained "
        "on slice-level labels only (IPH, IVH, SAH, SDH, EDH); heatmaps turn into draft masks and volumes by the "
        "paper's Algorithm 1, then refined with the CT (blood density inside the skull, `ichdemo.refine`, settings in "
        "config.json). Load with `ichdemo predict INPUT --model <this folder>` or `ichdemo.pipeline.load_model`.", "",
        "## Intended use", "",
        "Research, teaching, and draft masks that annotators correct. Not a medical device; not for diagnosis or any "
        "clinical decision.", "",
        "## Training", "",
        f"- Data: CT-ICH, {data.get('train_patients', '?')} patients / {data.get('train_slices', '?')} slices for "
        f"training, {data.get('val_patients', '?')} patients for validation, patients "
        f"{', '.join(data.get('test_patients', []))} held out entirely (they carry the only masks). "
        f"Positive training slices per subtype: {data.get('positives_train', {})}.",
        f"- Input: {config['input_size'][-1]} px{_reduced(config)}, 3 stacked slices; "
        f"trained on the dataset's pre-windowed JPEGs; HU input is windowed at centre {w.get('centre')} / width "
        f"{w.get('width')} HU to match.",
        f"- Command: `{prov.get('command', '?')}`",
        f"- Epochs: {prov.get('epochs')}; time {prov.get('seconds', 0) / 60:.0f} min{_resumed(prov)} on "
        f"{machine.get('gpu') or machine.get('device', '?')} "
        f"({machine.get('cpu_threads', '?')} CPU threads, {machine.get('precision', '?')}, "
        f"{machine.get('platform', '?')},"
        f" torch {machine.get('torch', '?')}); commit `{prov.get('git_commit', '?')}`.",
        f"- Initial weights: {config.get('init_weights') or 'none (from scratch)'}.",
        *([f"- Note: {prov['note']}."] if prov.get("note") else []), "",
        "## Thresholds (config.json)", "",
        f"- Class thresholds (IPH..EDH): {t.get('class_thresholds')}",
        f"- Mask thresholds (0..255 heatmap): {t.get('mask_thresholds')}; heatmap scale: {t.get('scale_mode')}",
        f"- How: {config.get('calibration', {}).get('summary', 'see train.calibrate')}", "",
    ]
    calibrated_on = str((config.get("calibration") or {}).get("mask_part", ""))
    if ev:
        lines += ["## Evaluation (`python -m train.evaluate`)", "", *_metrics(ev, calibrated_on), ""]
    if drafts:
        lines += ["## Drafts on held-out data (`python -m train.evaluate_drafts`)", "", *_drafts(drafts), ""]
    lines += [
        "## Limitations", "",
        "- Small training set (82 scans in all) with few SAH, IVH and SDH patients (4 to 7 each): AUROC and Dice are "
        "noisy and far below the paper's RSNA-trained figures; validation uses a handful of patients per subtype.",
        f"- {_scale(config, machine)}; the heatmap grid is input/4 (lse_unet) or input/32 (gap).",
        "- Trained on 8-bit JPEGs with a baked brain window and no pixel spacing; DICOM/NIfTI input is windowed to "
        "match, which is not the same distribution; volumes on PNG/JPG input use an assumed spacing.",
        "", "## Data and license", "", ATTRIBUTION, "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.model_card", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder (config.json)")
    p.add_argument("--eval", help="train.evaluate JSON on the held-out patients")
    p.add_argument("--name", help="title (default: the folder name)")
    p.add_argument("--drafts", help="train.evaluate_drafts JSON (its entry for this model is used)")
    args = p.parse_args(argv)
    folder = Path(args.model)
    config = json.loads((folder / "config.json").read_text())
    ev = json.loads(Path(args.eval).read_text()) if args.eval else None
    drafts = json.loads(Path(args.drafts).read_text()).get(folder.name) if args.drafts else None
    write_text(folder / "README.md", card(config, ev, args.name or folder.name, drafts))
    print(folder / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

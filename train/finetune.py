"""python -m train.finetune --model checkpoints/lse_unet_lite0_blood --series CT --labels LABELS --out runs/tuned
python -m train.finetune --simulate [--ks 1,3,5] [--json docs/finetune.json] [--md docs/RESULTS.md]

Learning from a person's corrections (issue 17). An annotator's corrected slices are strong pixel labels; this
fine-tunes an ``lse_unet`` checkpoint on them together with slice labels of the data it was trained on (replay, so
that the classifier does not forget), and writes a new checkpoint folder with its card.

What is trained: the decoder and heads (the encoder stays frozen, ``--train-encoder`` unfreezes it), for ``--steps``
steps of AdamW. Each step sees every corrected slice (flipped left-right at random) and ``--replay-batch`` slices of
the replay data. Loss = pixel loss on the corrected slices + CLoss (the paper's slice loss) on both:

- pixel loss, on the LSE map's signed pixel logits (``ichdemo.cam.lse_result``, the map the app thresholds), at the
  map's own grid: a normal pixel pushes every subtype's logit below 0; a blood pixel pushes the soft maximum over
  the subtypes it may be above 0 (a corrected label names one subtype; a CT-ICH mask marks any hemorrhage, so there a
  pixel may be any subtype of its slice's labels);
- CLoss with the slice labels the corrections imply (the subtypes painted) and the replay slices' CSV labels.

Corrections (``--series`` and ``--labels``, repeated in pairs): a CT as the app reads it and its labels as the app
exports them (labels.nii.gz on the CT's grid, or the unzipped draft export, whose report.json says which slices a
person edited or reviewed: only those are used; a bare label file counts as reviewed on every slice).

``--simulate`` measures it on CT-ICH, honestly: for each held-out patient 77-81, "correct" k of its masked slices
(the ground-truth mask as the correction, slices drawn at random with a fixed seed), fine-tune the bundled default
from those alone, and score the Dice of the patient's other masked slices before and after (refined and raw drafts,
the model's shipped thresholds), and the draft pixels on its hemorrhage-free slices (false positives). Replay uses
CT-ICH patients other than 77-81, as every training does. Writes docs/finetune.json and the section between
``FINETUNE_BEGIN`` and ``FINETUNE_END`` of RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ichdemo import hub
from ichdemo.atomic import write_text
from ichdemo.cam import lse_result
from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.errors import ConfigError, IchdemoError, UnsupportedInputError
from ichdemo.export.nifti import labels_from_nifti
from ichdemo.inference import LoadedModel, load_model
from ichdemo.io import load_volume
from ichdemo.models import save_pretrained
from ichdemo.models.losses import CLoss
from ichdemo.models.registry import normalize_input
from ichdemo.pipeline import analyze
from ichdemo.transforms import prepare
from ichdemo.volume import Volume
from train.evaluate_drafts import HELD_OUT, ctich_labels, replace_section

REPO = Path(__file__).resolve().parents[1]
CTICH = REPO.parent / "shared" / "data" / "ct-ich"
FINETUNE_BEGIN, FINETUNE_END = "<!-- finetune:begin -->", "<!-- finetune:end -->"


@dataclass
class Corrected:
    """Strong labels of some slices of one series.

    Attributes:
        volume: the series.
        slices: the corrected slice indices.
        allowed: (n, 5, H, W) bool, one per corrected slice: the subtypes a pixel may be (none: normal).
        classes: (n, 5) float32 slice labels of the corrected slices.
    """

    volume: Volume
    slices: list[int]
    allowed: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_labels(cls, volume: Volume, labels: np.ndarray, slices: list[int]) -> Corrected:
        """From a label map (S, H, W; 0 normal, k = CLASSES[k-1]) as the app exports it."""
        lab = np.asarray(labels)[slices]
        allowed = np.stack([lab == k + 1 for k in range(len(CLASSES))], axis=1)
        return cls(volume, list(slices), allowed, allowed.any(axis=(2, 3)).astype(np.float32))

    @classmethod
    def from_masks(cls, volume: Volume, masks: dict[int, np.ndarray], subtypes: dict[int, list[str]]) -> Corrected:
        """From any-hemorrhage masks (H, W bool per slice) and each slice's labelled subtypes (CT-ICH)."""
        slices = sorted(masks)
        classes = np.array([[c in subtypes.get(i, []) for c in CLASSES] for i in slices], np.float32)
        may = np.where(classes.any(axis=1, keepdims=True), classes, 1.0)  # unlabelled: any subtype
        allowed = np.stack([masks[i][None] & may[j, :, None, None].astype(bool) for j, i in enumerate(slices)])
        return cls(volume, slices, allowed, classes)


def pixel_loss(pixel_logits: torch.Tensor, allowed: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Pixel BCE on the LSE map's signed logits (B, 5, h, w) against ``allowed`` (B, 5, h, w) fractions in [0, 1]
    (the share of each map cell a subtype may cover); cells outside the model's pooling region carry no evidence and
    are left out."""
    blood = allowed.amax(dim=1)  # (B, h, w)
    inside = torch.ones_like(blood) if region is None else region.float().reshape(blood.shape)
    pos_logit = torch.logsumexp(pixel_logits + torch.log(allowed + 1e-6), dim=1)  # soft max over allowed subtypes
    w_pos, w_neg = blood * inside, (1 - blood) * inside
    pos = (w_pos * F.softplus(-pos_logit)).sum() / w_pos.sum().clamp_min(1.0)
    neg = (w_neg[:, None] * F.softplus(pixel_logits)).sum() / (w_neg.sum() * pixel_logits.shape[1]).clamp_min(1.0)
    return pos + neg


def _tensors(lm: LoadedModel, corrections: list[Corrected]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model input (n, 3, size, size) in [0, 1], allowed fractions at the model input grid, slice labels."""
    xs, allowed, ys = [], [], []
    for c in corrections:
        x, spec = prepare(c.volume.data, c.volume.prewindowed, lm.cfg.input_size, lm.cfg.window)
        xs.append(x[c.slices])
        allowed.append(spec.to_model(c.allowed.astype(np.float32)))
        ys.append(c.classes)
    return (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(allowed)),
            torch.from_numpy(np.concatenate(ys)))


def replay_data(root: Path, size: int):
    """CT-ICH slices of patients other than 77-81 (their slice labels only), for replay."""
    from ichdemo.data.series import SliceStackDataset
    from ichdemo.data.sources import open_source

    source = open_source(f"ctich:{root}")
    keep = [p for p in source.patients if f"{int(p):03d}" not in HELD_OUT]
    return SliceStackDataset(source.select(keep), size)


@dataclass
class FinetuneResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def finetune(
    lm: LoadedModel,
    corrections: list[Corrected],
    replay=None,
    *,
    steps: int = 40,
    lr: float = 1e-4,
    replay_batch: int = 16,
    replay_weight: float = 5.0,
    train_encoder: bool = False,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune ``lm.model`` in place on ``corrections`` (and ``replay``, a dataset of slices with labels)."""
    model = lm.model
    if getattr(model, "family", None) != "lse_unet":
        raise ConfigError("fine-tuning from pixel corrections needs an lse_unet model (its map is what is corrected)")
    if not corrections or not any(c.slices for c in corrections):
        raise UnsupportedInputError("no corrected slices to learn from")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    x, allowed, y = _tensors(lm, corrections)
    for p in model.parameters():
        p.requires_grad_(True)
    if not train_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    model.train()
    if not train_encoder:
        model.encoder.eval()  # BatchNorm statistics of the frozen encoder stay as trained
    closs = CLoss().to(lm.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    history, start = [], time.perf_counter()
    size = tuple(x.shape[-2:])
    for step in range(steps):
        flip = torch.rand(x.shape[0]) < 0.5
        xb = torch.where(flip[:, None, None, None], x.flip(-1), x)
        ab = torch.where(flip[:, None, None, None], allowed.flip(-1), allowed)
        out = model(normalize_input(xb.to(lm.device), model.ich_cfg))
        res = lse_result(model, out, size)
        grid = F.adaptive_avg_pool2d(ab.to(lm.device), res.pixel_logits.shape[-2:])
        region = out.regions[0] if out.regions else None
        terms = {"pixel": pixel_loss(res.pixel_logits, grid, region), "closs": closs(out.level_logits, y.to(lm.device))}
        if replay is not None and replay_batch > 0:
            batch = [replay[rng.randrange(len(replay))] for _ in range(replay_batch)]
            rx = torch.stack([torch.as_tensor(b["image"]) for b in batch]).to(lm.device)
            ry = torch.stack([torch.as_tensor(b["labels"]) for b in batch]).to(lm.device)
            terms["replay"] = replay_weight * closs(model(normalize_input(rx, model.ich_cfg)).level_logits, ry)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in terms.items()}})
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FinetuneResult(steps, time.perf_counter() - start, history)


# ------------------------------------------------------------------------------------------------- corrections
def read_corrections(series: str, labels: str) -> Corrected:
    """A (CT, labels) pair as ``--series`` / ``--labels`` give it: ``labels`` is a label map on the CT's grid
    (.nii/.nii.gz, as the app's draft export and ``ichdemo predict`` write it) or an unzipped draft export (its
    ``prediction/labels.nii.gz``; only the slices its report.json marks edited, reviewed or no-hemorrhage are used).
    """
    vol = load_volume(series)
    path = Path(labels)
    if path.is_dir():
        folder = path / "prediction" if (path / "prediction").is_dir() else path
        path = folder / "labels.nii.gz"
        if not path.is_file():
            raise UnsupportedInputError(f"{labels}: no labels.nii.gz (or prediction/labels.nii.gz) in this folder")
        report = folder / "report.json"
    else:
        report = None
    lab = labels_from_nifti(path, vol)
    slices = list(range(vol.shape[0]))
    if report is not None and report.is_file():
        review = json.loads(report.read_text()).get("review", {}).get("slices")
        if review:
            slices = [i for i, s in enumerate(review) if s != "draft"]
    return Corrected.from_labels(vol, lab, slices)


def save_finetuned(lm: LoadedModel, out: Path, result: FinetuneResult, corrections: list[Corrected],
                   args: dict[str, Any]) -> Path:
    """The fine-tuned model as a checkpoint folder: the base's config (thresholds, window, refinement), a
    ``finetune`` record and a card that says what it was tuned on."""
    record = {
        "base_model": lm.name, "base_weights_sha256": lm.weights_sha256, "steps": result.steps,
        "seconds": round(result.seconds, 1), "corrected_slices": sum(len(c.slices) for c in corrections),
        "series": len(corrections), "first_loss": result.history[0], "last_loss": result.history[-1], **args,
    }
    out.mkdir(parents=True, exist_ok=True)
    card = (
        f"# {out.name}: {lm.name} fine-tuned on a person's corrections\n\n{RESEARCH_NOTICE}\n\n"
        f"Fine-tuned by `python -m train.finetune` from `{lm.name}` on {record['corrected_slices']} corrected slices "
        f"of {record['series']} series ({result.steps} steps, {record['seconds']} s, "
        f"{'whole network' if args.get('train_encoder') else 'decoder and heads; encoder frozen'}). Thresholds and "
        f"refinement parameters are the base model's. Loss first step {record['first_loss']}, last step "
        f"{record['last_loss']}.\n\nWhat correction-learning did on held-out CT-ICH patients: docs/RESULTS.md.\n"
    )
    write_text(out / "README.md", card)
    return save_pretrained(lm.model, out, config={"finetune": record})


# ------------------------------------------------------------------------------------------------- simulation
def _masks(folder: Path, vol: Volume) -> dict[int, np.ndarray]:
    out = {}
    for i, name in enumerate(vol.slice_names):
        f = folder / f"{Path(name).stem}_HGE_Seg.jpg"
        if f.is_file():
            out[i] = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) > 127
    return out


def _score(lm: LoadedModel, vol: Volume, masks: dict[int, np.ndarray], scored: list[int], negatives: list[int]):
    """Pooled Dice of raw and refined drafts on ``scored`` slices; mean draft pixels on ``negatives``."""
    a = analyze(lm, vol)
    out = {}
    for variant, lab in (("raw", a.labels(refined=False)), ("refined", a.labels())):
        tp = sum(int(((lab[i] > 0) & masks[i]).sum()) for i in scored)
        fp = sum(int(((lab[i] > 0) & ~masks[i]).sum()) for i in scored)
        fn = sum(int((~(lab[i] > 0) & masks[i]).sum()) for i in scored)
        out[variant] = {"dice": 2 * tp / max(2 * tp + fp + fn, 1),
                        "fp_px_per_clean_slice": float(np.mean([(lab[i] > 0).sum() for i in negatives]))
                        if negatives else None}
    return out


def simulate(model_ref: str, root: Path, ks: list[int], steps: int, lr: float, seed: int) -> dict[str, Any]:
    """The correction-learning table (see the module docstring)."""
    lm = load_model(model_ref, device="cpu")
    base_state = copy.deepcopy(lm.model.state_dict())
    replay = replay_data(root, lm.cfg.input_size)
    labels = ctich_labels(root)
    rows = []
    for patient in HELD_OUT:
        folder = root / "Patients_CT" / patient / "brain"
        vol = load_volume(folder)
        masks = _masks(folder, vol)
        stems = [Path(n).stem for n in vol.slice_names]
        negatives = [i for i, s in enumerate(stems) if (patient, s) in labels and not labels[(patient, s)]]
        subtypes = {i: labels.get((patient, stems[i]), []) for i in masks}
        for k in ks:
            if len(masks) <= k:
                rows.append({"patient": patient, "k": k, "skipped": f"{len(masks)} masked slices, none left to score"})
                continue
            chosen = sorted(random.Random(f"{seed}-{patient}-{k}").sample(sorted(masks), k))
            scored = [i for i in masks if i not in chosen]
            lm.model.load_state_dict(base_state)
            before = _score(lm, vol, masks, scored, negatives)
            corr = Corrected.from_masks(vol, {i: masks[i] for i in chosen}, subtypes)
            result = finetune(lm, [corr], replay, steps=steps, lr=lr, seed=seed)
            after = _score(lm, vol, masks, scored, negatives)
            rows.append({"patient": patient, "k": k, "corrected": [stems[i] for i in chosen],
                         "scored_slices": len(scored), "before": before, "after": after,
                         "finetune_s": round(result.seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    lm.model.load_state_dict(base_state)
    return {"model": lm.name, "steps": steps, "lr": lr, "seed": seed, "rows": rows,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}",
            "command": "python -m train.finetune --simulate " + " ".join(sys.argv[2:])}


def markdown(sim: dict[str, Any]) -> str:
    """The RESULTS.md section of a ``simulate`` result."""
    lines = [
        "## Learning from corrections (simulated on CT-ICH 77-81)", "",
        f"`{sim['command'].strip()}` on {sim['machine']}. For each held-out patient, k of its masked slices are "
        f"\"corrected\" (their ground-truth mask given as the correction, drawn at random, seed {sim['seed']}); "
        f"`{sim['model']}` is fine-tuned on those alone plus replayed slice labels of patients 0-76 ({sim['steps']} "
        "steps, decoder only), and the Dice of the patient's *other* masked slices is scored before and after (pooled "
        "over their pixels, the model's own gate and shipped thresholds). FP px = mean draft pixels on the patient's "
        "hemorrhage-free slices (refined). Patients with no masked slice left to score are skipped.", "",
        "| k | patient | scored slices | Dice refined before -> after | Dice raw before -> after | FP px before -> "
        "after | tuning s |", "|---|---|---|---|---|---|---|",
    ]
    for r in sim["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['k']} | {r['patient']} | {r['skipped']} | | | | |")
            continue
        b, a = r["before"], r["after"]
        fp = "n/a" if b["refined"]["fp_px_per_clean_slice"] is None else (
            f"{b['refined']['fp_px_per_clean_slice']:.0f} -> {a['refined']['fp_px_per_clean_slice']:.0f}")
        lines.append(
            f"| {r['k']} | {r['patient']} | {r['scored_slices']} | {b['refined']['dice']:.3f} -> "
            f"{a['refined']['dice']:.3f} | {b['raw']['dice']:.3f} -> {a['raw']['dice']:.3f} | {fp} | "
            f"{r['finetune_s']:.0f} |")
    for k in sorted({r["k"] for r in sim["rows"]}):
        done = [r for r in sim["rows"] if r["k"] == k and "skipped" not in r]
        if done:
            def mean(when: str, v: str, done: list = done) -> float:
                return float(np.mean([r[when][v]["dice"] for r in done]))

            lines.append(f"| {k} | **mean of {len(done)}** | | **{mean('before', 'refined'):.3f} -> "
                         f"{mean('after', 'refined'):.3f}** | {mean('before', 'raw'):.3f} -> {mean('after', 'raw'):.3f}"
                         " | | |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.finetune", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="the lse_unet to tune (default: the bundled default)")
    p.add_argument("--series", action="append", default=[], help="a corrected CT (repeat, paired with --labels)")
    p.add_argument("--labels", action="append", default=[], help="its labels.nii.gz or unzipped draft export")
    p.add_argument("--out", help="the new checkpoint folder")
    p.add_argument("--replay", default=str(CTICH), help="CT-ICH folder for replayed slice labels ('' for none)")
    p.add_argument("--steps", type=int, default=40, help="optimiser steps")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--replay-batch", type=int, default=16, help="replayed slices per step")
    p.add_argument("--replay-weight", type=float, default=5.0, help="weight of the replayed slices' CLoss")
    p.add_argument("--train-encoder", action="store_true", help="tune the encoder too (default: frozen)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--simulate", action="store_true", help="the CT-ICH 77-81 correction-learning table")
    p.add_argument("--ks", default="1,3,5", help="--simulate: corrected slices per patient")
    p.add_argument("--json", default=str(REPO / "docs" / "finetune.json"), help="--simulate: JSON output")
    p.add_argument("--md", default=str(REPO / "docs" / "RESULTS.md"), help="--simulate: markdown to update ('' none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = args.model or hub.default_model()
        if args.simulate:
            root = Path(args.replay or CTICH)
            if not (root / "hemorrhage_diagnosis.csv").is_file():
                raise UnsupportedInputError(f"{root}: CT-ICH not found (--replay names its folder)")
            sim = simulate(model, root, [int(k) for k in args.ks.split(",")], args.steps, args.lr, args.seed)
            write_text(Path(args.json), json.dumps(sim, indent=1) + "\n")
            if args.md:
                md = Path(args.md)
                write_text(md, replace_section(md.read_text() if md.is_file() else "",
                                               f"{FINETUNE_BEGIN}\n{markdown(sim)}{FINETUNE_END}\n",
                                               FINETUNE_BEGIN, FINETUNE_END))
            print(markdown(sim))
            return 0
        if not args.out or not args.series or len(args.series) != len(args.labels):
            raise ConfigError("give --out and --series/--labels in pairs (or --simulate)")
        corrections = [read_corrections(s, lab) for s, lab in zip(args.series, args.labels)]
        lm = load_model(model)
        replay = replay_data(Path(args.replay), lm.cfg.input_size) if args.replay else None
        result = finetune(lm, corrections, replay, steps=args.steps, lr=args.lr, replay_batch=args.replay_batch,
                          replay_weight=args.replay_weight,
                          train_encoder=args.train_encoder, seed=args.seed)
        out = save_finetuned(lm, Path(args.out), result, corrections,
                             {"lr": args.lr, "train_encoder": args.train_encoder, "replay": bool(args.replay)})
        print(f"wrote {out} ({result.steps} steps, {result.seconds:.0f} s; loss {result.history[0]} -> "
              f"{result.history[-1]})")
        return 0
    except IchdemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

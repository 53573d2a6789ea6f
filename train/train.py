"""python -m train.train --config train/configs/smoke.yaml [--key value ...] [--resume]

Train a ``gap`` baseline or the paper's ``lse_unet`` on slice labels only (METHOD.md "Training"):

1. stage 1 (lse_unet with ``stage1_epochs`` > 0): the encoder is first trained as a classifier (a ``gap`` model on
   the same backbone) on the target data, as the paper does;
2. stage 2: the lse_unet, its encoder initialised from stage 1, trained with CLoss + HLoss (``--hloss false`` for
   the ablation). A ``gap`` run has only this stage, trained with BCE.

Optimiser as in the paper unless overridden: SGD with a step schedule for a pretrained encoder, Adam 1e-4 from
scratch. bf16 autocast and channels_last on CUDA, fp32 on CPU. Seeded. Every epoch ends with validation AUROC on a
patient-level split; the best epoch's weights are kept. ``--resume`` continues from the last finished epoch.

Output folder (``--out``): the checkpoint in Hugging Face layout (config.json with architecture, preprocessing and
training provenance, model.safetensors, README.md), ``train_config.yaml`` (the resolved config), ``split.json``
(patients per part), ``history.json`` (per-epoch loss and AUROC), ``state.pt`` (resumable state), and for a
two-stage run ``stage1/`` (the stage-1 classifier, itself a gap checkpoint).

Multi-GPU / multi-node: ``torchrun --nproc_per_node 4 -m train.train --config ...`` (DistributedDataParallel; nccl
on CUDA, gloo on CPU). The same command without torchrun trains in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.data.sampling import pos_weight as compute_pos_weight
from ichdemo.data.series import SliceStackDataset
from ichdemo.data.sources import DataSource, open_source
from ichdemo.data.splits import Split, require_classes, split_patients
from ichdemo.errors import ConfigError, IchdemoError
from ichdemo.models import save_pretrained
from train import engine
from train.config import TrainConfig, add_config_arguments, resolve_config, save_yaml, to_dict

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Stage:
    """One training stage: its name, model family and number of epochs."""

    name: str
    family: str
    epochs: int


def stages_of(cfg: TrainConfig) -> list[Stage]:
    """Stage 1 (classifier pre-training of the encoder) when asked, then the main stage."""
    out = []
    if cfg.model == "lse_unet" and cfg.stage1_epochs > 0:
        out.append(Stage("stage1", "gap", cfg.stage1_epochs))
    out.append(Stage("main", cfg.model, cfg.epochs))
    return out


# ------------------------------------------------------------------------------------------------ data


@dataclass
class Data:
    source: DataSource
    split: Split
    train: SliceStackDataset
    val: SliceStackDataset


def prepare_data(cfg: TrainConfig, out: Path, resume: bool) -> Data:
    """Open the source, split by patient (or reload the saved split on resume) and check every subtype is there.

    Raises:
        IchdemoError: bad spec or folder, or a subtype missing from the training split (named in the message).
    """
    source = open_source(cfg.data, window=cfg.window, phantom_shape=cfg.phantom_shape,
                         phantom_subtypes=cfg.phantom_subtypes, phantom_paired=cfg.phantom_paired, seed=cfg.seed)
    test = [p.strip() for p in cfg.test_patients.split(",") if p.strip()]
    if resume and (out / "split.json").is_file():
        split = Split.load(out)
    else:
        per_patient = {p: np.concatenate([s.labels for s in source.select([p])]) for p in source.patients}
        split = split_patients(per_patient, cfg.val_fraction, cfg.seed, test, source=cfg.data)
    train = SliceStackDataset(source.select(split.train), cfg.input_size, cache=cfg.cache)
    val = SliceStackDataset(source.select(split.val), cfg.input_size, cache=cfg.cache)
    require_classes(train.labels, f"training split ({len(split.train)} patients)")
    if cfg.num_workers > 0:  # decode once here; forked workers share the cache
        for part in (train, val):
            part.preload(cfg.num_workers)
    if cfg.val_max_slices and len(val) > cfg.val_max_slices:
        keep = np.linspace(0, len(val) - 1, cfg.val_max_slices).round().astype(int)
        val.items = [val.items[i] for i in keep]
    return Data(source, split, train, val)


# ------------------------------------------------------------------------------------------------ provenance


def git_commit() -> str:
    """HEAD commit of the repository, with "+dirty" when the tree has changes ("unknown" outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(rt: engine.Runtime) -> dict[str, Any]:
    """Non-identifying facts about the hardware and software that trained the model."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "device": str(rt.device), "processes": rt.world_size,
            "precision": "bf16 autocast" if rt.amp else "fp32"}
    if rt.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(rt.device)
    return info


def command_for(cfg: TrainConfig) -> str:
    """A command line that reproduces ``cfg``: every option that differs from the defaults, as a flag."""
    defaults = to_dict(TrainConfig())
    args = ["python", "-m", "train.train"]
    for key, value in to_dict(cfg).items():
        if value != defaults[key]:
            text = json.dumps(value) if isinstance(value, dict) else str(value).lower() if isinstance(value, bool) \
                else str(value)
            args += [f"--{key}", text]
    return " ".join(shlex.quote(a) for a in args)


def provenance(cfg: TrainConfig, data: Data, rt: engine.Runtime, history: list[dict], seconds: float,
               command: str | None = None) -> dict:
    return {
        "command": command or command_for(cfg),
        "git_commit": git_commit(),
        "data": {"spec": cfg.data, "kind": data.source.kind, "train_patients": len(data.split.train),
                 "val_patients": len(data.split.val), "test_patients": data.split.test,
                 "train_slices": len(data.train), "val_slices": len(data.val),
                 "positives_train": dict(zip(CLASSES, data.train.labels.sum(0).astype(int).tolist()))},
        "epochs": {s.name: s.epochs for s in stages_of(cfg)},
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(rt),
        "best": history[-1].get("best") if history else None,
        "config": to_dict(cfg),
    }


def checkpoint_config(cfg: TrainConfig, data: Data, prov: dict) -> dict:
    """Entries written into config.json next to the model's own (architecture, mean/std...)."""
    from ichdemo.transforms import resolve_window

    preset = (data.source.window or cfg.window) if data.source.prewindowed else cfg.window
    centre, width = resolve_window(preset)
    return {
        "input_size": [3, cfg.input_size, cfg.input_size],
        "window": {"centre": centre, "width": width, "preset": preset},
        "preprocessing": {
            "stack": "3 consecutive slices as channels, edge slice repeated",
            "training_input": "pre-windowed 8-bit images" if data.source.prewindowed else f"HU, window {cfg.window}",
            "resize": "letterbox to input_size (area when shrinking), zero padding",
        },
        "provenance": prov,
    }


def model_card(config: dict, prov: dict, history: list[dict]) -> str:
    """README.md of the checkpoint: what it is, how it was trained, validation AUROC."""
    last = history[-1] if history else {}
    auroc = last.get("best_auroc") or {}
    rows = " | ".join(f"{auroc.get(c, float('nan')):.3f}" for c in (*CLASSES, "AVG"))
    args = config.get("model_args", {})
    return "\n".join([
        f"# {config['architecture']} over {args.get('encoder') or args.get('backbone')}",
        "", RESEARCH_NOTICE, "",
        "Weakly supervised hemorrhage subtype model (Chen and Kuo, MIDL 2026 submission), trained with "
        "`python -m train.train` of the ichdemo repository.", "",
        f"- Data: `{prov['data']['spec']}` ({prov['data']['train_slices']} training / {prov['data']['val_slices']} "
        f"validation slices, split by patient)",
        f"- Input: {config['input_size'][-1]} px, 3 stacked slices; {config['preprocessing']['training_input']}",
        f"- Epochs: {prov['epochs']}; time {prov['seconds']} s on {prov['machine']['device']} "
        f"({prov['machine']['precision']}, {prov['machine']['processes']} process(es))",
        f"- Commit: `{prov['git_commit']}`", "",
        "| " + " | ".join((*CLASSES, "AVG")) + " |", "|" + "---|" * (len(CLASSES) + 1), f"| {rows} |", "",
        "Validation AUROC of the kept epoch. Load with `ichdemo.models.load_pretrained(folder)`; calibrate with "
        "`python -m train.calibrate` before using the thresholds.", "",
    ])


# ------------------------------------------------------------------------------------------------ training


def score_of(auroc: dict[str, float]) -> float:
    """Model-selection score: mean validation AUROC over the defined subtypes (-inf when none is defined)."""
    value = auroc.get("AVG", float("nan"))
    return float(value) if np.isfinite(value) else float("-inf")


def run_stage(
    stage_idx: int, stage: Stage, cfg: TrainConfig, data: Data, rt: engine.Runtime, out: Path, state: dict | None,
    encoder_weights: Path | None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train one stage, resuming from ``state`` when it belongs to this stage; returns the kept model and history."""
    engine.seed_everything(cfg.seed + 1000 * stage_idx)
    model = engine.build_model(cfg, stage.family, encoder_weights)
    engine.init_prior(model, cfg.prior_init, cfg.input_size)
    if cfg.freeze_encoder and stage.family == "lse_unet":
        engine.freeze_encoder(model)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    _, base_lr, _ = engine.resolve_optimizer(cfg)
    if stage.name == "stage1" and cfg.stage1_lr is not None:
        base_lr = cfg.stage1_lr
    optimizer = engine.make_optimizer(cfg, model, base_lr)
    pw = compute_pos_weight(data.train.labels, cfg.pos_weight_cap) if cfg.pos_weight else None
    loss_fn = engine.make_loss(cfg, stage.family, pw, rt.device)
    start, step, best, history = 0, 0, float("-inf"), []
    if state is not None and state["stage"] == stage_idx:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, step, best, history = state["epoch"] + 1, state["step"], state["best"], state["history"]
        torch.set_rng_state(state["rng"])
    net = engine.wrap_ddp(model, rt)
    cache = engine.feature_cache(cfg, model, rt)
    train_loader = engine.make_loader(cfg, data.train, rt, train=True)
    val_loader = engine.make_loader(cfg, data.val, rt, train=False)
    best_path = out / f"best_{stage.name}.pt"
    t_stage = time.perf_counter()
    for epoch in range(start, stage.epochs):
        res, step = engine.train_epoch(net, loss_fn, train_loader, optimizer, cfg, rt, base_lr, epoch, step,
                                       cfg.seed + 1000 * stage_idx, desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
                                       cache=cache)
        record: dict[str, Any] = {"stage": stage.name, "epoch": epoch + 1, "loss": res.loss,
                                  "images": res.images * rt.world_size, "seconds": round(res.seconds, 2),
                                  "img_s": res.images * rt.world_size / max(res.seconds, 1e-9),
                                  "lr": optimizer.param_groups[0]["lr"], "terms": res.terms}
        if rt.is_main:
            auroc = engine.validate(net, val_loader, rt, cache)
            record["val_auroc"] = auroc
            if score_of(auroc) >= best or not best_path.is_file():
                best = max(best, score_of(auroc))
                torch.save(engine.unwrap(net).state_dict(), best_path)
                record["best"] = epoch + 1
            record["best_auroc"] = auroc if record.get("best") else history[-1].get("best_auroc") if history else auroc
            record.setdefault("best", history[-1].get("best") if history else epoch + 1)
            history.append(record)
            _log(record)
            engine.save_state(out / engine.STATE_FILE, {
                "stage": stage_idx, "epoch": epoch, "step": step, "best": best, "history": history,
                "model": engine.unwrap(net).state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
            })
        engine.barrier(rt)
        elapsed = time.perf_counter() - t_stage
        if cfg.stage_seconds and epoch + 1 < stage.epochs and engine.any_rank(elapsed > cfg.stage_seconds, rt):
            print(f"[{stage.name}] time limit: stopped after epoch {epoch + 1} of {stage.epochs} ({elapsed:.0f} s)",
                  file=sys.stderr, flush=True)
            if history:
                history[-1]["stopped_early"] = f"stage_seconds {cfg.stage_seconds} reached after {elapsed:.0f} s"
            break
    model = engine.unwrap(net)
    if cfg.keep == "best" and best_path.is_file():
        model.load_state_dict(torch.load(best_path, map_location=rt.device, weights_only=True))
    return model, history


def _log(record: dict) -> None:
    auroc = record.get("val_auroc", {})
    parts = " ".join(f"{k} {v:.3f}" for k, v in auroc.items())
    print(f"[{record['stage']} epoch {record['epoch']}] loss {record['loss']:.4f} {record['img_s']:.1f} img/s "
          f"val AUROC {parts}", file=sys.stderr, flush=True)


def train(cfg: TrainConfig, resume: bool = False, command: str | None = None) -> Path:
    """Run every stage and write the checkpoint folder; returns it (the same in every DDP process).

    Args:
        cfg: the resolved options.
        resume: continue from ``state.pt`` in ``cfg.out``.
        command: the command line to record in the provenance (default: one rebuilt from ``cfg``).
    """
    t0 = time.perf_counter()
    rt = engine.setup_runtime(cfg)
    out = Path(cfg.out)
    try:
        data = prepare_data(cfg, out, resume)
        state_path = out / engine.STATE_FILE
        state = engine.load_state(state_path) if resume and state_path.is_file() else None
        if resume and state is None and rt.is_main:
            print(f"no {engine.STATE_FILE} in {out}: starting from scratch", file=sys.stderr)
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, out / "train_config.yaml")
            data.split.save(out)
        engine.barrier(rt)
        history, encoder_weights, model = [], None, None
        for idx, stage in enumerate(stages_of(cfg)):
            if state is not None and state["stage"] > idx:  # stage 1 finished before the interruption
                encoder_weights = out / "stage1" / "encoder.safetensors"
                history = json.loads((out / "stage1" / "history.json").read_text())
                continue
            model, stage_history = run_stage(idx, stage, cfg, data, rt, out, state, encoder_weights)
            history += stage_history
            if stage.name == "stage1" and rt.is_main:
                _save_stage1(model, cfg, data, rt, out, history, time.perf_counter() - t0)
            engine.barrier(rt)
            encoder_weights = out / "stage1" / "encoder.safetensors" if stage.name == "stage1" else encoder_weights
        if rt.is_main:
            prov = provenance(cfg, data, rt, history, time.perf_counter() - t0, command)
            config = checkpoint_config(cfg, data, prov)
            save_pretrained(model, out, config, dtype=cfg.save_dtype)
            saved = json.loads((out / "config.json").read_text())
            (out / "README.md").write_text(model_card(saved, prov, history))
            (out / "history.json").write_text(json.dumps(history, indent=2))
        engine.barrier(rt)
        return out
    finally:
        engine.teardown(rt)


def _save_stage1(model, cfg: TrainConfig, data: Data, rt: engine.Runtime, out: Path, history: list[dict],
                 seconds: float) -> None:
    """The stage-1 classifier as its own gap checkpoint, plus its backbone in timm keys for stage 2."""
    folder = out / "stage1"
    prov = provenance(cfg, data, rt, history, seconds)
    save_pretrained(model, folder, checkpoint_config(cfg, data, prov), dtype=cfg.save_dtype)
    engine.save_encoder_weights(model, folder / "encoder.safetensors")
    (folder / "history.json").write_text(json.dumps(history, indent=2))
    data.split.save(folder)  # calibrate/evaluate of the stage-1 gap checkpoint need the same held-out patients


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.train", description=__doc__.splitlines()[0],
                                epilog="Every option can also be set in the YAML file; flags win.")
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from state.pt in --out (last finished epoch)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        argv = sys.argv[1:] if argv is None else argv
        out = train(cfg, resume=args.resume, command=" ".join(shlex.quote(a) for a in
                                                              ["python", "-m", "train.train", *argv]))
    except (IchdemoError, ConfigError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

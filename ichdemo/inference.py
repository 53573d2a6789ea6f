"""A model ready for inference, and the one loop that runs a network over batches of model input.

``run_network`` is the only place where batches meet the network: the pipeline (app, CLI, batch annotate, API), the
Teach tab and training-time calibration and evaluation (``ichdemo.evaluation``) all go through it, so slice
probabilities and heatmaps are computed the same way wherever they are used.

Example:
    >>> lm = load_model("lse_unet_lite0_blood")
    >>> out = lm.run(x)            # x: (S, 3, size, size) windowed to [0, 1]
    >>> out.probs.shape, out.native.shape
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ichdemo import hub
from ichdemo.atomic import atomic_path
from ichdemo.cam import heatmaps
from ichdemo.errors import ConfigError
from ichdemo.models.checkpoint import load_pretrained
from ichdemo.models.config import ModelConfig
from ichdemo.models.registry import normalize_input
from ichdemo.quantify import Thresholds

Batches = Iterable[np.ndarray | torch.Tensor]
SliceProgress = Callable[[int], None]
"""Called with the number of images done so far, after every batch."""


@dataclass
class NetworkOutput:
    """What the network said about a stack of images.

    Attributes:
        probs: (N, 5) float32 slice probabilities.
        native: (N, 5, h, w) float32 raw heatmaps (>= 0) at the method's own grid, or None when not asked for.
        pixel_logits: lse_unet only, when asked for: (N, 5, h, w) signed per-pixel logits (``CamResult``).
    """

    probs: np.ndarray
    native: np.ndarray | None = None
    pixel_logits: np.ndarray | None = None


def run_network(
    model: nn.Module,
    batches: Batches,
    *,
    maps: bool = True,
    method: str = "auto",
    device: str | torch.device = "cpu",
    onnx: Any = None,
    pixel_logits: bool = False,
    progress: SliceProgress | None = None,
) -> NetworkOutput:
    """Run ``model`` over batches (B, 3, H, W) of input windowed to [0, 1]; normalisation happens here.

    Args:
        model: an eval-mode model from ``ichdemo.models`` (its ``ich_cfg`` holds mean and std).
        batches: arrays or tensors, any batch size.
        maps: compute heatmaps (``ichdemo.cam.heatmaps``); False gives probabilities only (no backward pass).
        method: heatmap method ("auto": Grad-CAM for gap, the LSE map for lse_unet).
        device: where to run.
        onnx: an ``ichdemo.onnx_model.OnnxModel`` that replaces the torch model for method "auto".
        pixel_logits: also keep the signed pixel logits of an lse_unet (the Teach tab's LSE-r view).
        progress: called with the number of images done after every batch.
    """
    probs, native, signed, done = [], [], [], 0
    for batch in batches:
        x = normalize_input(torch.as_tensor(batch).float().to(device), model.ich_cfg)
        done += x.shape[0]
        if onnx is not None and method == "auto":
            out = onnx.run(x.cpu().numpy())
            probs.append(1.0 / (1.0 + np.exp(-out["logits"])))
            native.append(out["heatmap"])
        elif maps:
            res = heatmaps(model, x, method=method)
            probs.append(res.probs.detach().float().cpu().numpy())
            native.append(res.raw.detach().float().cpu().numpy())
            if pixel_logits and res.pixel_logits is not None:
                signed.append(res.pixel_logits.detach().float().cpu().numpy())
        else:
            with torch.no_grad():
                probs.append(torch.sigmoid(model(x).logits.float()).cpu().numpy())
        if progress:
            progress(done)
    if not probs:
        raise ConfigError("run_network was given no images")
    return NetworkOutput(
        np.concatenate(probs).astype(np.float32),
        np.concatenate(native).astype(np.float32) if native else None,
        np.concatenate(signed) if signed else None,
    )


def chunks(x: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """Consecutive batches of ``batch_size`` along the first axis."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    return (x[s : s + batch_size] for s in range(0, x.shape[0], batch_size))


@dataclass
class LoadedModel:
    """A model ready for inference, with its typed config and where it came from."""

    model: nn.Module
    cfg: ModelConfig
    ref: hub.ModelRef
    device: torch.device
    weights_sha256: str = ""
    onnx: Any = None  # an ichdemo.onnx_model.OnnxModel when loaded with runtime="onnx"

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def thresholds(self) -> Thresholds:
        """The calibrated thresholds stored in config.json (defaults where the model was never calibrated)."""
        return self.cfg.thresholds

    def run(
        self, x: np.ndarray, batch_size: int = 4, method: str = "auto", progress: SliceProgress | None = None, **kw
    ) -> NetworkOutput:
        """``run_network`` over (S, 3, size, size) input in batches of ``batch_size``."""
        return run_network(self.model, chunks(x, batch_size), method=method, device=self.device, onnx=self.onnx,
                           progress=progress, **kw)

    def describe(self) -> dict[str, Any]:
        """Plain facts for reports, the `models` command and the UI."""
        return {
            "name": self.name,
            "origin": self.ref.origin,
            "architecture": self.cfg.architecture,
            "family": self.cfg.family,
            "version": self.cfg.version,
            "weights_sha256": self.weights_sha256[:16],
            "input_size": self.cfg.input_size,
            "heatmap_size": self.cfg.heatmap_size,
            "trained": self.cfg.trained,
            "runtime": "onnx" if self.onnx is not None else "torch",
        }


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("model*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def load_model(ref: str | Path, device: str | torch.device | None = None, runtime: str = "torch") -> LoadedModel:
    """Resolve a model reference (bundled name, folder, hf://owner/repo@rev) and load it for inference.

    Args:
        ref: the model reference.
        device: torch device (default: CUDA when available).
        runtime: "torch", or "onnx" to run on ONNX Runtime (the folder's model.onnx, else an export cached under
            ~/.cache/ichdemo/onnx).

    Raises:
        ModelError: the reference cannot be resolved or the checkpoint cannot be built.
    """
    if runtime not in ("torch", "onnx"):
        raise ConfigError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
    found = hub.resolve(ref)
    dev = torch.device(device) if device is not None else _default_device()
    model, config = load_pretrained(found.folder, map_location=dev)
    lm = LoadedModel(model.eval(), ModelConfig.from_dict(config), found, dev, _weights_digest(found.folder))
    if runtime == "onnx":
        from ichdemo.onnx_model import OnnxModel

        lm.onnx = OnnxModel(_onnx_file(lm), threads=torch.get_num_threads())
    return lm


def _onnx_file(lm: LoadedModel) -> Path:
    """The checkpoint's own model.onnx, else an export of it cached by weights digest, model arguments (the
    heatmap's ``map_floor`` among them) and input size."""
    from ichdemo.onnx_model import export_onnx

    own = lm.ref.folder / "model.onnx"
    if own.is_file():
        return own
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ichdemo" / "onnx"
    args = hashlib.sha256(json.dumps(lm.cfg.model_args, sort_keys=True).encode()).hexdigest()
    path = cache / f"{lm.weights_sha256[:16]}_{args[:8]}_{lm.cfg.input_size}.onnx"
    if not path.is_file():
        with atomic_path(path, suffix=".onnx") as tmp:
            export_onnx(lm.model.cpu(), tmp, lm.cfg.input_size)
            lm.model.to(lm.device)
    return path

"""Run a model over a ``Volume``: slice probabilities, heatmaps on the source grid, label maps, volumes, outputs.

The split between ``analyze`` (network, once per series) and ``Analysis.labels`` (thresholds, any number of times)
is what lets the app re-threshold a cached series on every slider move without running the network again.

Example:
    >>> lm = load_model("lse_unet_lite0")
    >>> vol = load_volume("series.zip")
    >>> analysis = analyze(lm, vol)
    >>> labels = analysis.labels()                      # (S, H, W) uint8 with the model's calibrated thresholds
    >>> write_outputs(analysis, vol, "out/", name="series")
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ichdemo import __version__, hub
from ichdemo.atomic import atomic_path, write_bytes, write_text
from ichdemo.cam import heatmaps
from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.errors import ConfigError
from ichdemo.models.checkpoint import load_pretrained
from ichdemo.models.registry import normalize_input
from ichdemo.quantify import Thresholds, abc2_ml, algorithm1, scale_heatmaps, volumes_ml
from ichdemo.transforms import ResizeSpec, prepare
from ichdemo.volume import Volume


SOURCE_NAME = "source.json"


@dataclass
class LoadedModel:
    """A model ready for inference, with its config and where it came from."""

    model: nn.Module
    config: dict[str, Any]
    ref: hub.ModelRef
    device: torch.device
    weights_sha256: str = ""
    onnx: Any = None  # an ichdemo.onnx_model.OnnxModel when loaded with runtime="onnx"

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def family(self) -> str:
        return self.config.get("family", getattr(self.model, "family", "gap"))

    @property
    def input_size(self) -> int:
        return int(self.config.get("input_size", [3, 512, 512])[-1])

    @property
    def window(self) -> tuple[float, float]:
        w = self.config.get("window") or {}
        return float(w.get("centre", 25.0)), float(w.get("width", 130.0))

    @property
    def thresholds(self) -> Thresholds:
        """The calibrated thresholds stored in config.json (defaults where the model was never calibrated)."""
        return Thresholds.from_config(self.config.get("thresholds"))

    @property
    def heatmap_size(self) -> int:
        """Native side of the heatmap in pixels: input/4 for lse_unet, the last feature map for Grad-CAM."""
        return heatmap_size(self.config)

    def describe(self) -> dict[str, Any]:
        """Plain facts for reports, the `models` command and the UI."""
        return {
            "name": self.name,
            "origin": self.ref.origin,
            "architecture": self.config.get("architecture"),
            "family": self.family,
            "version": self.config.get("version", "unversioned"),
            "weights_sha256": self.weights_sha256[:16],
            "input_size": self.input_size,
            "heatmap_size": self.heatmap_size,
            "trained": bool(self.config.get("provenance")),
            "runtime": "onnx" if self.onnx is not None else "torch",
        }


def heatmap_size(config: dict[str, Any]) -> int:
    """Native heatmap side of a checkpoint config: input size / heatmap_stride (4 for lse_unet, else 32)."""
    family = config.get("family", config.get("architecture", "gap"))
    size = int((config.get("input_size") or [3, 512, 512])[-1])
    return max(1, size // int(config.get("heatmap_stride", 4 if family == "lse_unet" else 32)))


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
    lm = LoadedModel(model.eval(), config, found, dev, _weights_digest(found.folder))
    if runtime == "onnx":
        from ichdemo.onnx_model import OnnxModel

        lm.onnx = OnnxModel(_onnx_file(lm), threads=torch.get_num_threads())
    return lm


def _onnx_file(lm: LoadedModel) -> Path:
    """The checkpoint's own model.onnx, else an export of it cached by weights digest and input size."""
    from ichdemo.onnx_model import export_onnx

    own = lm.ref.folder / "model.onnx"
    if own.is_file():
        return own
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ichdemo" / "onnx"
    path = cache / f"{lm.weights_sha256[:16]}_{lm.input_size}.onnx"
    if not path.is_file():
        with atomic_path(path, suffix=".onnx") as tmp:
            export_onnx(lm.model.cpu(), tmp, lm.input_size)
            lm.model.to(lm.device)
    return path


@dataclass
class Analysis:
    """What the network said about one series; thresholds are applied on demand.

    Attributes:
        model: name of the model that produced it.
        probs: (S, 5) slice probabilities.
        maps255: (S, 5, H, W) uint8 heatmaps on the source grid, scaled to 0..255 (the model's scale mode).
        native: (S, 5, h, w) float16 raw heatmaps at the model's native resolution (before any rescaling).
        spacing: (slice, row, col) mm of the source grid.
        thresholds: the model's calibrated thresholds (the default for ``labels``).
        model_info: ``LoadedModel.describe()``.
    """

    model: str
    probs: np.ndarray
    maps255: np.ndarray
    native: np.ndarray
    spacing: tuple[float, float, float]
    thresholds: Thresholds
    model_info: dict[str, Any] = field(default_factory=dict)

    def labels(self, thresholds: Thresholds | None = None) -> np.ndarray:
        """(S, H, W) uint8 label map by Algorithm 1 (0 normal, k = CLASSES[k-1]); cheap, no network."""
        t = thresholds or self.thresholds
        return algorithm1(self.probs, self.maps255, t.class_thresholds, t.mask_thresholds)

    def report(self, labels: np.ndarray, thresholds: Thresholds | None = None, volume: Volume | None = None) -> dict:
        """JSON-ready report: per-slice probabilities, thresholds, volumes (mL) and ABC/2, model and notice."""
        t = thresholds or self.thresholds
        rep = {
            "notice": RESEARCH_NOTICE,
            "ichdemo_version": __version__,
            "model": self.model_info,
            "thresholds": t.to_dict(),
            "classes": list(CLASSES),
            "spacing_mm": list(self.spacing),
            "volumes_ml": volumes_ml(labels, self.spacing),
            "abc2_ml": abc2_ml(labels, self.spacing),
            "slices": [
                {"index": i, "probabilities": {c: round(float(p), 5) for c, p in zip(CLASSES, row)},
                 "present": [c for c, p, thr in zip(CLASSES, row, t.class_thresholds) if p > thr]}
                for i, row in enumerate(self.probs)
            ],
        }
        if volume is not None:
            rep["input"] = volume.summary()
        return rep


def _run_batches(lm: LoadedModel, x: np.ndarray, batch_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Network over (S, 3, size, size) in batches -> probs (S, 5) float32, native maps (S, 5, h, w) float32."""
    probs, maps = [], []
    for s0 in range(0, x.shape[0], batch_size):
        xt = normalize_input(torch.from_numpy(x[s0 : s0 + batch_size]).to(lm.device), lm.model.ich_cfg)
        if lm.onnx is not None and method == "auto":
            out = lm.onnx.run(xt.cpu().numpy())
            probs.append(1.0 / (1.0 + np.exp(-out["logits"])))
            maps.append(out["heatmap"])
            continue
        res = heatmaps(lm.model, xt, method=method)
        probs.append(res.probs.detach().float().cpu().numpy())
        maps.append(res.raw.detach().float().cpu().numpy())
    return np.concatenate(probs), np.concatenate(maps)


def analyze(lm: LoadedModel, vol: Volume, *, batch_size: int = 4, method: str = "auto") -> Analysis:
    """Run the network once over every slice of ``vol`` (3-slice stacks) and cache heatmaps on the source grid.

    Args:
        lm: from ``load_model``.
        vol: from ``ichdemo.io.load_volume``.
        batch_size: slices per forward pass.
        method: heatmap method for ``ichdemo.cam.heatmaps`` ("auto": Grad-CAM for gap, the f0 map for lse_unet).
    """
    x, spec = prepare(vol.data, vol.prewindowed, lm.input_size, lm.window)
    probs, native = _run_batches(lm, x, batch_size, method)
    t = lm.thresholds
    maps255 = to_source_grid(scale_heatmaps(native, t.scale_mode, t.scale), spec)
    return Analysis(lm.name, probs, maps255, native.astype(np.float16), vol.spacing, t, lm.describe())


def to_source_grid(maps: np.ndarray, spec: ResizeSpec) -> np.ndarray:
    """(S, 5, h, w) 0..255 maps on the model grid -> (S, 5, rows, cols) uint8 on the source grid (bilinear)."""
    out = np.empty(maps.shape[:2] + (spec.rows, spec.cols), np.uint8)
    for s in range(maps.shape[0]):  # slice by slice keeps the float temporaries small
        np.clip(np.ceil(spec.to_source(maps[s])), 0, 255, out=out[s], casting="unsafe")
    return out


def write_outputs(
    analysis: Analysis,
    vol: Volume,
    out_dir: str | Path,
    thresholds: Thresholds | None = None,
    source_paths: list[str] | None = None,
) -> dict[str, Path]:
    """Write labels.nii.gz (source grid), heatmaps.npz (float16 per subtype), report.json and, for image input,
    labels/<stem>.png. Every file is written atomically.

    Args:
        source_paths: where the input came from, written to a local sidecar ``source.json`` (not into the report,
            since folder names may carry patient names) so that `ichdemo export PRED_DIR` can re-read the source
            geometry (e.g. DICOM UIDs for DICOM SEG).

    Returns:
        {"labels": ..., "heatmaps": ..., "report": ..., "label_pngs": folder (image input only)}.
    """
    import nibabel as nib

    from ichdemo.io.nifti import to_source_grid as nifti_to_source

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = analysis.labels(thresholds)
    img = nifti_to_source(labels, vol) if vol.nifti_header else nib.Nifti1Image(
        np.ascontiguousarray(labels.transpose(2, 1, 0)), vol.affine)
    img.set_data_dtype(np.uint8)
    paths = {"labels": out / "labels.nii.gz", "heatmaps": out / "heatmaps.npz", "report": out / "report.json"}
    with atomic_path(paths["labels"], suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{c: analysis.maps255[:, k].astype(np.float16) for k, c in enumerate(CLASSES)},
                        probs=analysis.probs)
    write_bytes(paths["heatmaps"], buf.getvalue())
    write_text(paths["report"], json.dumps(analysis.report(labels, thresholds, vol), indent=2) + "\n")
    if source_paths:
        paths["source"] = write_text(out / SOURCE_NAME, json.dumps({
            "note": "local only: where predict read its input (for `ichdemo export`); may name the patient, do not share",
            "paths": [str(Path(p).resolve()) for p in source_paths],
        }, indent=2) + "\n")
    if vol.source == "image":
        paths["label_pngs"] = _write_label_pngs(labels, vol, out / "labels")
    return paths


def _write_label_pngs(labels: np.ndarray, vol: Volume, folder: Path) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    names = vol.slice_names or [f"{i:04d}" for i in range(labels.shape[0])]
    for name, lab in zip(names, labels):
        ok, png = cv2.imencode(".png", lab)
        write_bytes(folder / f"{Path(name).stem}.png", png.tobytes())
    return folder

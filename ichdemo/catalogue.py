"""The models a process serves: described from their config.json at start-up, each loaded once on first use.

``ModelInfo`` is what a model picker needs before any weights are read (``ichdemo.models.config.ModelConfig``);
``ModelPool`` holds the configured references (``ichdemo.hub.configured_refs``: ICHDEMO_MODELS,
ICHDEMO_MODELS_FILE or the bundled checkpoints) and loads each model at most once per process (thread-safe).

Example:
    >>> pool = ModelPool(["/ckpt/lse", "/ckpt/gap"])
    >>> analyses = run_models(pool, pool.default_selection(), volume)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ichdemo import hub
from ichdemo.errors import IchdemoError, ModelError
from ichdemo.models.config import ModelConfig
from ichdemo.volume import Volume

UNTRAINED = "UNTRAINED — heatmaps are meaningless"
QUALITY_FILE = "quality.json"  # a checkpoint's held-out figures (train.evaluate_drafts --quality)
NO_MODEL_HELP = (
    "No trained model is available. Add one: put a checkpoint folder (config.json + model.safetensors) under "
    "checkpoints/, or start the app with ICHDEMO_MODELS=/path/to/folder,hf://owner/repo (or --models). "
    "You can still load and browse a series."
)
Progress = Callable[[float, str], None]
"""Called with (fraction done, what is running)."""


@dataclass(frozen=True)
class ModelInfo:
    """A configured model before its weights are read: its reference, name and config."""

    ref: str
    name: str
    cfg: ModelConfig
    quality: dict = field(default_factory=dict)
    """The held-out figures of ``quality.json`` (``train.evaluate_drafts --quality``) and the validation AUROC of
    ``eval.json``, where the checkpoint has them."""

    @property
    def family(self) -> str:
        return self.cfg.family

    @property
    def trained(self) -> bool:
        return self.cfg.trained

    @property
    def label(self) -> str:
        """Choice label: name, family, native heatmap grid, the held-out Dice of its drafts when measured, and the
        UNTRAINED warning when it applies."""
        n = self.cfg.heatmap_size
        text = f"{self.name} · {self.family} · heatmap {n}x{n}"
        dice = self.quality.get("ctich_held_out", {}).get("dice_any") or {}
        if dice.get("refined") is not None:
            text += f" · held-out Dice {dice['refined']:.2f}"
        return text if self.trained else f"{text} · {UNTRAINED}"


def read_model_info(ref: str) -> ModelInfo:
    """Describe a model reference from its config.json (no weights are read).

    Raises:
        ModelError: the reference cannot be resolved or its config.json is unreadable.
    """
    found = hub.resolve(ref)
    return ModelInfo(str(ref), found.name, ModelConfig.read(found.folder), read_quality(Path(found.folder)))


def read_quality(folder: Path) -> dict:
    """``quality.json`` of a checkpoint folder, with ``auroc_validation`` from its ``eval.json``; {} when absent
    or unreadable (a model without measurements is still usable)."""
    out: dict = {}
    for name in (QUALITY_FILE, "eval.json"):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if name == QUALITY_FILE and isinstance(data, dict):
            out.update(data)
        elif isinstance(data, dict) and data.get("auroc_part") == "val":
            out["auroc_validation"] = (data.get("auroc") or {}).get("AVG")
    return out


class ModelPool:
    """The app's models: described at start-up, each loaded once per process on first use.

    Args:
        refs: model references; default ``ichdemo.hub.configured_refs()``.
        device: torch device; default CUDA when available.
    """

    def __init__(self, refs: Sequence[str] | None = None, device: Any = None) -> None:
        self.errors: dict[str, str] = {}
        if refs is None:
            try:
                refs = hub.configured_refs()
            except IchdemoError as err:
                self.errors["configuration"] = str(err)
                refs = []
        self.infos: dict[str, ModelInfo] = {}
        for ref in refs:
            try:
                self.infos[str(ref)] = read_model_info(str(ref))
            except IchdemoError as err:
                self.errors[str(ref)] = str(err)
        self.device = device
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def refs(self) -> list[str]:
        """The usable references, in configuration order."""
        return list(self.infos)

    def choices(self) -> list[tuple[str, str]]:
        """(label, ref) pairs for a model picker."""
        return [(info.label, ref) for ref, info in self.infos.items()]

    def default_lse(self) -> str | None:
        """The bundled default when it is configured and an lse_unet, else the first lse_unet, else None."""
        lse = self.find("lse_unet")
        try:
            preferred = hub.default_model()
        except IchdemoError:
            preferred = None
        return preferred if preferred in lse else (lse[0] if lse else None)

    def default_selection(self, n_gap: int = 2) -> list[str]:
        """The default comparison: the default lse_unet and the first ``n_gap`` gap models."""
        first = self.default_lse()
        chosen = ([first] if first else []) + self.find("gap")[:n_gap]
        return chosen or self.refs[:3]

    def find(self, family: str, hloss: bool | None = None) -> list[str]:
        """References of a family (and, for lse_unet, trained with or without HLoss when ``hloss`` is given)."""
        return [r for r, i in self.infos.items() if i.family == family and (hloss is None or i.cfg.hloss is hloss)]

    def get(self, ref: str):
        """The loaded model (``ichdemo.inference.LoadedModel``) for ``ref``, loading it on first use.

        Raises:
            ModelError: unknown reference or a checkpoint that cannot be built.
        """
        from ichdemo.inference import load_model

        if ref not in self.infos:
            why = self.errors.get(ref)
            raise ModelError(f"model {ref!r} is not available" + (f": {why}" if why else ""))
        with self._lock:
            if ref not in self._models:
                self._models[ref] = load_model(ref, self.device)
            return self._models[ref]

    def by_name(self, items: str | Sequence[str] | None) -> list[str]:
        """References for model names or references, from a comma-separated string or a list.

        Raises:
            ModelError: a name that matches no configured model.
        """
        names = [t.strip() for t in (items.split(",") if isinstance(items, str) else (items or [])) if str(t).strip()]
        known = {i.name: r for r, i in self.infos.items()}
        out = []
        for item in names:
            ref = item if item in self.infos else known.get(item)
            if ref is None:
                raise ModelError(f"unknown model {item!r}; available: {', '.join(known) or 'none configured'}")
            out.append(ref)
        return out


def run_models(pool: ModelPool, refs: Sequence[str], volume: Volume, progress: Progress | None = None) -> dict:
    """``ichdemo.pipeline.analyze`` of each model over ``volume``: {ref: Analysis}, with progress in slices."""
    from ichdemo.pipeline import analyze

    out, total = {}, max(1, len(refs) * volume.shape[0])
    for n, ref in enumerate(refs):
        name = pool.infos[ref].name if ref in pool.infos else ref

        def step(done: int, slices: int, n: int = n, name: str = name) -> None:
            progress((n * slices + done) / total, f"{name}: slice {done} of {slices}")

        out[ref] = analyze(pool.get(ref), volume, progress=step if progress else None)
    return out

"""What the app keeps: a process-wide ``ModelPool`` and one ``Session`` per user (series, cached heatmaps, files).

The app (app.py) only turns the plain data returned here into UI components; every callback's logic lives in
these methods, so it is tested without a browser (tests/app/test_session.py).

* ``ModelPool``: the configured model references (``ichdemo.hub.configured_refs``), described from their
  config.json without loading weights, and each model loaded at most once per process (thread-safe).
* ``Session``: the loaded ``Volume``, one ``Analysis`` per model (the network runs once per series and model),
  the thresholds the user set per model, label maps cached per thresholds (a slider move re-runs Algorithm 1 on
  the cached heatmaps, never the network), and a private temp folder (unguessable name, mode 0700) removed by
  ``cleanup``.
* ``PhantomExamples``: seeded synthetic series written as DICOM on first use, for one-click examples.
* ``explain_slice``: the Teach tab (Grad-CAM at its native grid, the LSE-UNet map, the effect of LSE r, HLoss,
  Algorithm 1 step by step) on one slice.

Example:
    >>> pool = ModelPool(["/ckpt/lse", "/ckpt/gap"])
    >>> s = Session()
    >>> s.load_files(["series.zip"])
    >>> s.analyze(pool, pool.default_selection())
    >>> rgb = s.overlay(pool.default_selection()[0], index=10, window="brain")
    >>> s.cleanup()
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichdemo import __version__, hub, viz
from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.errors import ConfigError, IchdemoError, ModelError, UnsupportedInputError
from ichdemo.quantify import Thresholds, abc2_ml, algorithm1, scale_heatmaps, volumes_ml
from ichdemo.transforms import ResizeSpec
from ichdemo.volume import Volume

log = logging.getLogger(__name__)
UNTRAINED = "UNTRAINED — heatmaps are meaningless"
NO_MODEL_HELP = (
    "No trained model is available. Add one: put a checkpoint folder (config.json + model.safetensors) under "
    "checkpoints/, or start the app with ICHDEMO_MODELS=/path/to/folder,hf://owner/repo (or --models). "
    "You can still load and browse a series."
)
KEEP_DRAFTS = 2  # export zips kept per session: the app runs at most two requests of one event at once
Progress = Callable[[float, str], None]
Runner = Callable[..., dict]


# --------------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelInfo:
    """What the UI needs to know about a model before loading its weights (from config.json)."""

    ref: str
    name: str
    family: str
    trained: bool
    input_size: int
    heatmap_size: int
    lse_r: float | None = None
    hloss: bool | None = None
    version: str = "unversioned"

    @property
    def label(self) -> str:
        """Choice label: name, family, native heatmap grid, and the UNTRAINED warning when it applies."""
        text = f"{self.name} · {self.family} · heatmap {self.heatmap_size}x{self.heatmap_size}"
        return text if self.trained else f"{text} · {UNTRAINED}"


def read_model_info(ref: str) -> ModelInfo:
    """Describe a model reference from its config.json (no weights are read).

    The heatmap side is ``ichdemo.predict.heatmap_size`` of the config, as for a loaded model.

    Raises:
        ModelError: the reference cannot be resolved or its config.json is unreadable.
    """
    from ichdemo.predict import heatmap_size

    found = hub.resolve(ref)
    try:
        cfg = json.loads((found.folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{ref}: config.json is not readable JSON ({err})") from err
    family = str(cfg.get("family", cfg.get("architecture", "gap")))
    size = int((cfg.get("input_size") or [3, 512, 512])[-1])
    prov = cfg.get("provenance") or {}
    train_cfg = prov.get("config") if isinstance(prov, dict) else None
    hloss = train_cfg.get("hloss") if isinstance(train_cfg, dict) and family == "lse_unet" else None
    lse_r = (cfg.get("model_args") or {}).get("lse_r", 3.0) if family == "lse_unet" else None
    return ModelInfo(
        str(ref),
        found.name,
        family,
        bool(prov),
        size,
        heatmap_size(cfg),
        None if lse_r is None else float(lse_r),
        None if hloss is None else bool(hloss),
        str(cfg.get("version", "unversioned")),
    )


class ModelPool:
    """The app's models: described at start-up, each loaded once per process on first use.

    Args:
        refs: model references; default ``ichdemo.hub.configured_refs()`` (ICHDEMO_MODELS, ICHDEMO_MODELS_FILE or
            the bundled checkpoints).
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

    def default_selection(self, n_gap: int = 2) -> list[str]:
        """The default comparison: the default lse_unet (else the first one) and the first ``n_gap`` gap models."""
        lse = [r for r, i in self.infos.items() if i.family == "lse_unet"]
        gap = [r for r, i in self.infos.items() if i.family == "gap"]
        try:
            preferred = hub.default_model()
        except IchdemoError:
            preferred = None
        first = [preferred] if preferred in lse else lse[:1]
        chosen = first + gap[:n_gap]
        return chosen or self.refs[:3]

    def find(self, family: str, hloss: bool | None = None) -> list[str]:
        """References of a family (and, for lse_unet, trained with or without HLoss when ``hloss`` is given)."""
        return [r for r, i in self.infos.items() if i.family == family and (hloss is None or i.hloss is hloss)]

    def get(self, ref: str):
        """The loaded model (``ichdemo.predict.LoadedModel``) for ``ref``, loading it on first use.

        Raises:
            ModelError: unknown reference or a checkpoint that cannot be built.
        """
        from ichdemo.predict import load_model

        if ref not in self.infos:
            why = self.errors.get(ref)
            raise ModelError(f"model {ref!r} is not available" + (f": {why}" if why else ""))
        with self._lock:
            if ref not in self._models:
                self._models[ref] = load_model(ref, self.device)
            return self._models[ref]

    def status_markdown(self) -> str:
        """One paragraph for the UI: the models, untrained ones flagged, or how to add a model."""
        if not self.infos:
            lines = [f"**{NO_MODEL_HELP}**"]
        else:
            lines = [
                f"- `{i.name}` ({i.family}, input {i.input_size} px, native heatmap {i.heatmap_size}x"
                f"{i.heatmap_size})" + ("" if i.trained else f" — **{UNTRAINED}**")
                for i in self.infos.values()
            ]
        lines += [f"- could not use `{ref}`: {msg}" for ref, msg in self.errors.items()]
        return "\n".join(lines)


def run_models(pool: ModelPool, refs: Sequence[str], volume: Volume, progress: Progress | None = None) -> dict:
    """``ichdemo.predict.analyze`` of each model over ``volume``: {ref: Analysis}. Pure function of its inputs."""
    from ichdemo.predict import analyze

    out = {}
    for n, ref in enumerate(refs):
        if progress:
            progress(n / max(1, len(refs)), f"running {pool.infos[ref].name if ref in pool.infos else ref}")
        out[ref] = analyze(pool.get(ref), volume)
    return out


# --------------------------------------------------------------------------------------------------- phantoms
PHANTOM_EXAMPLES: dict[str, tuple[str, ...]] = {
    "Normal": (),
    "IPH": ("IPH",),
    "IVH": ("IVH",),
    "SAH": ("SAH",),
    "SDH": ("SDH",),
    "EDH": ("EDH",),
    "IPH + IVH": ("IPH", "IVH"),
}
"""One-click synthetic examples: button label -> subtypes."""
PHANTOM_SEED = 7


class PhantomExamples:
    """Synthetic series for the example buttons, generated on first use and written once as DICOM.

    Args:
        root: where to write them (default: a new temp folder).
        shape: phantom grid (slices, rows, cols).
        seed: generator seed (the same for every example, so the heads differ only by their lesions).
    """

    def __init__(self, root: str | Path | None = None, shape: Sequence[int] | None = None, seed: int = PHANTOM_SEED):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="ichdemo-phantoms-"))
        self.shape = tuple(shape) if shape else None
        self.seed = seed
        self._locks = {name: threading.Lock() for name in PHANTOM_EXAMPLES}

    def files(self, name: str) -> list[Path]:
        """The DICOM files of example ``name`` (a key of ``PHANTOM_EXAMPLES``), writing them if needed."""
        from ichdemo.phantom import DEFAULT_SHAPE, generate_phantom, write_phantom

        if name not in PHANTOM_EXAMPLES:
            raise ConfigError(f"unknown phantom example {name!r}; choose one of {', '.join(PHANTOM_EXAMPLES)}")
        folder = self.root / name.replace(" ", "").replace("+", "-")
        with self._locks[name]:
            if not (folder / "truth.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                p = generate_phantom(self.seed, PHANTOM_EXAMPLES[name], shape=self.shape or DEFAULT_SHAPE)
                write_phantom(p, folder, "dicom")
        return sorted((folder / "series").iterdir())

    def truth(self, name: str) -> dict:
        """The ground truth record (true volumes in mL...) of an example already written."""
        self.files(name)
        return json.loads((self.root / name.replace(" ", "").replace("+", "-") / "truth.json").read_text())

    def warm(self) -> threading.Thread:
        """Write every example in a background thread (start-up), so the first click is instant."""

        def run() -> None:
            for name in PHANTOM_EXAMPLES:
                try:
                    self.files(name)
                except Exception as err:  # noqa: BLE001 - a failed warm-up is retried, and reported, on the click
                    log.warning("phantom example %s not pre-generated: %s", name, err)

        t = threading.Thread(target=run, name="ichdemo-phantoms", daemon=True)
        t.start()
        return t

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- session
@dataclass
class ResultsView:
    """Everything the results panel shows for one model: curves, volume table, legend."""

    figure: Any
    rows: list[list]
    legend: str
    volumes_ml: dict[str, float]
    abc2_ml: dict[str, float]


@dataclass
class Session:
    """One user's loaded series and what the models said about it.

    Attributes:
        volume: the loaded series, or None.
        analyses: ``Analysis`` per model reference (network output, cached for the series).
        thresholds: the thresholds in force per model reference (calibrated until the user moves a slider).
        base_dir: parent of the session's temp folder (default: the system temp folder).
    """

    volume: Volume | None = None
    analyses: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Thresholds] = field(default_factory=dict)
    base_dir: str | None = None
    _labels: dict[str, tuple[Thresholds, np.ndarray]] = field(default_factory=dict, repr=False)
    _memo: dict[tuple, Any] = field(default_factory=dict, repr=False)  # series-wide numbers per thresholds
    _folder: Path | None = field(default=None, repr=False)
    _drafts: list[Path] = field(default_factory=list, repr=False)  # export zips in the folder, oldest first

    # ------------------------------------------------------------------ files
    @property
    def folder(self) -> Path:
        """The session's private temp folder (created on first use, mode 0700, 128-bit random name)."""
        if self._folder is None or not self._folder.is_dir():
            base = self.base_dir or tempfile.gettempdir()
            self._folder = Path(tempfile.mkdtemp(prefix=f"ichdemo-session-{secrets.token_hex(16)}-", dir=base))
        return self._folder

    def cleanup(self) -> None:
        """Remove the temp folder and drop the arrays (session end)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._drafts.clear()
        self.volume = None
        self.analyses.clear()
        self.thresholds.clear()
        self._labels.clear()
        self._memo.clear()

    # ------------------------------------------------------------------ input
    def load_files(self, paths: str | Path | Sequence[str | Path]) -> Volume:
        """Load an upload (files, a .zip, a NIfTI, images) and forget the previous series' results.

        Raises:
            IchdemoError: the typed input errors of ``ichdemo.io.load_volume``.
        """
        from ichdemo.io import load_volume

        if not paths:
            raise UnsupportedInputError("empty upload: choose DICOM files, a .zip, a NIfTI or PNG/JPG images")
        return self.set_volume(load_volume(paths))

    def set_volume(self, volume: Volume) -> Volume:
        """Make ``volume`` the session's series (drops every cached analysis)."""
        self.volume = volume
        self.analyses.clear()
        self.thresholds.clear()
        self._labels.clear()
        self._memo.clear()
        return volume

    def require_volume(self) -> Volume:
        if self.volume is None:
            raise UnsupportedInputError("no series loaded: upload files or click an example first")
        return self.volume

    def info_markdown(self) -> str:
        """Series facts and warnings for the UI."""
        if self.volume is None:
            return "No series loaded yet."
        s = self.volume.summary()
        sp = " x ".join(f"{v:g}" for v in s["spacing_mm"])
        lines = [
            f"**{s['description'] or s['source']}**",
            f"- {s['slices']} slice(s) of {s['cols']} x {s['rows']} px; spacing {sp} mm (slice x row x col)"
            + (" — **assumed** (the input carries none): volumes are estimates" if s["spacing_assumed"] else ""),
            f"- values: {s['values']}" + (" (window presets do not apply)" if self.volume.prewindowed else ""),
        ]
        lines += [f"- ⚠ {w}" for w in s["warnings"]]
        return "\n".join(lines)

    def clamp_index(self, index: Any) -> int:
        vol = self.require_volume()
        try:
            i = round(float(index))
        except (TypeError, ValueError):
            i = vol.shape[0] // 2
        return int(np.clip(i, 0, vol.shape[0] - 1))

    # ------------------------------------------------------------------ network
    def missing(self, refs: Sequence[str]) -> list[str]:
        """The references of ``refs`` not yet run on this series."""
        return [r for r in refs if r not in self.analyses]

    def analyze(
        self, pool: ModelPool, refs: Sequence[str], progress: Progress | None = None, runner: Runner | None = None
    ) -> list[str]:
        """Run every model of ``refs`` not yet cached over the series (the only place the network runs).

        Args:
            runner: replaces ``run_models`` (the app passes one wrapped for ZeroGPU); same signature.

        Returns:
            The references that were run now.

        Raises:
            UnsupportedInputError: no series loaded, or no model chosen.
            ModelError: a reference that cannot be loaded.
        """
        vol = self.require_volume()
        if not refs:
            raise UnsupportedInputError("choose at least one model" if pool.refs else NO_MODEL_HELP)
        todo = self.missing(refs)
        if todo:
            for ref, analysis in (runner or run_models)(pool, todo, vol, progress).items():
                self.analyses[ref] = analysis
                self.thresholds.setdefault(ref, analysis.thresholds)
        return todo

    def require_analysis(self, ref: str):
        if ref not in self.analyses:
            raise UnsupportedInputError(f"model {ref!r} has not been run on this series: press Analyze")
        return self.analyses[ref]

    # ------------------------------------------------------------------ thresholds
    def set_thresholds(
        self, ref: str, class_thresholds: Sequence[float], mask_thresholds: Sequence[float]
    ) -> Thresholds:
        """Set a model's thresholds (validated; the heatmap scale stays the model's). No network."""
        a = self.require_analysis(ref)
        t = self.thresholds.get(ref, a.thresholds).replace(
            class_thresholds=list(class_thresholds), mask_thresholds=list(mask_thresholds)
        )
        self.thresholds[ref] = t
        return t

    def reset_thresholds(self, ref: str) -> Thresholds:
        """Back to the model's calibrated thresholds."""
        self.thresholds[ref] = self.require_analysis(ref).thresholds
        return self.thresholds[ref]

    def labels(self, ref: str) -> np.ndarray:
        """(S, H, W) label map of a model under its current thresholds (cached until they change)."""
        a = self.require_analysis(ref)
        t = self.thresholds.get(ref, a.thresholds)
        cached = self._labels.get(ref)
        if cached is None or cached[0] != t:
            self._labels[ref] = (t, a.labels(t))
        return self._labels[ref][1]

    # ------------------------------------------------------------------ views
    def base_rgb(self, index: int, window: str = "paper") -> np.ndarray:
        vol = self.require_volume()
        return viz.slice_rgb(vol.data[self.clamp_index(index)], vol.prewindowed, window)

    def overlay(self, ref: str | None, index: int, window: str = "paper", opacity: float = 0.45) -> np.ndarray:
        """The slice with a model's subtype mask (just the slice when ``ref`` is None or not run yet)."""
        i = self.clamp_index(index)
        base = self.base_rgb(i, window)
        if not ref or ref not in self.analyses:
            return base
        return viz.label_overlay(base, self.labels(ref)[i], opacity)

    def heatmap_panels(
        self, refs: Sequence[str], index: int, window: str = "paper", opacity: float = 0.5, native: bool = False
    ) -> list[tuple[np.ndarray, str]]:
        """One picture per (model, subtype) for the slice: the heatmap over the slice, captioned with the slice
        probability against the class threshold and the native heatmap grid.

        Args:
            native: draw the map at its native grid (nearest neighbour) instead of the smooth upsampled map that
                Algorithm 1 thresholds.
        """
        i = self.clamp_index(index)
        base = self.base_rgb(i, window)
        out = []
        for ref in refs:
            if ref not in self.analyses:
                continue
            a = self.analyses[ref]
            t = self.thresholds.get(ref, a.thresholds)
            maps = self.native_on_source(ref, i) if native else a.maps255[i]
            n = a.native.shape[-1]
            for k, c in enumerate(CLASSES):
                p = float(a.probs[i, k])
                mark = "present" if p > t.class_thresholds[k] else "absent"
                cap = f"{c}: p={p:.2f} ({mark}, c={t.class_thresholds[k]:.2f}) · {a.model} · native {n}x{n}"
                out.append((viz.heatmap_overlay(base, maps[k], opacity), cap))
        return out

    def heatmap_legend(self, refs: Sequence[str]) -> str:
        """Markdown naming the rows of ``heatmap_panels`` (one row of five subtypes per model run)."""
        vol = self.require_volume()
        run = [r for r in refs if r in self.analyses]
        if not run:
            return "Run at least one model to see its heatmaps."
        rows = []
        for n, (name, ref) in enumerate(zip(self.display_names(run), run), 1):
            h = self.analyses[ref].native.shape[-1]
            rows.append(f"{n}. `{name}`: native heatmap {h}x{h}, shown on the {vol.shape[2]}x{vol.shape[1]} slice")
        return "Rows, top to bottom (columns: " + ", ".join(CLASSES) + "):\n\n" + "\n".join(rows)

    def native_on_source(self, ref: str, index: int) -> np.ndarray:
        """(5, H, W) uint8: slice ``index``'s native heatmaps scaled like ``maps255`` and drawn on the source grid
        with nearest neighbour, so each native cell shows as a block (16x16 Grad-CAM vs 128x128 LSE)."""
        a = self.require_analysis(ref)
        vol = self.require_volume()
        t = self.thresholds.get(ref, a.thresholds)
        m = scale_heatmaps(a.native[index : index + 1].astype(np.float32), t.scale_mode, t.scale, dtype=np.uint8)[0]
        spec = ResizeSpec(vol.shape[1], vol.shape[2], int(a.model_info.get("input_size", m.shape[-1])))
        return spec.to_source(m, nearest=True).astype(np.uint8)

    def agreement(self, refs: Sequence[str], index: int, window: str = "paper") -> tuple[np.ndarray, list[list]]:
        """Agreement picture of the slice and pairwise agreement rows over the series (needs 2 models run)."""
        run = [r for r in refs if r in self.analyses]
        i = self.clamp_index(index)
        base = self.base_rgb(i, window)
        if len(run) < 2:
            return base, []
        labs = {name: self.labels(r) for name, r in zip(self.display_names(run), run)}
        codes = viz.agreement_codes([lab[i] for lab in labs.values()])
        key = ("agreement", *((r, self.thresholds.get(r)) for r in run))
        return viz.agreement_overlay(base, codes), self._remember(key, lambda: viz.agreement_rows(labs))

    def _remember(self, key: tuple, compute: Callable[[], Any], limit: int = 64) -> Any:
        """Series-wide numbers (volumes, agreement) computed once per thresholds, not on every slice move."""
        if key not in self._memo:
            if len(self._memo) >= limit:
                self._memo.clear()
            self._memo[key] = compute()
        return self._memo[key]

    def display_names(self, refs: Sequence[str]) -> list[str]:
        """Model names for tables, the reference itself where two models share a name."""
        names = [self.analyses[r].model if r in self.analyses else r for r in refs]
        return [n if names.count(n) == 1 else r for n, r in zip(names, refs)]

    def results(self, ref: str, index: int | None = None) -> ResultsView:
        """Curves, volume table and legend of a model under its current thresholds."""
        a = self.require_analysis(ref)
        vol = self.require_volume()
        lab = self.labels(ref)
        t = self.thresholds.get(ref, a.thresholds)

        def compute() -> tuple:
            ml, abc = volumes_ml(lab, vol.spacing), abc2_ml(lab, vol.spacing)
            return ml, abc, viz.volume_rows(ml, abc, lab), [c for c in CLASSES if ml[c] > 0]

        ml, abc, rows, present = self._remember(("volumes", ref, t), compute)
        title = f"{a.model}: slice probabilities (dashed: class thresholds)"
        fig = viz.probability_figure(
            a.probs, t.class_thresholds, None if index is None else self.clamp_index(index), title
        )
        return ResultsView(fig, rows, viz.legend_html(ml, present), ml, abc)

    def mesh(self, ref: str):
        """3D figure of a model's masks (with the head outline) for a series."""
        vol = self.require_volume()
        lab = self.labels(ref)
        head = vol.data > (20 if vol.prewindowed else -300)
        return viz.mesh_figure(lab, vol.spacing, head=head)

    def report(self, ref: str) -> dict:
        """The JSON report of a model under its current thresholds (``Analysis.report``)."""
        a = self.require_analysis(ref)
        return a.report(self.labels(ref), self.thresholds.get(ref, a.thresholds), self.require_volume())

    # ------------------------------------------------------------------ export
    def export(self, ref: str, formats: Sequence[str] = ()) -> tuple[Path, dict[str, str]]:
        """A zip of draft masks for annotators, stamped with model, version, thresholds and the research notice.

        Always holds ``prediction/`` (labels.nii.gz on the source grid, heatmaps.npz, report.json) and DRAFT.txt;
        plus ``formats/`` with the requested formats of ``ichdemo.export`` (its export.json lists them).

        The zip is written into the session folder, which keeps only the ``KEEP_DRAFTS`` newest ones (an older
        draft is removed when a new one is made), so that exporting in a loop does not fill the disk.

        Returns:
            (the zip, {format: why it was skipped} for requested formats this input cannot have).
        """
        from ichdemo.predict import write_outputs

        a, vol = self.require_analysis(ref), self.require_volume()
        t = self.thresholds.get(ref, a.thresholds)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        work = self.folder / f"export-{stamp}-{secrets.token_hex(4)}"
        write_outputs(a, vol, work / "prediction", thresholds=t)
        done, skipped = export_formats_into(self.labels(ref), vol, list(formats), work / "formats", a.model_info, t)
        (work / "DRAFT.txt").write_text(draft_stamp(a.model_info, t, done, skipped))
        zpath = self.folder / f"ichdemo-draft-{_safe(a.model)}-{stamp}.zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(work.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(work).as_posix())
        shutil.rmtree(work, ignore_errors=True)
        if zpath not in self._drafts:  # a second export in the same second rewrites the same name
            self._drafts.append(zpath)
        while len(self._drafts) > KEEP_DRAFTS:  # older drafts were served (copied away) already
            self._drafts.pop(0).unlink(missing_ok=True)
        return zpath, skipped


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:60] or "model"


def available_export_formats() -> list[tuple[str, str]]:
    """(label, name) of the formats ``ichdemo.export`` offers (empty when that module is not installed)."""
    try:
        from ichdemo.export import FORMATS
    except ImportError:
        return []
    return [(f"{name}: {fmt.description}", name) for name, fmt in FORMATS.items()]


def export_formats_into(
    labels: np.ndarray, volume: Volume, formats: list[str], out: Path, model_info: dict, t: Thresholds
) -> tuple[list[str], dict[str, str]]:
    """Write ``formats`` with ``ichdemo.export.export``; formats the input cannot have are skipped, not fatal.

    Returns:
        (formats written, {format: why it was skipped}).

    Raises:
        ConfigError: a format was asked for but the export module is not there, or an unknown format.
    """
    if not formats:
        return [], {}
    try:
        from ichdemo.export import MANIFEST, export
    except ImportError as err:
        raise ConfigError("export formats are not available in this installation (ichdemo.export missing)") from err
    written = export(labels, volume, formats, out, model_info=model_info, thresholds=t, skip_unsupported=True)
    manifest = out / MANIFEST
    skipped = json.loads(manifest.read_text()).get("skipped", {}) if manifest.is_file() else {}
    return list(written), dict(skipped)


def draft_stamp(model_info: dict, t: Thresholds, formats: Sequence[str], skipped: dict[str, str] | None = None) -> str:
    """The text of DRAFT.txt: what produced these masks and that they are drafts."""
    return "\n".join(
        [
            "DRAFT MASKS FOR ANNOTATION - NOT REVIEWED",
            RESEARCH_NOTICE,
            "",
            f"ichdemo version: {__version__}",
            f"created: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
            (
                f"model: {model_info.get('name')} ({model_info.get('family')}, version {model_info.get('version')}, "
                f"weights sha256 {model_info.get('weights_sha256')}, trained: {model_info.get('trained')})"
            ),
            f"class thresholds ({','.join(CLASSES)}): {', '.join(f'{v:g}' for v in t.class_thresholds)}",
            f"mask thresholds ({','.join(CLASSES)}): {', '.join(f'{v:g}' for v in t.mask_thresholds)}",
            f"heatmap scale: {t.scale_mode}",
            "label values: 0 normal, " + ", ".join(f"{k + 1} {c}" for k, c in enumerate(CLASSES)),
            "formats: prediction/ (labels.nii.gz, heatmaps.npz, report.json)"
            + (f", formats/ ({', '.join(formats)})" if formats else ""),
            *[f"skipped {k}: {v}" for k, v in (skipped or {}).items()],
            "",
        ]
    )


# --------------------------------------------------------------------------------------------------- API
class ScratchFolders:
    """Private temp folders for stateless API calls, removed once older than ``max_age_s`` (checked on each new one)
    and at ``cleanup``: the web framework copies the returned files away, so they need not live long."""

    def __init__(self, max_age_s: float = 600.0, base_dir: str | None = None) -> None:
        self.max_age_s = max_age_s
        self.base_dir = base_dir
        self._made: list[tuple[float, Path]] = []
        self._lock = threading.Lock()

    def new(self) -> Path:
        """A fresh folder (mode 0700, 128-bit random name); older ones past their age are removed first."""
        self.sweep()
        folder = Path(tempfile.mkdtemp(prefix=f"ichdemo-api-{secrets.token_hex(16)}-", dir=self.base_dir))
        with self._lock:
            self._made.append((time.monotonic(), folder))
        return folder

    def sweep(self, max_age_s: float | None = None) -> int:
        """Remove folders older than ``max_age_s`` (default the instance's); returns how many were removed."""
        limit = self.max_age_s if max_age_s is None else max_age_s
        now = time.monotonic()
        with self._lock:
            old = [f for t, f in self._made if now - t >= limit]
            self._made = [(t, f) for t, f in self._made if now - t < limit]
        for f in old:
            shutil.rmtree(f, ignore_errors=True)
        return len(old)

    def cleanup(self) -> None:
        self.sweep(0.0)


def predict_files(
    pool: ModelPool, paths: Sequence[str | Path], refs: Sequence[str], out_dir: str | Path
) -> tuple[dict, list[Path]]:
    """Stateless prediction for scripts: load, run each model, write outputs. Returns (report, label map files).

    The report is ``{"notice", "ichdemo_version", "models": {name: Analysis.report}}``; one
    ``<model>_labels.nii.gz`` per model, in ``refs`` order.
    """
    from ichdemo.predict import write_outputs

    s = Session(base_dir=str(out_dir))
    vol = s.load_files(paths)
    refs = list(refs) or pool.default_selection()[:1]
    s.analyze(pool, refs)
    out, files, reports = Path(out_dir), [], {}
    for ref in refs:
        a = s.analyses[ref]
        written = write_outputs(a, vol, out / _safe(a.model))
        dest = out / f"{_safe(a.model)}_labels.nii.gz"
        shutil.move(written["labels"], dest)
        files.append(dest)
        reports[a.model] = json.loads(written["report"].read_text())
    s.cleanup()
    return {"notice": RESEARCH_NOTICE, "ichdemo_version": __version__, "models": reports}, files


def parse_model_list(text: str | Sequence[str] | None, pool: ModelPool) -> list[str]:
    """Model names or references from a comma-separated string or a list; names match a model's ``name``.

    Raises:
        ModelError: a name that matches no configured model.
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else (text or [])) if str(t).strip()]
    by_name = {i.name: r for r, i in pool.infos.items()}
    out = []
    for item in items:
        ref = item if item in pool.infos else by_name.get(item)
        if ref is None:
            names = ", ".join(by_name) or "none configured"
            raise ModelError(f"unknown model {item!r}; available: {names}")
        out.append(ref)
    return out


# --------------------------------------------------------------------------------------------------- teach
@dataclass
class TeachView:
    """The Teach tab for one slice and subtype: pictures with captions and a short account in markdown."""

    maps: list[tuple[np.ndarray, str]]
    r_maps: list[tuple[np.ndarray, str]]
    r_figure: Any
    hloss: list[tuple[np.ndarray, str]]
    steps: list[tuple[np.ndarray, str]]
    notes: str


def _slice_input(lm, vol: Volume, index: int):
    """(1, 3, size, size) normalised tensor of slice ``index`` (its neighbours as channels) and the geometry."""
    import torch

    from ichdemo.models.registry import normalize_input
    from ichdemo.transforms import prepare

    lo, hi = max(0, index - 1), min(vol.shape[0], index + 2)
    x, spec = prepare(vol.data[lo:hi], vol.prewindowed, lm.input_size, lm.window)
    xt = torch.from_numpy(x[index - lo : index - lo + 1]).to(lm.device)
    return normalize_input(xt, lm.model.ich_cfg), spec


def _run_one(lm, vol: Volume, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, ResizeSpec]:
    """One slice: (5,) probabilities, (5, h, w) native heatmaps (>= 0; Grad-CAM for gap, ReLU of the pixel logits
    for lse_unet), the signed f_0 (lse_unet; None for gap) and the resize spec."""
    import torch

    from ichdemo.cam import gradcam, lse_result

    x, spec = _slice_input(lm, vol, index)
    f0 = None
    if lm.family == "lse_unet":
        with torch.no_grad():
            out = lm.model(x)
        res = lse_result(lm.model, out, tuple(x.shape[-2:]))
        f0 = out.maps[0][0].float().cpu().numpy()
    else:
        res = gradcam(lm.model, x)
    return res.probs[0].detach().float().cpu().numpy(), res.raw[0].detach().float().cpu().numpy(), f0, spec


def _to255(m: np.ndarray) -> np.ndarray:
    m = np.fmax(np.asarray(m, np.float32), 0)
    peak = float(m.max())
    return np.zeros_like(m) if peak <= 0 else np.ceil(m / peak * 255.0)


def _on_source(spec: ResizeSpec, m: np.ndarray, nearest: bool) -> np.ndarray:
    return np.clip(spec.to_source(np.asarray(m, np.float32), nearest=nearest), 0, 255)


def explain_slice(
    pool: ModelPool,
    volume: Volume,
    index: int,
    cls: str,
    gap_ref: str | None,
    lse_ref: str | None,
    r_values: Sequence[float] = (0.3, 3.0, 30.0),
    thresholds: Thresholds | None = None,
    window: str = "paper",
) -> TeachView:
    """Everything the Teach tab shows for one slice and subtype.

    Args:
        pool: the models.
        volume: the series; ``index`` its slice.
        cls: subtype (one of CLASSES) to explain.
        gap_ref / lse_ref: a Grad-CAM baseline and an LSE-UNet (either may be None).
        r_values: LSE sharpness values whose pixel weights softmax(r f_0) are drawn.
        thresholds: Algorithm 1 thresholds for the LSE-UNet (default: its calibrated ones).
        window: display window.
    """
    if cls not in CLASSES:
        raise ConfigError(f"unknown subtype {cls!r}; choose one of {', '.join(CLASSES)}")
    if not gap_ref and not lse_ref:
        raise UnsupportedInputError("the Teach tab needs a gap (Grad-CAM) model or an lse_unet model")
    k = CLASSES.index(cls)
    index = int(np.clip(index, 0, volume.shape[0] - 1))
    base = viz.slice_rgb(volume.data[index], volume.prewindowed, window)
    maps, notes = [(base, f"slice {index}")], []
    r_maps, r_fig, hl, steps = [], None, [], []
    if gap_ref:
        lm = pool.get(gap_ref)
        p, raw, _, spec = _run_one(lm, volume, index)
        n = raw.shape[-1]
        m255 = _to255(raw[k])
        maps.append(
            (
                viz.heatmap_overlay(base, _on_source(spec, m255, True), 0.6),
                f"Grad-CAM native {n}x{n} cells, p={p[k]:.2f} ({lm.name})",
            )
        )
        maps.append(
            (
                viz.heatmap_overlay(base, _on_source(spec, m255, False), 0.6),
                "Grad-CAM upsampled (bilinear) to the slice",
            )
        )
        notes.append(
            f"**Grad-CAM ({lm.name})**: {n}x{n} native map; each cell covers "
            f"{lm.input_size // n} x {lm.input_size // n} model pixels."
        )
    if lse_ref:
        lm = pool.get(lse_ref)
        p, heat, f0, spec = _run_one(lm, volume, index)
        n = heat.shape[-1]
        model_r = float(lm.model.lse_r)
        maps.append(
            (
                viz.heatmap_overlay(base, _on_source(spec, _to255(heat[k]), True), 0.6),
                f"LSE-UNet map native {n}x{n}, p={p[k]:.2f} ({lm.name})",
            )
        )
        r_maps, r_fig = _r_effect(base, spec, f0[k], r_values, model_r, getattr(lm.model, "lse_mean", True), cls)
        steps = _algorithm1_steps(base, spec, p, heat, thresholds or lm.thresholds)
        hl = _hloss_pair(pool, volume, index, k, base)
        notes.append(
            f"**LSE-UNet ({lm.name})**: heatmap f0 at {n}x{n}, r = {model_r:g}; "
            f"p({cls}) = sigmoid(LSE_r(f0)) = {p[k]:.3f}."
        )
    info = pool.infos.get(lse_ref or gap_ref)
    if info is not None and not info.trained:
        notes.append(f"⚠ {UNTRAINED}: these pictures only show the mechanics.")
    return TeachView(maps, r_maps, r_fig, hl, steps, "\n\n".join(notes))


def _r_effect(base, spec, f: np.ndarray, r_values, model_r: float, mean: bool, cls: str):
    """Weight maps softmax(r f) for a few r, captioned with how concentrated they are, and the pooling curve."""
    out = []
    top = max(1, round(f.size * 0.01))
    for r in r_values:
        w = viz.lse_weights(f, r)
        share = float(np.sort(w.ravel())[::-1][:top].sum())
        out.append(
            (
                viz.heatmap_overlay(base, _on_source(spec, _to255(w), True), 0.6),
                f"r={r:g}: top 1% of cells hold {share:.0%}",
            )
        )
    return out, viz.lse_curve_figure(f, model_r, mean, cls)


def _algorithm1_steps(base, spec, probs: np.ndarray, heat: np.ndarray, t: Thresholds) -> list[tuple[np.ndarray, str]]:
    """Algorithm 1 on one slice: per subtype the gate and the thresholded map, then the argmax label map."""
    m255 = scale_heatmaps(heat[None], t.scale_mode, t.scale, dtype=np.uint8)[0]
    src = np.stack([_on_source(spec, m, False) for m in m255]).astype(np.uint8)  # (5, H, W)
    labels = algorithm1(probs, src, t.class_thresholds, t.mask_thresholds)
    out = []
    for k, c in enumerate(CLASSES):
        gate = probs[k] > t.class_thresholds[k]
        above = src[k] > t.mask_thresholds[k]
        lab = np.where(above & gate, k + 1, 0).astype(np.uint8)
        cap = (
            f"{c}: {int((above & gate).sum())} px (p={probs[k]:.2f} > c, map > m={t.mask_thresholds[k]:g})"
            if gate
            else f"{c}: gated off (p={probs[k]:.2f} <= c={t.class_thresholds[k]:.2f})"
        )
        out.append((viz.label_overlay(base, lab, 0.5), cap))
    out.append((viz.label_overlay(base, labels, 0.5), "label map: argmax over normal + 5 subtypes"))
    return out


def _hloss_pair(pool: ModelPool, volume: Volume, index: int, k: int, base) -> list[tuple[np.ndarray, str]]:
    """The subtype's f0 from an LSE-UNet trained with HLoss and one trained without, when both are configured."""
    with_h, without = pool.find("lse_unet", hloss=True), pool.find("lse_unet", hloss=False)
    if not with_h or not without:
        return []
    out = []
    for ref, what in ((with_h[0], "with HLoss"), (without[0], "without HLoss")):
        lm = pool.get(ref)
        p, heat, _, spec = _run_one(lm, volume, index)
        out.append(
            (viz.heatmap_overlay(base, _on_source(spec, _to255(heat[k]), True), 0.6),
             f"{what}: {lm.name} (p={p[k]:.2f})")
        )
    return out

"""One user's series in the app: the loaded ``Volume``, one ``Analysis`` per model, the thresholds in force, and
the pictures and numbers the viewer shows, all as plain data (the app turns them into components).

The network runs once per series and model (``ichdemo.catalogue.run_models``, the pipeline's ``analyze``); a
threshold change re-runs Algorithm 1 on the cached heatmaps only. Files the session writes (draft zips) live in a
private temp folder (unguessable name, mode 0700) removed by ``cleanup``.

Example:
    >>> pool = ModelPool(["/ckpt/lse", "/ckpt/gap"])
    >>> s = Session()
    >>> s.load_files(["series.zip"])
    >>> s.analyze(pool, pool.default_selection())
    >>> rgb = s.overlay(pool.default_selection()[0], index=10, window="brain")
    >>> s.cleanup()
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichdemo import viz
from ichdemo.catalogue import NO_MODEL_HELP, ModelPool, Progress, run_models
from ichdemo.constants import CLASSES, WINDOWS
from ichdemo.edits import Edits
from ichdemo.errors import UnsupportedInputError
from ichdemo.export.images import safe_name
from ichdemo.metrics import binary_dice
from ichdemo.pipeline import Analysis, analyze, implausible_volumes, maps_on_grid
from ichdemo.quantify import Thresholds, abc2_ml, volumes_ml
from ichdemo.review import ReviewStore
from ichdemo.transforms import ResizeSpec
from ichdemo.volume import Volume

log = logging.getLogger(__name__)
KEEP_DRAFTS = 2  # export zips kept per session: the app runs at most two requests of one event at once
KEEP_PICTURES = 64  # viewer pictures kept per session folder (the app's file cache holds the copies it serves)
STRIP_TILE = 256  # side of one subtype's heatmap in a model's strip (px)
PICTURE_QUALITY = 95  # JPEG quality of the viewer's pictures
Runner = Callable[..., dict]


@dataclass
class ResultsView:
    """The results panel's numbers for one model (its curves: ``Session.curves``): volume table, volumes, the
    subtypes present and warnings about implausible volumes."""

    rows: list[list]
    volumes_ml: dict[str, float]
    abc2_ml: dict[str, float]
    present: list[str]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Session:
    """One user's loaded series and what the models said about it.

    Attributes:
        volume: the loaded series, or None.
        analyses: ``Analysis`` per model reference (network output, cached for the series).
        thresholds: the thresholds in force per model reference (calibrated until the user moves a slider).
        refined: drafts refined with the CT's densities (``ichdemo.refine``); False shows the paper's raw
            Algorithm 1.
        base_dir: parent of the session's temp folder (default: the system temp folder).
        uploaded: the uploaded files the series was read from, by fingerprint (the app's upload box).
        refused: fingerprints of uploaded files that could not be read (left out of the next upload).
        truth: (S, H, W) uint8 known truth of the series (an example's), or None; subtype labels when
            ``truth_subtypes``, else 0/1 any hemorrhage. ``truth_source`` says whose it is.
        fresh: "loaded", "replaced" (the series is not all the upload box holds) or "cleared" until the viewer has
            been reset for the new series; "" after.
    """

    volume: Volume | None = None
    analyses: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Thresholds] = field(default_factory=dict)
    refined: bool = True
    base_dir: str | None = None
    uploaded: dict[str, str] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    truth: np.ndarray | None = field(default=None, repr=False)
    truth_subtypes: bool = False
    truth_source: str = ""
    index: int = 0  # the slice the viewer shows
    results_ref: str | None = None  # the model whose draft the viewer shows
    edits: Edits | None = None  # a person's corrections of the results model's draft (``ichdemo.edits``)
    review: tuple[ReviewStore, str] | None = None  # where this browser's review is kept (``ichdemo.review``)
    source: dict[str, Any] = field(default_factory=dict)  # how the series was read, for ``ReviewStore.save``
    source_files: list[str] = field(default_factory=list)  # the files it was read from
    fresh: str = ""
    _labels: dict[tuple[str, bool], tuple[Thresholds, np.ndarray]] = field(default_factory=dict, repr=False)
    _memo: dict[tuple, Any] = field(default_factory=dict, repr=False)  # series-wide numbers per thresholds
    _slices: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)  # the last grey slices drawn
    _folder: Path | None = field(default=None, repr=False)
    _drafts: list[Path] = field(default_factory=list, repr=False)  # export zips in the folder, oldest first
    _pictures: list[Path] = field(default_factory=list, repr=False)  # viewer pictures in the folder, oldest first

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
        self._pictures.clear()
        self.uploaded = {}
        self.truth = self.edits = None
        self.source, self.source_files = {}, []
        self.volume = None
        self.analyses.clear()
        self.thresholds.clear()
        self._labels.clear()
        self._memo.clear()
        self._slices.clear()

    def picture(self, rgb: np.ndarray) -> Path:
        """An (H, W, 3) RGB picture as a JPEG (quality ``PICTURE_QUALITY``) in the session folder, named by its
        content, for a viewer to serve; the newest ``KEEP_PICTURES`` files are kept.

        JPEG, not PNG: encoding a 650 px PNG takes 15 ms against 1 ms, and a slice step redraws six pictures.
        The viewer is for looking; exports carry the exact labels.
        """
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, PICTURE_QUALITY])
        if not ok:
            raise ValueError("could not encode the picture")
        folder = self.folder / "view"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.blake2b(buf, digest_size=12).hexdigest()}.jpg"
        if path in self._pictures:
            self._pictures.remove(path)
        if not path.exists():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(buf.tobytes())
            tmp.replace(path)  # atomic: a reader never sees half a picture
        self._pictures.append(path)
        while len(self._pictures) > KEEP_PICTURES:
            self._pictures.pop(0).unlink(missing_ok=True)
        return path

    # ------------------------------------------------------------------ input
    def load_files(
        self, paths: str | Path | Sequence[str | Path], image_window: str | None = None, spacing=None
    ) -> Volume:
        """Load an upload (files, a .zip, a NIfTI, images) and forget the previous series' results.

        Args:
            image_window / spacing: for PNG/JPG, how the grey levels were made and the voxel spacing
                (``ichdemo.io.load_volume``; None: estimated).

        Raises:
            IchdemoError: the typed input errors of ``ichdemo.io.load_volume``.
        """
        from ichdemo.io import load_volume

        if not paths:
            raise UnsupportedInputError("empty upload: choose DICOM files, a .zip, a NIfTI or PNG/JPG images")
        return self.set_volume(load_volume(paths, image_window=image_window, spacing=spacing))

    def set_volume(self, volume: Volume) -> Volume:
        """Make ``volume`` the session's series (drops every cached analysis)."""
        self.volume = volume
        self.truth, self.truth_source, self.edits = None, "", None
        self.analyses.clear()
        self.thresholds.clear()
        self._labels.clear()
        self._memo.clear()
        self._slices.clear()
        return volume

    def require_volume(self) -> Volume:
        if self.volume is None:
            raise UnsupportedInputError("no series loaded: upload files or click an example first")
        return self.volume

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
                any(analysis.share_anatomy(a) for a in self.analyses.values())  # one intracranial mask per series
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

    def labels(self, ref: str, refined: bool | None = None) -> np.ndarray:
        """(S, H, W) label map of a model under its current thresholds, refined per ``self.refined`` unless
        ``refined`` says otherwise (cached until the thresholds change)."""
        a = self.require_analysis(ref)
        t = self.thresholds.get(ref, a.thresholds)
        key = (ref, self.refined if refined is None else refined)
        cached = self._labels.get(key)
        if cached is None or cached[0] != t:
            self._labels[key] = (t, a.labels(t, key[1]))
        return self._labels[key][1]

    def shown_labels(self, ref: str) -> np.ndarray:
        """(S, H, W) labels of the draft as shown and exported: the model's (``labels``) with a person's edited
        slices in place."""
        lab = self.labels(ref)
        return self.edits.apply(lab) if self.edits is not None and self.edits.slices else lab

    def shown_slice(self, ref: str, index: int) -> np.ndarray:
        """(H, W) labels of slice ``index`` of the draft as shown: a person's edit of it, else the model's."""
        lab = self.labels(ref)
        return self.edits.current(index, lab) if self.edits is not None else lab[index]

    def edit(self, ref: str, action: str, index: int, subtype: str = "", mask: np.ndarray | None = None,
             row: int = -1, col: int = -1) -> int:
        """A person's correction of ``ref``'s draft (the one shown: refined or raw), kept on disk in the session
        folder. ``action``: "paint" / "erase" / "fill" (``mask``: (H, W) bool; paint and fill take ``subtype``),
        "remove" (the region under ``row``, ``col``), "clear", "accept", "no-hemorrhage", "revert", "undo",
        "redo". Returns the slice changed (undo/redo: the slice they changed; -1: nothing to change).

        Raises:
            UnsupportedInputError: an unknown action, subtype or slice, or a mask of another size.
        """
        vol = self.require_volume()
        draft = self.labels(ref)
        ed = self.edits if self.edits is not None else Edits(tuple(vol.shape))
        i = self.clamp_index(index)
        if action in ("paint", "erase", "fill") and mask is None:
            raise UnsupportedInputError(f"{action} needs a mask image of the slice's size")
        steps = {
            "paint": lambda: ed.paint(i, mask, subtype, draft),
            "erase": lambda: ed.erase(i, mask, draft),
            "fill": lambda: ed.fill(i, mask, subtype, draft),
            "remove": lambda: ed.remove_region(i, int(row), int(col), draft),
            "clear": lambda: ed.clear_slice(i),
            "accept": lambda: ed.accept(i),
            "no-hemorrhage": lambda: ed.no_hemorrhage(i),
            "revert": lambda: ed.revert(i),
            "undo": ed.undo,
            "redo": ed.redo,
        }
        if action not in steps:
            raise UnsupportedInputError(f"unknown edit {action!r}; choose one of {', '.join(steps)}")
        out = steps[action]()  # undo/redo: the slice they changed or None; remove: False where nothing was there
        self.edits = ed
        self._keep(ed, i)
        if action in ("undo", "redo"):
            return -1 if out is None else out
        return -1 if out is False else i

    def _keep(self, ed: Edits, index: int) -> None:
        """Save the edits: to the browser's review (``ichdemo.review``) when the app gave one, else to the session
        folder. A review that cannot be written (the uploaded files already swept away) keeps them in the folder."""
        if self.review is not None:
            store, key = self.review
            try:
                store.save(key, {**self.source, "index": index, "results_ref": self.results_ref}, self.source_files, ed)
                return
            except OSError as err:
                log.warning("review not kept across reloads: %s", err)
        ed.save(self.folder / "edits")

    def forget_review(self) -> None:
        """Drop this browser's kept review (a new series or a cleared one replaces it)."""
        if self.review is not None:
            self.review[0].drop(self.review[1])

    # ------------------------------------------------------------------ views
    def base_rgb(self, index: int, window: str = "paper") -> np.ndarray:
        """The slice in grey under a display window: a preset of ``WINDOWS`` or "centre/width" in HU."""
        vol = self.require_volume()
        key = (self.clamp_index(index), display_window(window))
        if key not in self._slices:  # the overlays, strips and agreement of one view share one grey slice
            while len(self._slices) >= 4:
                self._slices.pop(next(iter(self._slices)))
            self._slices[key] = viz.slice_rgb(vol.data[key[0]], vol.prewindowed, key[1])
        return self._slices[key]

    def overlay(
        self, ref: str | None, index: int, window: str = "paper", opacity: float = 0.45, refined: bool | None = None
    ) -> np.ndarray:
        """The slice with a model's subtype mask (just the slice when ``ref`` is None or not run yet); ``refined``
        as in ``labels``."""
        i = self.clamp_index(index)
        base = self.base_rgb(i, window)
        if not ref or ref not in self.analyses:
            return base
        shown = self.shown_slice(ref, i) if refined is None else self.labels(ref, refined)[i]
        return viz.label_overlay(base, shown, opacity)

    def truth_view(self, ref: str | None, index: int, window: str = "paper", opacity: float = 0.45):
        """(picture of the known truth on the slice, any-hemorrhage Dice of ``ref``'s draft against it on this
        slice: None where both are empty), or None when the series has no known truth."""
        if self.truth is None:
            return None
        i = self.clamp_index(index)
        pic = viz.truth_overlay(self.base_rgb(i, window), self.truth[i], self.truth_subtypes, opacity)
        if not ref or ref not in self.analyses:
            return pic, None
        d = binary_dice(self.shown_slice(ref, i), self.truth[i], empty=np.nan)
        return pic, None if np.isnan(d) else d

    def heatmap_strips(
        self, refs: Sequence[str], index: int, window: str = "paper", opacity: float = 0.5, native: bool = False
    ) -> list[tuple[np.ndarray, str]]:
        """One picture per model run: the slice's five subtype heatmaps side by side (``STRIP_TILE`` px each, the
        subtype and its probability written on each), captioned with the model, its family and native grid and
        every probability.

        Args:
            native: draw the map at its native grid (nearest neighbour) instead of the smooth upsampled map that
                Algorithm 1 thresholds.
        """
        i = self.clamp_index(index)
        out = []
        for name, ref in zip(self.display_names(refs), refs):
            if ref in self.analyses:
                a = self.analyses[ref]
                grid = self.thresholds.get(ref, a.thresholds) if native else None
                out.append(self._strip(name, a, i, i, window, opacity, grid))
        return out

    def first_look(
        self, pool: ModelPool, ref: str, index: int, window: str = "paper", opacity: float = 0.5, native: bool = False
    ) -> list[tuple[np.ndarray, str]]:
        """``heatmap_strips`` of one model on one slice, running the network on that slice alone (``analyze`` with
        ``index``): the same picture the whole run gives, shown while the rest of the series runs."""
        i = self.clamp_index(index)
        a = analyze(pool.get(ref), self.require_volume(), index=i)
        return [self._strip(self.display_names([ref])[0], a, 0, i, window, opacity, a.thresholds if native else None)]

    def _strip(
        self, name: str, a: Analysis, k: int, index: int, window: str, opacity: float, grid: Thresholds | None
    ) -> tuple[np.ndarray, str]:
        """Slice ``k`` of ``a`` (slice ``index`` of the series) as a heatmap strip with its caption; ``grid``: the
        thresholds whose scale draws the native grid (None: the smooth map Algorithm 1 thresholds)."""
        maps = self._native_maps(a, grid, k) if grid else a.maps255[k]
        n = a.native.shape[-1]
        texts = [f"{c} {percent(a.probs[k, j])}" for j, c in enumerate(CLASSES)]
        strip = viz.heatmap_strip(self.base_rgb(index, window), maps, texts, opacity, STRIP_TILE,
                                  nearest=grid is not None)
        family = a.model_info.get("family", "")
        cap = f"{name} ({family}, native {n}x{n}) · " + " · ".join(t.replace(" ", " p=", 1) for t in texts)
        return strip, cap

    def native_on_source(self, ref: str, index: int) -> np.ndarray:
        """(5, H, W) uint8: slice ``index``'s native heatmaps scaled like ``maps255`` and drawn on the source grid
        with nearest neighbour, so each native cell shows as a block (16x16 Grad-CAM vs 128x128 LSE)."""
        a = self.require_analysis(ref)
        return self._native_maps(a, self.thresholds.get(ref, a.thresholds), index)

    def _native_maps(self, a: Analysis, t: Thresholds, k: int) -> np.ndarray:
        vol = self.require_volume()
        spec = ResizeSpec(vol.shape[1], vol.shape[2], int(a.model_info.get("input_size", a.native.shape[-1])))
        return maps_on_grid(a.native[k : k + 1], t, spec, nearest=True)[0]

    def agreement(self, refs: Sequence[str], index: int, window: str = "paper") -> tuple[np.ndarray, list[list]]:
        """Agreement picture of the slice and pairwise agreement rows over the series (needs 2 models run)."""
        run = [r for r in refs if r in self.analyses]
        base = self.base_rgb(index, window)
        if len(run) < 2:
            return base, []
        codes = viz.agreement_codes([self.labels(r)[self.clamp_index(index)] for r in run])
        return viz.agreement_overlay(base, codes), self.agreement_rows(run)

    def agreement_rows(self, refs: Sequence[str]) -> list[list]:
        """Pairwise agreement rows over the series (``viz.agreement_rows``), each pair computed once per the two
        models' thresholds: a slider move recomputes only the pairs of the model it moves."""
        run = [r for r in refs if r in self.analyses]
        names = dict(zip(run, self.display_names(run)))
        rows = []
        for i, a in enumerate(run):
            for b in run[i + 1 :]:
                key = ("agreement", self.refined, a, self.thresholds.get(a), b, self.thresholds.get(b))
                row = self._remember(key, lambda a=a, b=b: viz.agreement_row(self.labels(a), self.labels(b)))
                rows.append([names[a], names[b], *row])
        return rows

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

    def results(self, ref: str) -> ResultsView:
        """Volume table and legend of a model under its current thresholds (cached until they or the edits change)."""
        a = self.require_analysis(ref)
        vol = self.require_volume()
        t = self.thresholds.get(ref, a.thresholds)

        def compute() -> tuple:
            lab = self.shown_labels(ref)  # a copy of the series where slices were edited: only on a cache miss
            ml, abc = volumes_ml(lab, vol.spacing), abc2_ml(lab, vol.spacing)
            head = a.anatomy.intracranial_ml if a.anatomy is not None else None
            warnings = implausible_volumes(ml, head, vol.spacing_assumed)
            rows = viz.volume_rows(ml, abc, lab)
            if warnings:  # a volume no head can hold is flagged, not printed
                rows = [[r[0], "not plausible", "not plausible", r[3]] for r in rows]
            return rows, ml, abc, [c for c in CLASSES if ml[c] > 0], warnings

        revision = self.edits.revision if self.edits is not None else 0
        return ResultsView(*self._remember(("volumes", ref, t, self.refined, revision), compute))

    def curves(self, ref: str):
        """Plotly figure of a model's slice probabilities along the series, with its class thresholds."""
        a = self.require_analysis(ref)
        t = self.thresholds.get(ref, a.thresholds)
        return viz.probability_figure(a.probs, t.class_thresholds, f"{a.model}: slice probabilities")

    def mesh(self, ref: str):
        """3D figure of a model's masks (with the head outline) for a series."""
        vol = self.require_volume()
        lab = self.shown_labels(ref)
        head = vol.data > (20 if vol.prewindowed else -300)
        return viz.mesh_figure(lab, vol.spacing, head=head)

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
        from ichdemo.pipeline import save_draft

        a, vol = self.require_analysis(ref), self.require_volume()
        zpath = self.folder / f"ichdemo-draft-{safe_name(a.model)[:60]}-{time.strftime('%Y%m%d-%H%M%S')}.zip"
        saved = save_draft(a, vol, zpath, self.thresholds.get(ref, a.thresholds), list(formats), self.refined,
                           self.edits)
        if zpath not in self._drafts:  # a second export in the same second rewrites the same name
            self._drafts.append(zpath)
        while len(self._drafts) > KEEP_DRAFTS:  # older drafts were served (copied away) already
            self._drafts.pop(0).unlink(missing_ok=True)
        return zpath, saved.skipped


def percent(p: float) -> str:
    """A probability in percent with three significant digits, so that calibrated thresholds such as 0.0036 and
    0.00003 read as 0.36% and 0.003% rather than 0.00 (below 0.001%: "<0.001%")."""
    v = 100.0 * float(p)
    return f"{v:.3g}%" if v >= 0.001 or v == 0 else "<0.001%"


def display_window(window: str | tuple[float, float] | None) -> str | tuple[float, float]:
    """A display window: a preset name of ``WINDOWS``, or "centre/width" text in HU (``io.window.parse_window``).

    Raises:
        ConfigError: text that is neither.
    """
    from ichdemo.io.window import parse_window

    if isinstance(window, str) and window in WINDOWS:
        return window
    w = parse_window(window)
    return "paper" if w is None else (w.centre, w.width)

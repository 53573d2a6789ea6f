"""The app's callbacks: what each event of app.py does, bound to one ``ModelPool`` and the phantom examples.

Each callback turns the library's plain data (``ichdemo.session.Session``, ``ichdemo.api``, ``ichdemo.teach``) into
component values and updates; library errors become one-line messages (``ui_errors``). app.py builds the layout
and wires events to these methods.
"""

from __future__ import annotations

import atexit
import functools
import html
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from ichdemo.api import ScratchFolders, analyze_files, export_files, teach_files
from ichdemo.catalogue import NO_MODEL_HELP, ModelPool, run_models
from ichdemo.errors import IchdemoError, brief
from ichdemo.examples import PhantomExamples
from ichdemo.io import parse_spacing
from ichdemo.quantify import parse_thresholds
from ichdemo.session import Session
from ichdemo.teach import explain_slice
from webui.text import heatmap_rows_markdown, info_markdown, legend_html, warnings_html

log = logging.getLogger("ichdemo.app")

try:  # ZeroGPU Spaces: the network runs inside a GPU slot
    import spaces

    _gpu = spaces.GPU(duration=120)
except ImportError:  # everywhere else: as is (CUDA used when present, see ModelPool)

    def _gpu(fn: Callable) -> Callable:
        return fn


# --------------------------------------------------------------------------------------------- plumbing
def ui_errors(fn: Callable) -> Callable:
    """Show library errors as a one-line message in the UI (never a traceback); the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except IchdemoError as err:
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from err
        except Exception as err:  # an unexpected failure: logged in full on the server, one line for the user
            log.exception("callback %s failed", fn.__name__)
            msg = f"internal error ({type(err).__name__}: {brief(err)}); the server keeps running"
            raise gr.Error(html.escape(msg, quote=False), print_exception=False) from err

    return wrapper


_SESSIONS: dict[str, Session] = {}  # session hash -> Session, so that unload() can clean up right away


def _session(state: Session | None, request: gr.Request | None = None) -> Session:
    s = state if isinstance(state, Session) else Session()
    if request is not None and getattr(request, "session_hash", None):
        _SESSIONS[request.session_hash] = s
    return s


def _end_session(request: gr.Request) -> None:
    s = _SESSIONS.pop(getattr(request, "session_hash", "") or "", None)
    if s is not None:
        s.cleanup()


def _drop_state(value: Any) -> None:
    """gr.State's delete_callback (time-to-live over, or an hour after the tab closed)."""
    if isinstance(value, Session):
        value.cleanup()
        for key in [k for k, s in _SESSIONS.items() if s is value]:  # a session that never sent unload
            _SESSIONS.pop(key, None)


def _upload_paths(files: Any) -> list[str]:
    """The server paths of an upload; an upload whose files Gradio has removed meanwhile is refused by name."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in _refs(files)]
    gone = [Path(p).name for p in paths if not os.path.exists(p)]
    if gone:
        msg = f"{gone[0]}: this upload is no longer on the server (uploads are kept for a limited time); upload again"
        raise gr.Error(html.escape(msg, quote=False), print_exception=False)
    return paths


def _refs(choice: Sequence[str] | str | None) -> list[str]:
    if not choice:
        return []
    return [choice] if isinstance(choice, str) else list(choice)


# --------------------------------------------------------------------------------------------- the app
class App:
    """The callbacks, bound to one ``ModelPool`` and the phantom examples; each returns plain values or updates."""

    def __init__(self, pool: ModelPool, phantoms: PhantomExamples | None = None) -> None:
        self.pool = pool
        if phantoms is None:
            phantoms = PhantomExamples()
            atexit.register(phantoms.cleanup)
        self.phantoms = phantoms
        self._gpu_run = _gpu(self._network)
        self.scratch = ScratchFolders(max_age_s=600)
        atexit.register(self.scratch.cleanup)

    def _network(self, refs: list[str], volume: Any) -> dict:
        return run_models(self.pool, refs, volume)

    # ------------------------------------------------------------------ loading
    def _loaded(self, s: Session) -> tuple:
        n = s.require_volume().shape[0]
        slider = gr.update(
            minimum=0, maximum=max(n - 1, 1), value=n // 2, interactive=n > 1, label=f"Slice (0..{n - 1})"
        )
        return s, info_markdown(s.volume), slider, gr.update(choices=[], value=None), "Series loaded."

    @ui_errors
    def load_files(
        self, files: Any, image_window: str, spacing: str, state: Session | None, request: gr.Request
    ) -> tuple:
        """Upload -> series (resets every model's results); ``image_window`` and ``spacing`` say how PNG/JPG grey
        levels were made and their voxel size (empty or "auto": estimated, and the info says so)."""
        if not files:
            return (state, gr.skip(), gr.skip(), gr.skip(), gr.skip())
        paths = _upload_paths(files)
        s = _session(state, request)
        s.load_files(paths, image_window=image_window or None, spacing=parse_spacing(spacing))
        return self._loaded(s)

    @ui_errors
    def load_phantom(self, name: str, state: Session | None, request: gr.Request) -> tuple:
        """A synthetic example series (written once per process, loaded like an upload)."""
        s = _session(state, request)
        s.load_files(self.phantoms.files(name))
        return self._loaded(s)

    # ------------------------------------------------------------------ network
    @ui_errors
    def analyze(
        self,
        state: Session | None,
        refs: Sequence[str],
        results_ref: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's progress idiom
    ) -> tuple:
        """Run the chosen models not yet run on this series; set the threshold sliders from the results model."""
        s = _session(state)
        refs = _refs(refs)
        if s.volume is None:
            return (s, "Load a series first: upload files or click an example.", gr.skip(), *[gr.skip()] * 10)
        if not refs:
            msg = NO_MODEL_HELP if not self.pool.refs else "Choose at least one model to analyze."
            return (s, f"**{msg}**", gr.update(choices=[], value=None), *[gr.skip()] * 10)
        ran = s.analyze(
            self.pool,
            refs,
            lambda f, d: progress(f, desc=d),
            runner=lambda _pool, todo, vol, _p: self._gpu_run(todo, vol),
        )
        run = [r for r in refs if r in s.analyses]
        choices = [(s.analyses[r].model, r) for r in run]
        target = results_ref if results_ref in run else run[0]
        msg = f"Ran {len(ran)} model(s); showing {len(run)}." if ran else "All chosen models were already run."
        return (s, msg, gr.update(choices=choices, value=target), *self._slider_values(s, target))

    def _slider_values(self, s: Session, ref: str | None) -> list:
        if not ref or ref not in s.analyses:
            return [gr.skip()] * 10
        t = s.thresholds[ref]
        return [*t.class_thresholds, *t.mask_thresholds]

    # ------------------------------------------------------------------ views
    @ui_errors
    def render(
        self,
        state: Session | None,
        refs: Sequence[str],
        results_ref: str | None,
        index: float,
        window: str,
        mask_opacity: float,
        heat_opacity: float,
        native: bool,
        refine: bool = True,
    ) -> tuple:
        """Overlays (refined unless ``refine`` is off, and the paper's raw Algorithm 1 beside it), legend, heatmap
        panels, agreement and results for the current slice (no network)."""
        s = _session(state)
        if s.volume is None:
            return (None, None, legend_html(), [], "", None, [], None, [])
        s.refined = bool(refine)
        run = [r for r in _refs(refs) if r in s.analyses]
        ref = results_ref if results_ref in s.analyses else (run[0] if run else None)
        i = s.clamp_index(index)
        overlay = s.overlay(ref, i, window, mask_opacity)
        raw = s.overlay(ref, i, window, mask_opacity, refined=False) if ref and s.refined else None
        panels = s.heatmap_panels(run, i, window, heat_opacity, native)
        agree, rows = s.agreement(run, i, window)
        rows_md = heatmap_rows_markdown(s.heatmap_rows(run), s.volume)
        if ref is None:
            return (overlay, raw, legend_html(), panels, rows_md, agree, rows, None, [])
        res = s.results(ref, i)
        legend = legend_html(res.volumes_ml, res.present) + warnings_html(res.warnings)
        return (overlay, raw, legend, panels, rows_md, agree, rows, res.figure, res.rows)

    @ui_errors
    def render_3d(self, state: Session | None, results_ref: str | None):
        """3D view of the results model's masks (series input)."""
        s = _session(state)
        if s.volume is None or not results_ref or results_ref not in s.analyses:
            return None
        return s.mesh(results_ref)

    # ------------------------------------------------------------------ thresholds
    @ui_errors
    def set_thresholds(
        self,
        state: Session | None,
        refs: Sequence[str],
        results_ref: str | None,
        index: float,
        window: str,
        mask_opacity: float,
        heat_opacity: float,
        native: bool,
        refine: bool,
        *values: float,
    ) -> tuple:
        """The ten threshold sliders (class thresholds IPH..EDH, then mask thresholds IPH..EDH) for the results
        model: re-threshold the cached heatmaps (no network) and render the view again."""
        s = _session(state)
        if results_ref and results_ref in s.analyses:
            s.set_thresholds(results_ref, values[:5], values[5:])
        view = (refs, results_ref, index, window, mask_opacity, heat_opacity, native, refine)
        return (s, *self.render(s, *view))

    @ui_errors
    def reset_thresholds(self, state: Session | None, results_ref: str | None) -> tuple:
        s = _session(state)
        if not results_ref or results_ref not in s.analyses:
            return (s, *[gr.skip()] * 10)
        s.reset_thresholds(results_ref)
        return (s, *self._slider_values(s, results_ref))

    @ui_errors
    def pick_results_model(self, state: Session | None, results_ref: str | None) -> list:
        return self._slider_values(_session(state), results_ref)

    # ------------------------------------------------------------------ export, teach, API
    @ui_errors
    def export(self, state: Session | None, results_ref: str | None, formats: Sequence[str]) -> tuple[str, str]:
        """A zip of draft masks of the results model, stamped with model, version and thresholds."""
        s = _session(state)
        if not results_ref or results_ref not in s.analyses:
            raise gr.Error("Analyze a series first; the export uses the results model.", print_exception=False)
        path, skipped = s.export(results_ref, _refs(formats))
        note = f"Draft written for `{s.analyses[results_ref].model}`."
        note += "".join(f"\n- skipped {k}: {html.escape(v, quote=False)}" for k, v in skipped.items())
        return str(path), note

    @ui_errors
    def teach(
        self,
        state: Session | None,
        index: float,
        window: str,
        cls: str,
        gap_ref: str | None,
        lse_ref: str | None,
        r: float,
    ) -> tuple:
        """The Teach tab on the current slice."""
        s = _session(state)
        vol = s.require_volume()
        lse_t = s.thresholds.get(lse_ref) if lse_ref else None
        view = explain_slice(
            self.pool,
            vol,
            s.clamp_index(index),
            cls,
            gap_ref or None,
            lse_ref or None,
            r_values=(0.3, float(r), 30.0),
            thresholds=lse_t,
            window=window,
        )
        hl_note = (
            ""
            if view.hloss
            else (
                "No pair of LSE-UNet checkpoints trained with and without HLoss is configured. Train one with "
                "`python -m train.train ... --hloss false` and add both folders to `ICHDEMO_MODELS` to compare them."
            )
        )
        return (
            view.maps,
            view.r_maps,
            view.r_figure,
            gr.update(value=view.hloss, visible=bool(view.hloss)),
            hl_note,
            view.steps,
            view.notes,
        )

    @ui_errors
    def predict(self, files: Any, models: str, class_thresholds: str = "", mask_thresholds: str = "") -> tuple:
        """API: files of one series, comma-separated model names (empty: the default model) and, optionally, five
        comma-separated class thresholds (probabilities) and mask thresholds (0..255) in place of every model's
        calibrated ones -> (report JSON, label map files, one per model)."""
        paths = _upload_paths(files)
        if not paths:
            raise gr.Error("no files given", print_exception=False)
        refs = self.pool.by_name(models) or self.pool.default_selection()[:1]
        if not refs:
            raise gr.Error(NO_MODEL_HELP, print_exception=False)
        c = parse_thresholds(class_thresholds, "class") if str(class_thresholds or "").strip() else None
        m = parse_thresholds(mask_thresholds, "mask") if str(mask_thresholds or "").strip() else None
        given = {r: self.pool.infos[r].cfg.thresholds.replace(class_thresholds=c, mask_thresholds=m) for r in refs}
        out = self.scratch.new()  # unguessable, removed after 10 minutes: gradio copies the results into its cache
        report, label_files = analyze_files(self.pool, paths, refs, out, given)
        return report, [str(p) for p in label_files]

    def _given_thresholds(self, ref: str, class_thresholds: str, mask_thresholds: str):
        """The model's calibrated thresholds with the ones a script gave as "a,b,c,d,e" text (empty: keep)."""
        c = parse_thresholds(class_thresholds, "class") if str(class_thresholds or "").strip() else None
        m = parse_thresholds(mask_thresholds, "mask") if str(mask_thresholds or "").strip() else None
        return self.pool.infos[ref].cfg.thresholds.replace(class_thresholds=c, mask_thresholds=m)

    def _one_model(self, models: str) -> str:
        refs = self.pool.by_name(models) or self.pool.default_selection()[:1]
        if not refs:
            raise gr.Error(NO_MODEL_HELP, print_exception=False)
        return refs[0]

    @ui_errors
    def export_files(
        self, files: Any, model: str, formats: str, class_thresholds: str = "", mask_thresholds: str = ""
    ) -> tuple[str, str]:
        """API: files of one series, a model name (empty: the default), export formats (comma-separated) and,
        optionally, thresholds as in /predict -> (draft zip, note on skipped formats)."""
        ref = self._one_model(model)
        t = self._given_thresholds(ref, class_thresholds, mask_thresholds)
        zpath, skipped = export_files(self.pool, _upload_paths(files), ref, formats, self.scratch.new(), t)
        note = f"Draft written for `{self.pool.infos[ref].name}`."
        return str(zpath), note + "".join(f"\n- skipped {k}: {html.escape(v, quote=False)}" for k, v in skipped.items())

    @ui_errors
    def teach_files(self, files: Any, models: str, index: float, cls: str, r: float = 3.0) -> tuple[list, str]:
        """API: files of one series, model names (a gap and/or an lse_unet; empty: the default LSE-UNet and the
        first gap model), slice index, subtype and LSE sharpness r -> (pictures with captions, notes)."""
        refs = self.pool.by_name(models) or [r for r in (self.pool.default_lse(), *self.pool.find("gap")[:1]) if r]
        gap = next((x for x in refs if self.pool.infos[x].family == "gap"), None)
        lse = next((x for x in refs if self.pool.infos[x].family == "lse_unet"), None)
        view = teach_files(self.pool, _upload_paths(files), int(index or 0), cls, gap, lse, float(r or 3.0))
        return view.maps + view.r_maps + view.hloss + view.steps, view.notes

"""The app's callbacks: what each event of app.py does, bound to one ``ModelPool`` and the phantom examples.

Each callback turns the library's plain data (``ichdemo.session.Session``, ``ichdemo.api``, ``ichdemo.teach``) into
component values and updates; library errors become one-line messages (``ui_errors``). app.py builds the layout
and wires events to these methods.
"""

from __future__ import annotations

import atexit
import functools
import html
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from ichdemo import io as ichdemo_io
from ichdemo.api import ScratchFolders, analyze_files, export_files, teach_files
from ichdemo.catalogue import NO_MODEL_HELP, ModelPool, run_models
from ichdemo.errors import IchdemoError, UnsupportedInputError, brief
from ichdemo.examples import PHANTOM_EXAMPLES, PhantomExamples, fingerprint, image_truth
from ichdemo.io import parse_spacing
from ichdemo.quantify import parse_thresholds
from ichdemo.reopen import review_from_files, split_uploads
from ichdemo.review import ReviewStore, new_key
from ichdemo.session import Session
from ichdemo.teach import explain_slice
from webui.text import info_markdown, legend_html, review_html, warnings_html

log = logging.getLogger("ichdemo.app")

try:  # ZeroGPU Spaces: the network runs inside a GPU slot
    import spaces

    _gpu = spaces.GPU(duration=120)
    ZEROGPU = True
except ImportError:  # everywhere else: as is (CUDA used when present, see ModelPool)

    def _gpu(fn: Callable) -> Callable:
        return fn

    ZEROGPU = False


# --------------------------------------------------------------------------------------------- plumbing
def _one_line(err: Exception, name: str) -> gr.Error:
    if isinstance(err, IchdemoError):
        return gr.Error(html.escape(str(err), quote=False), print_exception=False)
    log.exception("callback %s failed", name)  # an unexpected failure: logged in full, one line for the user
    msg = f"internal error ({type(err).__name__}: {brief(err)}); the server keeps running"
    return gr.Error(html.escape(msg, quote=False), print_exception=False)


def ui_errors(fn: Callable) -> Callable:
    """Show library errors as a one-line message in the UI (never a traceback); the server keeps serving.
    Generator callbacks (streamed results) stay generators."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                raise _one_line(err, fn.__name__) from err

        return stream

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise _one_line(err, fn.__name__) from err

    return wrapper


_SESSIONS: dict[str, Session] = {}  # session hash -> Session, so that unload() can clean up right away


def _session(state: Session | None, request: gr.Request | None = None) -> Session:
    """The page's Session: its state, else the one an event of the same page made meanwhile (a click while the
    page's load event still runs comes with no state yet: a second Session would lose what the first one holds,
    such as the review key), else a new one."""
    page = getattr(request, "session_hash", None) if request is not None else None
    s = state if isinstance(state, Session) else _SESSIONS.get(page) or Session()
    if page:
        _SESSIONS[page] = s
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


def _mask_image(upload: Any) -> Any:
    """(H, W) bool from an uploaded mask image (PNG/JPG; non-zero pixels are the mask)."""
    import cv2

    path = _upload_paths(upload)[0]
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise gr.Error(f"{Path(path).name}: not an image OpenCV can read (use PNG)", print_exception=False)
    return (img if img.ndim == 2 else img[..., :3].max(axis=2)) > 0


STROKE_MODES = {"Paint": "paint", "Erase": "erase", "Fill outline": "fill", "Remove a region (click it)": "remove"}
"""The brush's modes (the editor's radio) -> ``Session.edit`` actions."""


def _strokes(editor: Any, shape: tuple[int, int]) -> Any:
    """(H, W) bool of what was drawn on the ImageEditor (its layers' opaque pixels), on the slice grid; None when
    nothing was drawn."""
    import cv2
    import numpy as np

    layers = [np.asarray(x) for x in (editor or {}).get("layers") or [] if x is not None]
    drawn = [x[..., 3] > 0 if x.ndim == 3 and x.shape[2] == 4 else np.asarray(x).reshape(x.shape[:2] + (-1,)).any(2)
             for x in layers]
    if not drawn or not any(d.any() for d in drawn):
        return None
    mask = np.logical_or.reduce(drawn).astype(np.uint8)
    if mask.shape != tuple(shape):  # the editor's canvas is the Draft picture's size: the slice's; else resample
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def _refs(choice: Sequence[str] | str | None) -> list[str]:
    if not choice:
        return []
    return [choice] if isinstance(choice, str) else list(choice)


FIRST_LOOK_SLICES = 4
"""A series longer than this shows the results model's heatmaps of the slice on screen before the rest has run."""
VIEW_SLICE = ("overlay", "raw_overlay", "gallery", "agree", "truth")
VIEW_SERIES = ("legend", "curves", "agree_table", "table")
VIEW_ALL = VIEW_SLICE + VIEW_SERIES
"""The view's outputs, by their names in app.py's layout: what a slice step redraws, and what thresholds change."""
NO_TRUTH = {"__type__": "update", "value": None, "visible": False}
EMPTY_VIEW = (None, None, [], None, NO_TRUTH, legend_html(), None, [], [])


def _view_only(**changed: Any) -> tuple:
    """VIEW_ALL's outputs with the ``changed`` ones (by name) set and every other left as it is."""
    return tuple(changed.get(name, gr.skip()) for name in VIEW_ALL)


def _gallery(s: Session, strips: list[tuple[Any, str]]) -> list:
    """The gallery's value: heatmap strips (``Session.heatmap_strips``) as picture files, with their captions."""
    return [(s.picture(rgb), cap) for rgb, cap in strips]


def _shown(s: Session, refs: Sequence[str], results_ref: str | None) -> tuple[list[str], str | None]:
    """(the chosen models run on the series, the results model shown: the chosen one, else the first run), the
    latter kept as the session's."""
    run = [r for r in _refs(refs) if r in s.analyses]
    s.results_ref = results_ref if results_ref in s.analyses else (run[0] if run else None)
    return run, s.results_ref


def _slice_slider(volume: Any, value: int | None = None) -> dict:
    n = 0 if volume is None else volume.shape[0]
    return gr.update(minimum=0, maximum=max(n - 1, 1), value=n // 2 if value is None else value, interactive=n > 1,
                     label=f"Slice (0..{n - 1})" if n else "Slice")


# --------------------------------------------------------------------------------------------- the app
class App:
    """The callbacks, bound to one ``ModelPool`` and the phantom examples; each returns plain values or updates."""

    def __init__(
        self,
        pool: ModelPool,
        phantoms: PhantomExamples | None = None,
        examples: str | Path | None = None,
        reviews: ReviewStore | None = None,
    ) -> None:
        """``examples``: the folder of example images whose ``truth/`` masks are shown beside their drafts;
        ``reviews``: where each browser's review in progress is kept (default ``ReviewStore()``)."""
        self.pool = pool
        self.examples = Path(examples) if examples else None
        if phantoms is None:
            phantoms = PhantomExamples()
            atexit.register(phantoms.cleanup)
        self.phantoms = phantoms
        self._gpu_run = _gpu(self._network)
        self.scratch = ScratchFolders(max_age_s=600)
        atexit.register(self.scratch.cleanup)
        self.reviews = reviews or ReviewStore()

    def warm(self) -> threading.Thread:
        """Start-up, in a background thread: write the phantom examples, load the default models and run each once
        on a phantom, so that the first upload pays neither for reading weights nor for first-call set-up."""

        def run() -> None:
            t0 = time.perf_counter()
            self.phantoms.warm().join()
            try:
                vol = Session().load_files(self.phantoms.files(next(iter(PHANTOM_EXAMPLES))))
                run_models(self.pool, self.pool.default_selection(), vol)
                log.info("models warm in %.1f s", time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001 - the first request loads (and reports) instead
                log.warning("models not warmed up: %s", err)

        t = threading.Thread(target=run, name="ichdemo-warm", daemon=True)
        t.start()
        return t

    def _network(self, refs: list[str], volume: Any) -> dict:
        return run_models(self.pool, refs, volume)

    def _runner(self, pool: ModelPool, refs: list[str], volume: Any, progress: Any) -> dict:
        """The network for ``Session.analyze``: inside a ZeroGPU slot on Spaces (no progress crosses into the GPU
        worker), else directly, with progress in slices."""
        if ZEROGPU:
            return self._gpu_run(refs, volume)
        return run_models(pool, refs, volume, progress)

    # ------------------------------------------------------------------ loading
    @ui_errors
    def load_files(
        self, files: Any, image_window: str, spacing: str, add: bool, state: Session | None, request: gr.Request
    ) -> tuple:
        """Upload -> series. A new upload replaces the series (results and all) unless ``add`` is on: the upload box
        lists the earlier files too, and only the new ones are kept (the box is set to them once analysis starts).
        ``image_window`` and ``spacing`` say how PNG/JPG grey levels were made and their voxel size (empty or
        "auto": estimated, and the info says so). Exported labels (``ichdemo.reopen``) uploaded beside the CT, or
        alone over the series on screen, re-open a review: they become its edits.

        Returns (state, series info). A failed upload raises (one line) and leaves the series as it was."""
        s = _session(state, request)
        paths = _upload_paths(files)
        if not paths:  # the box emptied: by its clear button (``clear_series``) or by the app for an example
            return s, gr.skip()
        given = {fingerprint(p): p for p in paths}
        new = {k: p for k, p in given.items() if k not in s.uploaded and k not in s.refused}
        if not new and given.keys() <= s.uploaded.keys() | s.refused:
            # the box echoing the series' files (Gradio re-caches them elsewhere), beside refused ones (said already)
            return s, info_markdown(s.volume)
        chosen = given if add or not new else new  # no new file: some were removed from the box
        ct, labels = split_uploads(list(chosen.values()))  # exported labels beside their CT re-open a review
        if labels and not ct and s.volume is not None:  # labels of the series on screen
            try:
                s.edits, reopened = review_from_files(labels, s.volume)
            except IchdemoError:
                s.refused |= chosen.keys()
                raise
            s.uploaded, s.fresh = {**s.uploaded, **chosen}, "restored"  # redrawn where the person is
            return s, info_markdown(s.volume) + f"\n\n**{reopened}**"
        try:
            if labels and not ct:
                names = ", ".join(sorted(Path(p).name for p in labels))[:120]
                raise UnsupportedInputError(f"labels alone ({names}: exported labels, a DICOM SEG or a report): "
                                            "upload them beside the CT they were drawn on")
            vol = ichdemo_io.load_volume(ct, image_window=image_window or None, spacing=parse_spacing(spacing))
            edits, reopened = review_from_files(labels, vol) if labels else (None, "")
        except IchdemoError:
            s.refused |= chosen.keys()  # still listed in the box: the next upload beside them leaves them out
            raise
        s.set_volume(vol)
        if self.examples is not None:  # a CT-ICH example slice with its expert mask
            s.truth = image_truth(ct, s.volume, self.examples)
            s.truth_subtypes, s.truth_source = False, "expert mask (CT-ICH)"
        s.uploaded, s.fresh = chosen, ("loaded" if chosen == given else "replaced")
        s.forget_review()  # a new series: the review of the old one goes (its export is the way to keep it)
        s.edits = edits
        s.source = {"series": ",".join(sorted(chosen)), "image_window": image_window or "", "spacing": spacing or ""}
        s.source_files = ct
        return s, info_markdown(s.volume) + (f"\n\n**{reopened}**" if reopened else "")

    @ui_errors
    def clear_series(self, files: Any, state: Session | None, request: gr.Request) -> tuple:
        """The upload box's clear button: forget the series and its results (the analysis step clears the screen).
        Nothing when the box still holds files (the event also fires when the app sets the box's files)."""
        s = _session(state, request)
        if _refs(files) or s.volume is None:
            return s, gr.skip()
        s.forget_review()
        s.cleanup()
        s.fresh = "cleared"
        return s, info_markdown(None)

    @ui_errors
    def load_phantom(self, name: str, state: Session | None, request: gr.Request) -> tuple:
        """A synthetic example series (written once per process, loaded like an upload)."""
        s = _session(state, request)
        s.forget_review()
        self._phantom(s, name)
        s.uploaded, s.fresh = {}, "replaced"  # the upload box is emptied of an earlier upload
        return s, info_markdown(s.volume)

    def _phantom(self, s: Session, name: str) -> None:
        s.load_files(self.phantoms.files(name))
        s.truth, s.truth_subtypes, s.truth_source = self.phantoms.truth_labels(name, s.volume), True, "phantom"
        s.source, s.source_files = {"series": f"phantom:{name}", "phantom": name}, []

    @ui_errors
    def restore(self, key: Any, state: Session | None, request: gr.Request) -> tuple:
        """Page load: give the browser its review key (a new one the first time) and, where it has a review in
        progress (``ichdemo.review``: a reload, or a visit after a server restart), load that series with its edits;
        the analysis that follows draws it. Returns (key, state, series info)."""
        s = _session(state, request)
        try:
            self.reviews.folder(key)
        except ValueError:
            key = new_key()
        s.review = (self.reviews, key)
        found = self.reviews.load(key)
        if found is None or s.volume is not None:
            return key, s, gr.skip()
        source, files = found
        try:
            if source.get("phantom"):
                self._phantom(s, source["phantom"])
            else:
                s.load_files([str(f) for f in files], image_window=source.get("image_window") or None,
                             spacing=parse_spacing(source.get("spacing") or ""))
            s.edits = self.reviews.edits(key, s.volume.shape)
        except (IchdemoError, OSError, ValueError) as err:
            self.reviews.drop(key)
            s.cleanup()
            return key, s, f"Your review in progress could not be reopened ({brief(err)}); it was dropped."
        s.source, s.source_files = source, [str(f) for f in files]
        s.index, s.results_ref, s.fresh = int(source.get("index", 0)), source.get("results_ref"), "restored"
        note = (f"\n\n**Your review in progress was reopened**: {s.edits.reviewed()} of {s.volume.shape[0]} "
                "slices reviewed. Clearing the series (or loading another) drops it.")
        return key, s, info_markdown(s.volume) + note

    # ------------------------------------------------------------------ network
    @ui_errors
    def analyze(
        self,
        state: Session | None,
        refs: Sequence[str],
        results_ref: str | None,
        *view: Any,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's progress idiom
    ):
        """Run the chosen models not yet run on this series, the results model first, and show each as it
        finishes (the results model's heatmaps as soon as it has run, then its drafts, then each other model;
        progress in slices). After a new upload it first resets the viewer (slice slider, results model, pictures)
        and, where the series is not all the box holds, sets the upload box to the files of the series.

        ``view``: window, opacities, native grid, refine (the slice shown is the session's: the slider's range may
        be changing under a new series). Yields (state, status, slice slider, results model, upload box, 10 sliders,
        *ALL view outputs)."""
        s = _session(state)
        refs = _refs(refs)
        fresh, s.fresh = s.fresh, ""
        keep = (gr.skip(),) * (3 + 10 + len(VIEW_ALL))
        if s.volume is None:
            if fresh:  # the upload box was emptied: clear the screen
                yield (s, "No series loaded.", _slice_slider(None), gr.update(value=None), gr.skip(),
                       *[gr.skip()] * 10, *EMPTY_VIEW)
            else:
                yield (s, "Load a series first: upload files or click an example.", *keep)
            return
        if fresh:
            box = gr.update(value=list(s.uploaded.values()) or None) if fresh == "replaced" else gr.skip()
            s.index = s.clamp_index(s.index) if fresh == "restored" else s.volume.shape[0] // 2
            yield (s, "Series loaded; analysing...", _slice_slider(s.volume, s.index), gr.update(value=None), box,
                   *[gr.skip()] * 10, *EMPTY_VIEW)
            results_ref = s.results_ref if fresh == "restored" else None
        if not refs:
            msg = NO_MODEL_HELP if not self.pool.refs else "Choose at least one model to analyze."
            yield (s, f"**{msg}**", *keep)
            return
        target = results_ref if results_ref in refs else refs[0]
        todo = sorted(s.missing(refs), key=lambda r: r != target)  # the model the viewer shows runs first
        if not todo and not fresh:
            yield (s, "All chosen models were already run.", *keep)
            return
        if fresh and todo[:1] == [target] and s.volume.shape[0] > FIRST_LOOK_SLICES and not ZEROGPU:
            window, _, heat_opacity, native = view[:4]  # the slice on screen first, while the series runs
            maps = _gallery(s, s.first_look(self.pool, target, s.index, window, heat_opacity, native))
            yield (s, f"Heatmaps of slice {s.index} shown; analysing the series...",  # slider, model, box, sliders
                   *[gr.skip()] * (3 + 10), *_view_only(gallery=maps))
        for n, ref in enumerate(todo):

            def step(f: float, desc: str, n: int = n) -> None:
                progress((n + f) / len(todo), desc=f"model {n + 1} of {len(todo)}: {desc}")

            s.analyze(self.pool, [ref], step, runner=self._runner)
            run = [r for r in refs if r in s.analyses]
            left = len(todo) - n - 1
            msg = f"Ran {n + 1} of {len(todo)} model(s)" + (f"; {left} still running..." if left else ".")
            picked = (gr.update(value=target), gr.skip())  # the choices are every model: none goes stale
            if n == 0:  # the heatmaps first (the drafts wait for the series' anatomy), and the model's thresholds
                window, _, heat_opacity, native = view[:4]
                maps = _gallery(s, s.heatmap_strips(run, s.index, window, heat_opacity, native))
                yield (s, f"Ran 1 of {len(todo)} model(s); drawing its drafts...", gr.skip(), *picked,
                       *self._slider_values(s, target), *_view_only(overlay=None, raw_overlay=None, gallery=maps))
            yield (s, msg, gr.skip(), *picked, *self._slider_values(s, target),  # the thresholds in force
                   *self._view_all(s, run, target, s.index, *view))

    def analyze_new(
        self,
        state: Session | None,
        refs: Sequence[str],
        results_ref: str | None,
        *view: Any,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's progress idiom
    ):
        """``analyze`` after an upload, an example or a cleared box; nothing when the upload box only echoed the
        series (so that the status and a running analysis are left alone)."""
        if isinstance(state, Session) and state.fresh:
            yield from self.analyze(state, refs, results_ref, *view, progress=progress)
        else:
            yield (state, *[gr.skip()] * (4 + 10 + len(VIEW_ALL)))

    def _slider_values(self, s: Session, ref: str | None) -> list:
        """The ten threshold sliders for ``ref``: class thresholds in percent, mask thresholds 0..255."""
        if not ref or ref not in s.analyses:
            return [gr.skip()] * 10
        t = s.thresholds[ref]
        return [round(100.0 * c, 6) for c in t.class_thresholds] + list(t.mask_thresholds)

    # ------------------------------------------------------------------ views
    def _view_slice(self, s: Session, run: list[str], ref: str | None, index: Any, window: str, mask_opacity: float,
                    heat_opacity: float, native: bool, refine: bool = True, skip: Collection[str] = ()) -> tuple:
        """VIEW_SLICE: the draft (refined unless ``refine`` is off), the paper's raw Algorithm 1 beside it, every
        model's heatmap strip and the agreement picture, and the known truth where there is one, as picture files
        of the session. ``skip``: names of outputs left as they are (``gr.skip()``), not computed: what an action
        does not change (thresholds do not change the heatmaps)."""
        s.refined = bool(refine)
        i = s.index = s.clamp_index(index)
        overlay = s.picture(s.overlay(ref, i, window, mask_opacity))
        raw = s.picture(s.overlay(ref, i, window, mask_opacity, refined=False)) if ref and s.refined else None
        maps = gr.skip() if "gallery" in skip else _gallery(s, s.heatmap_strips(run, i, window, heat_opacity, native))
        agree = gr.skip() if "agree" in skip else s.picture(s.agreement(run, i, window)[0])
        return overlay, raw, maps, agree, self._truth(s, ref, i, window, mask_opacity)

    def _truth(self, s: Session, ref: str | None, i: int, window: str, opacity: float) -> dict:
        """The truth picture: shown, with the slice's Dice in its label, where the series has a known truth."""
        known = s.truth_view(ref, i, window, opacity)
        if known is None:
            return NO_TRUTH
        pic, dice = known
        score = "no hemorrhage in either" if dice is None else f"draft Dice {dice:.2f}"
        return gr.update(value=s.picture(pic), visible=True, label=f"Truth: {s.truth_source} · {score}")

    def _view_series(self, s: Session, run: list[str], ref: str | None, skip: Collection[str] = ()) -> tuple:
        """VIEW_SERIES: legend with volumes and warnings, probability curves, agreement table, volume table;
        ``skip`` as in ``_view_slice``."""
        rows = gr.skip() if "agree_table" in skip else s.agreement_rows(run)
        if ref is None:
            return legend_html(), None, rows, []
        res = s.results(ref)
        legend = legend_html(res.volumes_ml, res.present) + warnings_html(res.warnings) + review_html(s.edits)
        return legend, gr.skip() if "curves" in skip else s.curves(ref), rows, res.rows

    def _view_all(self, s: Session, refs: Sequence[str], results_ref: str | None, index: Any, *view: Any,
                  skip: Collection[str] = ()) -> tuple:
        run, ref = _shown(s, refs, results_ref)
        return (*self._view_slice(s, run, ref, index, *view, skip=skip), *self._view_series(s, run, ref, skip))

    @ui_errors
    def render(self, state: Session | None, refs: Sequence[str], results_ref: str | None, index: float,
               window: str, mask_opacity: float, heat_opacity: float, native: bool, refine: bool = True) -> tuple:
        """The pictures of the current slice (VIEW_SLICE): a slice step, window or opacity change. No network."""
        s = _session(state)
        if s.volume is None:
            return EMPTY_VIEW[: len(VIEW_SLICE)]
        run, ref = _shown(s, refs, results_ref)
        return self._view_slice(s, run, ref, index, window, mask_opacity, heat_opacity, native, refine)

    @ui_errors
    def render_all(self, state: Session | None, refs: Sequence[str], results_ref: str | None, *view: Any) -> tuple:
        """Every view output (VIEW_ALL): after the refinement switch or a threshold reset. No network."""
        s = _session(state)
        return EMPTY_VIEW if s.volume is None else self._view_all(s, refs, results_ref, *view)

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
        self, state: Session | None, refs: Sequence[str], results_ref: str | None, index: float, *values: Any
    ) -> tuple:
        """The view's parameters (window, opacities, native, refine), then the ten threshold sliders (class
        thresholds IPH..EDH in percent, then mask thresholds IPH..EDH) for the results model: re-threshold the
        cached heatmaps (no network) and redraw what they change (the heatmap strips stay)."""
        s = _session(state)
        view, sliders = values[:5], values[5:]
        if results_ref and results_ref in s.analyses:
            s.set_thresholds(results_ref, [float(v) / 100.0 for v in sliders[:5]], sliders[5:])
        if s.volume is None:
            return (s, *EMPTY_VIEW)
        return (s, *self._view_all(s, refs, results_ref, index, *view, skip={"gallery"}))

    @ui_errors
    def reset_thresholds(self, state: Session | None, results_ref: str | None) -> tuple:
        """Back to the results model's calibrated thresholds (the sliders follow; the view is redrawn after)."""
        s = _session(state)
        if not results_ref or results_ref not in s.analyses:
            return (s, *[gr.skip()] * 10)
        s.reset_thresholds(results_ref)
        return (s, *self._slider_values(s, results_ref))

    @ui_errors
    def pick_results_model(
        self, state: Session | None, refs: Sequence[str], results_ref: str | None, index: float, *view: Any
    ) -> tuple:
        """Another results model: its thresholds on the sliders and its drafts, curves and volumes, in one step."""
        s = _session(state)
        if s.volume is None:
            return (gr.update(value=None), *[gr.skip()] * 10, *EMPTY_VIEW)
        if results_ref not in s.analyses:  # a model not run on this series: say how, and keep showing the last one
            name = self.pool.infos[results_ref].name if results_ref in self.pool.infos else results_ref
            gr.Warning(f"{name} has not run on this series: tick it under 'Models to compare' and press Analyze.")
            return (gr.update(value=s.results_ref), *[gr.skip()] * (10 + len(VIEW_ALL)))
        # the heatmaps and the agreement of the chosen models do not depend on which is shown; the curves follow
        # (``curves``, chained) so that the drafts are drawn first
        out = self._view_all(s, refs, results_ref, index, *view, skip={"gallery", "agree", "agree_table", "curves"})
        return (gr.skip(), *self._slider_values(s, results_ref), *out)

    @ui_errors
    def curves(self, state: Session | None, results_ref: str | None):
        """The results model's slice probabilities along the series, with its class thresholds."""
        s = _session(state)
        if s.volume is None or results_ref not in s.analyses:
            return gr.skip()
        return s.curves(results_ref)

    # ------------------------------------------------------------------ corrections
    @ui_errors
    def edit(
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
        action: str,
        subtype: str = "",
        mask: Any = None,
        row: float | None = -1,
        col: float | None = -1,
    ) -> tuple:
        """A person's correction of the results model's draft (``Session.edit``): on the current slice ``index``,
        ``action`` paint / erase / fill (``mask``: an image of the slice's size, non-zero = the pixels; paint and
        fill take ``subtype``), remove (the region under ``row``, ``col``), clear, accept, no-hemorrhage, revert,
        or undo / redo. Returns (state, slice slider, *ALL view outputs); volumes and review progress follow."""
        pixels = _mask_image(mask) if _refs(mask) else None
        row, col = (-1 if v is None else int(v) for v in (row, col))  # row 0 is a row, not "none"
        view = (window, mask_opacity, heat_opacity, native, refine)
        return self._edit(_session(state), refs, results_ref, index, view, str(action or "").strip(), subtype or "",
                          pixels, row, col)

    def _edit(self, s: Session, refs: Sequence[str], results_ref: str | None, index: Any, view: tuple, action: str,
              subtype: str, pixels: Any = None, row: int = -1, col: int = -1) -> tuple:
        if not results_ref or results_ref not in s.analyses:
            raise gr.Error("Analyze a series first: corrections apply to the results model's draft.",
                           print_exception=False)
        i = s.edit(results_ref, action, index, subtype, pixels, row, col)
        here = s.clamp_index(index)
        shown = i if i >= 0 else here
        same = {"curves"} | ({"gallery"} if shown == here else set())  # undo/redo may show another slice
        out = self._view_all(s, refs, results_ref, shown, *view, skip=same)
        return (s, gr.update(value=shown), *out)

    @ui_errors
    def edit_strokes(self, state: Session | None, refs: Sequence[str], results_ref: str | None, index: float,
                     window: str, mask_opacity: float, heat_opacity: float, native: bool, refine: bool, mode: str,
                     subtype: str, editor: Any) -> tuple:
        """The brush: what was drawn on the editor (every layer's opaque pixels) painted as ``subtype``, erased, or
        filled as a closed outline, per ``mode`` (``STROKE_MODES``). Returns what ``edit`` returns."""
        s = _session(state)
        vol = s.require_volume()
        strokes = _strokes(editor, vol.shape[1:])
        if strokes is None:
            raise gr.Error("Draw on the slice in the editor first (brush), then apply.", print_exception=False)
        action = STROKE_MODES.get(mode, "paint")
        if action == "remove":
            raise gr.Error("Remove a region: click it on the Draft picture (no strokes needed).", print_exception=False)
        return self._edit(s, refs, results_ref, index, (window, mask_opacity, heat_opacity, native, refine), action,
                          subtype, strokes)

    @ui_errors
    def click_draft(self, state: Session | None, refs: Sequence[str], results_ref: str | None, index: float,
                    window: str, mask_opacity: float, heat_opacity: float, native: bool, refine: bool, mode: str,
                    evt: gr.SelectData) -> tuple:
        """A click on the Draft picture in the mode "remove a region": the connected region under it is erased."""
        s = _session(state)
        if STROKE_MODES.get(mode) != "remove" or s.volume is None:
            return (s, gr.skip(), *[gr.skip()] * len(VIEW_ALL))
        col, row = (int(v) for v in evt.index[:2])  # Gradio gives (x, y) in the picture's pixels: the slice grid
        return self._edit(s, refs, results_ref, index, (window, mask_opacity, heat_opacity, native, refine),
                          "remove", "", None, row, col)

    @ui_errors
    def step(self, state: Session | None, refs: Sequence[str], results_ref: str | None, index: float,
             window: str, mask_opacity: float, heat_opacity: float, native: bool, refine: bool, where: str) -> tuple:
        """Keyboard and button navigation: ``where`` "next", "previous" or "unreviewed" (the next slice still a
        plain draft). Returns (slice slider, *VIEW_SLICE)."""
        s = _session(state)
        if s.volume is None:
            return (gr.skip(), *[gr.skip()] * len(VIEW_SLICE))
        i, n = s.clamp_index(index), s.volume.shape[0]
        if where == "unreviewed":
            found = s.edits.next_unreviewed(i) if s.edits is not None else (i + 1) % n
            if found is None:
                gr.Info("Every slice is reviewed.")
                return (gr.skip(), *[gr.skip()] * len(VIEW_SLICE))
            i = found
        else:
            i = min(max(i + (1 if where == "next" else -1), 0), n - 1)
        run, ref = _shown(s, refs, results_ref)
        return (gr.update(value=i), *self._view_slice(s, run, ref, i, window, mask_opacity, heat_opacity, native,
                                                       refine))

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

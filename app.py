"""ichdemo web app: upload a head CT, compare backbones' heatmaps, tune thresholds, measure volumes, export drafts.

Run it (http://127.0.0.1:7860):

    python app.py                                   # models from ICHDEMO_MODELS / ICHDEMO_MODELS_FILE / checkpoints/
    python app.py --models /ckpt/lse,/ckpt/gap      # explicit model references (folders, bundled names, hf://...)
    python app.py --host 0.0.0.0 --port 7860        # as in the Dockerfile / a Docker Space

Layout and wiring only (hysts' Spaces pattern): this file builds the Blocks and wires events to the callbacks of
``webui.callbacks.App`` (one ``ichdemo.catalogue.ModelPool`` per process, one ``ichdemo.session.Session`` per
browser session, in ``gr.State``); every computation is in the library, every text in ``webui.text``. ``demo`` is
module level so that ``gradio app.py`` and Spaces find it. Scripting with gradio_client: ``/predict``, ``/export``
and ``/teach`` take files and plain values; ``/edit`` corrects the session's draft (see the About tab).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from ichdemo.catalogue import NO_MODEL_HELP, ModelPool
from ichdemo.constants import CLASS_NAMES, CLASSES, RESEARCH_NOTICE, WINDOWS
from ichdemo.examples import PHANTOM_EXAMPLES, PhantomExamples
from ichdemo.export.draft import available_formats
from ichdemo.io.window import PRESETS as IMAGE_WINDOWS
from ichdemo.quantify import PAPER_MASK_THRESHOLDS
from ichdemo.review import ReviewStore
from ichdemo.viz import VOLUME_HEADERS
from webui.cache import DEFAULT_SCHEDULE, cache_schedule, server_lifespan
from webui.callbacks import STROKE_MODES, VIEW_ALL, VIEW_SLICE, App, _drop_state, _end_session
from webui.text import (
    CSS,
    NOTICE_HTML,
    SHORTCUTS_HELP,
    SHORTCUTS_JS,
    STROKE_COLOUR,
    agreement_legend_html,
    legend_html,
    quality_markdown,
    status_markdown,
)

log = logging.getLogger("ichdemo.app")
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
CONCURRENCY = int(os.environ.get("ICHDEMO_CONCURRENCY", "2"))
MAX_FILE_SIZE = os.environ.get("ICHDEMO_MAX_FILE_SIZE", "1gb")
REVIEW_STORAGE_KEY = "ichdemo-review"  # localStorage key of the browser's review key (``ichdemo.review``)
SESSION_TTL_S = 4 * 3600  # a session's arrays and temp folder go at the latest this long after its last change


DELETE_CACHE = cache_schedule(os.environ.get("ICHDEMO_DELETE_CACHE", DEFAULT_SCHEDULE))
AGREEMENT_HEADERS = ["model A", "model B", "Dice (any hemorrhage)", "Dice (subtypes)", "same label (share)"]

# --------------------------------------------------------------------------------------------- layout
INTRO = """# ichdemo: where is the bleed, and how much?
Weakly supervised localisation of intracranial hemorrhage subtypes (IPH, IVH, SAH, SDH, EDH) on head CT, after
Chen & Kuo (MIDL 2026). A classifier trained on slice labels only yields heatmaps; thresholds turn them into masks
and volumes. Load a series, compare backbones, tune the thresholds, export draft masks for annotators."""

TEACH_INTRO = """### How a slice label becomes a mask
1. **Grad-CAM** (the baselines): take the last convolutional feature maps A (16x16 at 512 px input), weight
   each channel by the spatial mean of d(score)/dA, sum the weighted channels and keep the positive part. The map
   can only be as fine as A: each cell covers 32x32 input pixels.
2. **LSE-UNet** (the paper's model): a U-Net decoder produces a score map f0 at a quarter of the input (128x128 at
   512 px), pooled into the slice score with Log-Sum-Exp, LSE_r(f) = log(mean exp(r f)). Its gradient is
   softmax(r f): Grad-CAM at f0 is just a rescaled f0, so the heatmap is f0 itself, 8x finer per side.
3. **The sharpness r** moves LSE between average pooling (small r: every pixel counts) and max pooling (large r:
   only the peak counts). The paper uses r = 3.
4. **HLoss** asks each decoder level to agree with the 2x2-pooled level above; without it the maps turn grid-like.
5. **Algorithm 1**: a subtype is kept on a slice when its probability beats the class threshold c_k; then the
   pixels whose heatmap (scaled to 0..255) beats the mask threshold m_k; the label is the argmax over
   (normal, 5 subtypes)."""

ABOUT = f"""### About
{RESEARCH_NOTICE}

**Method.** Chen and Kuo, "Beyond Classification: Elaborating Network Predictions for Better Weakly Supervised
Quantization". Class order IPH, IVH, SAH, SDH, EDH; label 0 is normal. Volume = voxel count x voxel volume, shown
beside the bedside ABC/2 estimate.

**Examples.** Synthetic phantoms are generated from seeds. The real slices come from CT-ICH (Hssayeni et al.,
PhysioNet, CC BY 4.0); see examples/README.md for the full attribution.

**Scripting** with `gradio_client`:
```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")
files = [handle_file("series.zip")]
report, label_maps = client.predict(files, "model_name", api_name="/predict")       # thresholds: "a,b,c,d,e", ...
draft_zip, note = client.predict(files, "model_name", "nifti,dicom-seg", api_name="/export")
pictures, notes = client.predict(files, "", 12, "IPH", 3.0, api_name="/teach")      # slice 12, subtype, r
```
Each takes plain values (files, model names, numbers, "a,b,c,d,e" thresholds) and keeps nothing between calls;
errors come back as one-line messages.

**Corrections** (`/edit`) work on the series a client session has loaded and analysed, as the buttons under the
viewer do: after `client.predict(files, "auto", "", False, api_name="/load")` and
`client.predict([model], None, "brain", 0.45, 0.5, False, True, api_name="/analyze")`,
```python
client.predict([model], model, 12, "brain", 0.45, 0.5, False, True,     # models, results model, slice, view
               "paint", "SDH", handle_file("brush.png"), -1, -1, api_name="/edit")
```
paints the non-zero pixels of `brush.png` (the slice's size) as SDH on slice 12. Actions: paint, erase, fill (a
closed outline and its inside), remove (the region under row, col), clear, accept, no-hemorrhage, revert, undo,
redo. `/session_export` then writes the corrected labels, and its report.json says per slice what a person did.
"""


def _threshold_sliders() -> tuple[list[gr.Slider], list[gr.Slider]]:
    """The ten threshold sliders; "Reset to calibrated" (not a per-slider reset, which would restore the build
    default rather than the model's calibration) brings them back."""
    gr.Markdown(
        "**Class thresholds c_k (probability, %)**: a subtype is present on a slice when its probability is above "
        "c_k. Calibrated thresholds are often far below 50%: the model's probabilities are not calibrated "
        "frequencies. " + ", ".join(f"{c} = {CLASS_NAMES[c].lower()}" for c in CLASSES) + "."
    )
    with gr.Row():
        cls = [
            gr.Slider(0.0, 100.0, value=50.0, step=0.001, label=f"{c} (%)", elem_id=f"cls-{c}", min_width=150,
                      buttons=[])
            for c in CLASSES
        ]
    gr.Markdown("**Mask thresholds m_k (heatmap, 0..255)**: where present, pixels whose heatmap is above m_k form "
                "the mask (Algorithm 1).")
    with gr.Row():
        msk = [
            gr.Slider(0, 255, value=v, step=1, label=c, elem_id=f"mask-{c}", min_width=150, buttons=[])
            for c, v in zip(CLASSES, PAPER_MASK_THRESHOLDS)
        ]
    return cls, msk


def _examples_list() -> tuple[list[list[list[str]]], list[str]]:
    files = sorted((EXAMPLES_DIR / "ctich").glob("*.jpg"))
    labels = []
    for f in files:
        parts = f.stem.split("_")  # ctich_<patient>_<slice>_<subtypes>
        label = f"{parts[3].replace('-', '+')} (CT-ICH {parts[1]}/{parts[2]})" if len(parts) >= 4 else f.stem
        known = (f.parent / "truth" / f"{f.stem}.png").is_file()
        labels.append(f"{label}, expert mask" if known else label)
    return [[[str(f)]] for f in files], labels


def _gallery(label: str, columns: int, **kwargs: Any) -> gr.Gallery:
    """A gallery that grows with its rows (CSS class ich-gallery lifts Gradio's max height) and keeps PNG pixels."""
    return gr.Gallery(
        label=label,
        columns=columns,
        height="auto",
        format="png",
        object_fit="contain",
        preview=False,
        allow_preview=True,
        elem_classes="ich-gallery",
        **kwargs,
    )


def _input_column(ui: SimpleNamespace, pool: ModelPool) -> None:
    ui.files = gr.File(
        label="Upload CT: DICOM files, a .zip, a NIfTI, or PNG/JPG slices",
        file_count="multiple",
        elem_id="upload",
        height=220,
    )
    with gr.Row():
        ui.image_window = gr.Dropdown(
            ["auto", *IMAGE_WINDOWS],
            value="auto",
            allow_custom_value=True,
            label="PNG/JPG: how the grey levels were made",
            info="auto: estimated from the image; or a preset, or CENTRE/WIDTH",
            elem_id="image-window",
        )
        ui.spacing = gr.Textbox(
            "",
            label="PNG/JPG: voxel spacing (mm)",
            info="SLICE,ROW,COL; empty: pixel size estimated from the skull",
            elem_id="spacing",
        )
    gr.Markdown("**Synthetic phantoms** (one click):")
    with gr.Row():
        ui.ph_buttons = [
            gr.Button(name, size="sm", min_width=60, elem_id=f"phantom-{i}") for i, name in enumerate(PHANTOM_EXAMPLES)
        ]
    ex_files, ex_labels = _examples_list()
    if ex_files:
        gr.Examples(
            [[f, "ctich"] for [f] in ex_files],  # the CT-ICH JPEGs carry the 40/120 window: declared, not estimated
            inputs=[ui.files, ui.image_window],
            example_labels=ex_labels,
            examples_per_page=12,
            label="Real CT-ICH slices (CC BY 4.0; Hssayeni et al., PhysioNet)",
        )
        # Gradio copies the example files into its cache once, here, and the examples keep pointing at those
        # copies; delete_cache would remove them like any upload after its age, breaking every example.
        ui.files.keep_in_cache.update(ui.files.temp_files)
    ui.add_files = gr.Checkbox(
        False, label="Add the next upload to this series (off: a new upload replaces it)", elem_id="add-files"
    )
    ui.info = gr.Markdown("No series loaded yet.", elem_id="series-info")
    ui.close_series = gr.Button("Close the series (and its review in progress)", size="sm", elem_id="close-series")
    ui.models = gr.CheckboxGroup(
        pool.choices(), value=pool.default_selection(), label="Models to compare", elem_id="models"
    )
    ui.analyze_btn = gr.Button("Analyze", variant="primary", elem_id="analyze")
    ui.status = gr.Markdown(NO_MODEL_HELP if not pool.refs else "", elem_id="status")


def _picture(label: str, elem_id: str, buttons: Sequence[str] = ("fullscreen",), visible: bool = True) -> gr.Image:
    """A slice picture of the viewer (a file the session writes, read-only)."""
    return gr.Image(
        label=label, interactive=False, height=380, elem_id=elem_id, buttons=list(buttons), visible=visible,
        type="filepath",
    )


def _viewer_column(ui: SimpleNamespace) -> None:
    with gr.Row():
        ui.index = gr.Slider(0, 1, value=0, step=1, label="Slice", interactive=False, elem_id="slice", scale=3)
        ui.window = gr.Dropdown(
            list(WINDOWS),
            value="paper",
            allow_custom_value=True,
            label="Window",
            scale=1,
            info="a preset or CENTRE/WIDTH in HU, e.g. 40/80; display only",
            elem_id="window",
        )
    ui.refine = gr.Checkbox(
        True,
        label="Refine the drafts with the CT: keep the model's blood where the density is blood, inside the skull "
        "(off: the paper's raw Algorithm 1 alone)",
        elem_id="refine",
    )
    with gr.Row():
        ui.overlay = _picture("Draft (results model)", "overlay", ["download", "fullscreen"])
        ui.raw_overlay = _picture("Raw Algorithm 1 (the paper), same thresholds", "raw-overlay")
        ui.agree = _picture("Agreement of the chosen models", "agreement")
        ui.truth = _picture("Known truth", "truth", visible=False)  # examples with a known truth only
    ui.legend = gr.HTML(legend_html(), elem_id="legend")
    gr.HTML(agreement_legend_html())
    _corrections(ui)
    with gr.Row(visible=False):  # the /edit endpoint's inputs for scripts (the buttons above use the same step)
        ui.edit_action = gr.Textbox("accept", label="action")
        ui.edit_mask = gr.File(label="mask image")
        ui.edit_row = gr.Number(-1, precision=0, label="row")
        ui.edit_col = gr.Number(-1, precision=0, label="col")
        ui.edit_btn = gr.Button("edit")
    with gr.Row():
        ui.mask_opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Mask opacity")
        ui.heat_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity")


def _corrections(ui: SimpleNamespace) -> None:
    """The annotator's tools: a brush on the slice, the review buttons and the navigation (keys: SHORTCUTS)."""
    ui.editing = gr.State(False)  # the accordion is open: only then does the editor follow the draft picture
    with gr.Accordion("Correct the draft: brush, eraser, review", open=False, elem_id="corrections") as ui.corrections:
        with gr.Row():
            ui.edit_mode = gr.Radio(list(STROKE_MODES), value="Paint", label="Brush mode", elem_id="edit-mode", scale=3)
            ui.edit_subtype = gr.Radio(list(CLASSES), value="IPH", label="Subtype to paint", elem_id="edit-subtype",
                                       scale=2)
            ui.edit_apply = gr.Button("Apply strokes", variant="primary", elem_id="edit-apply", scale=1)
        ui.editor = gr.ImageEditor(
            label="Draw on the slice (the draft under it), then apply; the brush menu sets its size, its eraser "
            "rubs out strokes not yet applied",
            type="numpy", sources=(), transforms=(), layers=False, height=520, buttons=[], elem_id="editor",
            brush=gr.Brush(colors=[STROKE_COLOUR], color_mode="fixed", default_size=6),
            eraser=gr.Eraser(default_size=10),
        )
        with gr.Row():
            ui.nav_buttons = {
                where: gr.Button(text, size="sm", elem_id=f"nav-{where}", min_width=80)
                for where, text in [("previous", "< Previous"), ("next", "Next >"), ("unreviewed", "Next unreviewed")]
            }
            ui.toggle_overlay = gr.Button("Overlay on/off", size="sm", elem_id="toggle-overlay", min_width=80)
        with gr.Row():
            ui.edit_buttons = {
                action: gr.Button(text, size="sm", elem_id=f"edit-{action}", min_width=80)
                for action, text in [("accept", "Accept slice"), ("no-hemorrhage", "No hemorrhage"),
                                     ("clear", "Clear slice"), ("revert", "Back to draft"), ("undo", "Undo"),
                                     ("redo", "Redo")]
            }
        gr.Markdown(SHORTCUTS_HELP, elem_id="shortcuts")


def _heatmap_section(ui: SimpleNamespace) -> None:
    gr.Markdown("### Heatmaps: every chosen model, every subtype, this slice")
    ui.native = gr.Checkbox(
        False,
        label="Show the native heatmap grid (nearest neighbour) instead of the smooth map that Algorithm 1 thresholds",
    )
    gr.Markdown("One row per model (name, family, native heatmap grid under it); click a row for it full size.")
    ui.gallery = _gallery("Heatmaps", 1, elem_id="heatmaps")
    ui.agree_table = gr.Dataframe(
        headers=AGREEMENT_HEADERS,
        label="Agreement over the series (pairs of models)",
        interactive=False,
        elem_id="agreement-table",
    )


def _threshold_section(ui: SimpleNamespace, pool: ModelPool) -> None:
    gr.Markdown(
        "### Thresholds\nMoving a slider re-thresholds the cached heatmaps (Algorithm 1); the network does "
        "not run again. They apply to the results model; each model keeps its own."
    )
    with gr.Row():
        ui.results_ref = gr.Radio(  # one click, no menu to open; every model, so that no choice goes stale
            [(pool.infos[r].name, r) for r in pool.refs],
            value=None,
            label="Results model (overlay, curves, volumes, export, corrections)",
            elem_id="results-model",
            scale=3,
        )
        ui.reset_btn = gr.Button("Reset to calibrated", scale=1, elem_id="reset")
    ui.cls_sliders, ui.mask_sliders = _threshold_sliders()


def _results_section(ui: SimpleNamespace) -> None:
    gr.Markdown("### Results")
    with gr.Row():
        ui.curves = gr.Plot(label="Slice probabilities", elem_id="curves")
        with gr.Column():
            ui.table = gr.Dataframe(
                headers=VOLUME_HEADERS, label="Volumes (mask) beside ABC/2", interactive=False, elem_id="volumes"
            )
            gr.Markdown(
                "Volume = voxels x voxel volume. ABC/2 = bedside ellipsoid estimate on the same mask "
                "(A: longest diameter, B: perpendicular to A, C: slices x thickness)."
            )
    ui.plot3d = gr.Plot(label="3D view of the masks (series)", elem_id="view3d")
    ui.update3d = gr.Button("Update 3D view", size="sm")


def _export_section(ui: SimpleNamespace, pool: ModelPool) -> None:
    gr.Markdown("### Export draft masks for annotators")
    gr.HTML(NOTICE_HTML)
    with gr.Row():
        ui.formats = gr.CheckboxGroup(
            available_formats(),
            value=[],
            scale=3,
            elem_id="formats",
            label="Formats for annotation tools (labels.nii.gz + report.json always)",
        )
        ui.export_btn = gr.Button("Export draft", scale=1, elem_id="export")
    ui.export_file = gr.File(
        label="Draft (zip, stamped with model, version and thresholds)",
        elem_id="export-file",
        interactive=False,
        height=90,
    )
    ui.export_note = gr.Markdown(elem_id="export-note")
    with gr.Accordion("Scripting: predict, export and teach on files (the /predict, /export, /teach API)", open=False):
        ui.api_files = gr.File(label="Files", file_count="multiple")
        default = pool.default_selection()[:1]
        ui.api_models = gr.Textbox(
            label="Model names, comma-separated (empty: the default model)",
            value=",".join(pool.infos[r].name for r in default),
        )
        with gr.Row():
            ui.api_cls = gr.Textbox("", label="Class thresholds IPH,IVH,SAH,SDH,EDH (empty: each model's calibrated)")
            ui.api_mask = gr.Textbox("", label="Mask thresholds 0..255 (empty: each model's calibrated)")
        with gr.Row():
            ui.api_formats = gr.Textbox("", label="Export formats, comma-separated (for Export; empty: none)")
            ui.api_slice = gr.Number(0, precision=0, label="Slice (for Teach)")
            ui.api_cls_name = gr.Dropdown(list(CLASSES), value="IPH", label="Subtype (for Teach)")
            ui.api_r = gr.Number(3.0, label="LSE sharpness r (for Teach)")
        with gr.Row():
            ui.api_btn = gr.Button("Predict")
            ui.api_export_btn = gr.Button("Export draft")
            ui.api_teach_btn = gr.Button("Teach")
        ui.api_report = gr.JSON(label="Report")
        ui.api_labels = gr.File(label="Label maps (NIfTI, one per model)", file_count="multiple")
        ui.api_zip = gr.File(label="Draft zip", interactive=False)
        ui.api_teach = _gallery("Teach pictures", 4)
        ui.api_notes = gr.Markdown()


def _teach_tab(ui: SimpleNamespace, pool: ModelPool) -> None:
    gap_refs, lse_refs = pool.find("gap"), pool.find("lse_unet")
    default_lse = pool.default_lse()
    gr.HTML(NOTICE_HTML)
    gr.Markdown(TEACH_INTRO)
    with gr.Row():
        ui.t_cls = gr.Dropdown(list(CLASSES), value="IPH", label="Subtype")
        ui.t_gap = gr.Dropdown(
            [(pool.infos[r].label, r) for r in gap_refs], value=(gap_refs or [None])[0], label="Grad-CAM baseline (gap)"
        )
        ui.t_lse = gr.Dropdown([(pool.infos[r].label, r) for r in lse_refs], value=default_lse, label="LSE-UNet")
        ui.t_r = gr.Slider(0.1, 50, value=3.0, step=0.1, label="LSE sharpness r to compare")
    ui.teach_btn = gr.Button("Explain the current slice of the Analyze tab", variant="primary", elem_id="teach")
    ui.t_maps = _gallery("Grad-CAM at its native grid vs the LSE-UNet map", 4, elem_id="teach-maps")
    gr.Markdown("#### The effect of r: pixel weights softmax(r f0) of LSE pooling")
    with gr.Row():
        ui.t_rmaps = _gallery("Weights for small, chosen and large r", 3)
        ui.t_rplot = gr.Plot(label="Pooled value and probability vs r")
    gr.Markdown("#### With and without HLoss")
    ui.t_hloss = _gallery("f0 with / without HLoss", 2, visible=False)
    ui.t_hnote = gr.Markdown()
    gr.Markdown("#### Algorithm 1 step by step (LSE-UNet, its current thresholds)")
    ui.t_steps = _gallery("Gate, threshold, argmax", 6)
    ui.t_notes = gr.Markdown()


def _layout(pool: ModelPool) -> SimpleNamespace:
    """Every component, created inside the current Blocks; returned by name for the wiring."""
    ui = SimpleNamespace(state=gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_drop_state))
    gr.Markdown(INTRO)
    gr.HTML(NOTICE_HTML)
    with gr.Accordion("Models", open=not pool.refs or any(not i.trained for i in pool.infos.values())):
        gr.Markdown(status_markdown(pool), elem_id="model-status")
        gr.Markdown(quality_markdown(pool), elem_id="model-quality")
    with gr.Tab("Analyze", id="analyze"):
        with gr.Row():
            with gr.Column(scale=4, min_width=320):
                _input_column(ui, pool)
            with gr.Column(scale=7):
                _viewer_column(ui)
        _heatmap_section(ui)
        _threshold_section(ui, pool)
        _results_section(ui)
        _export_section(ui, pool)
    with gr.Tab("Teach", id="teach"):
        _teach_tab(ui, pool)
    with gr.Tab("About", id="about"):
        gr.HTML(NOTICE_HTML)
        gr.Markdown(quality_markdown(pool), elem_id="about-quality")
        gr.Markdown(ABOUT)
    gr.HTML(NOTICE_HTML)
    return ui


def _editor_value(picture: str | None, editing: bool = True) -> Any:
    """The brush editor on the Draft picture, strokes cleared; left alone while its accordion is closed (a visitor
    who never corrects does not wait for the editor's copy of every picture)."""
    if not editing:
        return gr.skip()
    return {"background": picture, "layers": [], "composite": None} if picture else None


def _toggle(opacity: float) -> float:
    return 0.0 if opacity and opacity > 0 else 0.45


def _wire(ui: SimpleNamespace, app: App, demo: gr.Blocks) -> None:
    """Events. Public endpoints (api_name) first so that they keep their plain names; chained steps are private."""
    sliders = ui.cls_sliders + ui.mask_sliders
    view_in = [
        *[ui.state, ui.models, ui.results_ref, ui.index, ui.window],
        *[ui.mask_opacity, ui.heat_opacity, ui.native, ui.refine],
    ]
    view_all = [getattr(ui, name) for name in VIEW_ALL]
    view_slice = view_all[: len(VIEW_SLICE)]
    net = {"concurrency_id": "network", "concurrency_limit": CONCURRENCY}
    analyze = {
        "fn": app.analyze,
        "inputs": [v for v in view_in if v is not ui.index],  # the session knows its slice (the range may change)
        "outputs": [ui.state, ui.status, ui.index, ui.results_ref, ui.files, *sliders, *view_all],
        "show_progress_on": [ui.status],  # the bar (model, slices done of all) where the status is read
        **net,
    }
    private = _private_names()
    mesh = {"fn": app.render_3d, "inputs": [ui.state, ui.results_ref], "outputs": ui.plot3d}
    quiet = {"trigger_mode": "always_last", "show_progress": "hidden", "queue": False}  # no queue round trip

    ui.analyze_btn.click(**analyze, api_name="analyze", api_visibility="undocumented").then(**mesh, **private())
    gr.on(  # what a slice step, a window or an opacity changes: the slice's pictures only
        [ui.index.input, ui.window.change, ui.mask_opacity.release, ui.heat_opacity.release, ui.native.change],
        app.render,
        view_in,
        view_slice,
        api_name="render",
        api_visibility="undocumented",
        **quiet,
    )
    ui.refine.change(app.render_all, view_in, view_all, **quiet, **private()).then(**mesh, **private())
    gr.on(
        [s.input for s in sliders],
        app.set_thresholds,
        [*view_in, *sliders],
        [ui.state, *view_all],
        api_name="set_thresholds",
        api_visibility="undocumented",
        **quiet,
    )
    ui.reset_btn.click(
        app.reset_thresholds,
        [ui.state, ui.results_ref],
        [ui.state, *sliders],
        api_name="reset_thresholds",
        api_visibility="undocumented",
    ).then(app.render_all, view_in, view_all, **private()).then(**mesh, **private())
    edit_out = [ui.state, ui.index, *view_all]
    edit_in = [ui.edit_subtype, ui.edit_mask, ui.edit_row, ui.edit_col]
    ui.edit_btn.click(app.edit, [*view_in, ui.edit_action, *edit_in], edit_out, api_name="edit", **quiet)
    for action, btn in ui.edit_buttons.items():
        btn.click(app.edit, [*view_in, gr.State(action), *edit_in], edit_out, **quiet, **private())
    editor = {"fn": _editor_value, "inputs": [ui.overlay, ui.editing], "outputs": ui.editor}
    ui.corrections.expand(lambda: True, None, ui.editing, **quiet, **private()).then(**editor, **quiet, **private())
    ui.corrections.collapse(lambda: False, None, ui.editing, **quiet, **private())
    ui.edit_apply.click(
        app.edit_strokes, [*view_in, ui.edit_mode, ui.edit_subtype, ui.editor], edit_out, **quiet, **private()
    ).then(**editor, **quiet, **private())  # the strokes go once applied (the picture may not have changed)
    ui.overlay.select(app.click_draft, [*view_in, ui.edit_mode], edit_out, **quiet, **private())
    ui.overlay.change(**editor, **quiet, **private())
    for where, btn in ui.nav_buttons.items():
        btn.click(app.step, [*view_in, gr.State(where)], [ui.index, *view_slice], **quiet, **private())
    ui.toggle_overlay.click(_toggle, ui.mask_opacity, ui.mask_opacity, **quiet, **private()).then(
        app.render, view_in, view_slice, **quiet, **private()
    )
    ui.update3d.click(
        app.render_3d, [ui.state, ui.results_ref], ui.plot3d, api_name="view_3d", api_visibility="undocumented"
    )
    ui.export_btn.click(
        app.export,
        [ui.state, ui.results_ref, ui.formats],
        [ui.export_file, ui.export_note],
        api_name="session_export",
        api_visibility="undocumented",
    )
    ui.teach_btn.click(
        app.teach,
        [ui.state, ui.index, ui.window, ui.t_cls, ui.t_gap, ui.t_lse, ui.t_r],
        [ui.t_maps, ui.t_rmaps, ui.t_rplot, ui.t_hloss, ui.t_hnote, ui.t_steps, ui.t_notes],
        api_name="session_teach",
        api_visibility="undocumented",
        **net,
    )
    ui.api_btn.click(
        app.predict,
        [ui.api_files, ui.api_models, ui.api_cls, ui.api_mask],
        [ui.api_report, ui.api_labels],
        api_name="predict",
        **net,
    )
    ui.api_export_btn.click(
        app.export_files,
        [ui.api_files, ui.api_models, ui.api_formats, ui.api_cls, ui.api_mask],
        [ui.api_zip, ui.api_notes],
        api_name="export",
        **net,
    )
    ui.api_teach_btn.click(
        app.teach_files,
        [ui.api_files, ui.api_models, ui.api_slice, ui.api_cls_name, ui.api_r],
        [ui.api_teach, ui.api_notes],
        api_name="teach",
        **net,
    )
    load = ui.files.change(
        app.load_files,
        [ui.files, ui.image_window, ui.spacing, ui.add_files, ui.state],
        [ui.state, ui.info],  # a failed upload marks the series info and nothing else: the viewer stays as it was
        api_name="load",
        api_visibility="undocumented",
    )
    # chained and UI-only steps
    after_load = {**analyze, "fn": app.analyze_new}
    load.success(**after_load, **private()).then(**mesh, **private())
    ui.files.clear(app.clear_series, [ui.files, ui.state], [ui.state, ui.info], **private()).then(
        **after_load, **private()
    )
    ui.close_series.click(app.clear_series, [gr.State(None), ui.state], [ui.state, ui.info], **private()).then(
        lambda: None, None, ui.files, **private()  # a series reopened after a reload is not in the box
    ).then(**after_load, **private())
    for btn in ui.ph_buttons:
        btn.click(app.load_phantom, [btn, ui.state], [ui.state, ui.info], **private()).success(
            **after_load, **private()
        ).then(**mesh, **private())
    ui.results_ref.input(
        app.pick_results_model, view_in, [ui.results_ref, *sliders, *view_all], **quiet, **private()
    ).then(app.curves, [ui.state, ui.results_ref], ui.curves, **quiet, **private()).then(**mesh, **private())
    gr.on([s.release for s in sliders], **mesh, trigger_mode="always_last", **private())
    # a reload (or a visit after a restart) reopens this browser's review in progress
    demo.load(app.restore, [ui.browser_key, ui.state], [ui.browser_key, ui.state, ui.info], **private()).success(
        **after_load, **private()
    ).then(**mesh, **private())


def _private_names() -> Callable[[], dict[str, str]]:
    """Unique names for private events (a private event still reserves its api_name, by default the function's)."""
    counter = iter(range(1_000_000))
    return lambda: {"api_name": f"_step{next(counter)}", "api_visibility": "private"}


def build_demo(
    pool: ModelPool | None = None,
    phantoms: PhantomExamples | None = None,
    delete_cache: tuple[int, int] = DELETE_CACHE,
    reviews: ReviewStore | None = None,
) -> gr.Blocks:
    """The Blocks of the app for a model pool (default: the configured models) and the phantom examples;
    ``delete_cache`` is the (frequency, age) schedule for Gradio's cached files (``ICHDEMO_DELETE_CACHE``), run by
    the app's server lifespan (``launch_options``) rather than by Gradio: see ``tidy_cache``."""
    app = App(pool or ModelPool(), phantoms, EXAMPLES_DIR / "ctich", reviews)
    with gr.Blocks(title="ichdemo: ICH localisation and quantification") as demo:
        ui = _layout(app.pool)
        ui.browser_key = gr.BrowserState("", storage_key=REVIEW_STORAGE_KEY, secret=app.reviews.secret())
        _wire(ui, app, demo)
        demo.unload(_end_session)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    demo.ichdemo_app = app  # for tests and embedding
    demo.ichdemo_delete_cache = delete_cache
    return demo


def launch_options(max_file_size: str | int | None = MAX_FILE_SIZE) -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` that belong to the app (theme, CSS, limits, paths, the cache
    schedule); Gradio 6 takes the theme and CSS here rather than in ``gr.Blocks``."""
    return {
        "theme": gr.themes.Soft(primary_hue="orange", secondary_hue="slate"),
        "css": CSS,
        "head": SHORTCUTS_JS,
        "max_file_size": max_file_size,
        "allowed_paths": [str(EXAMPLES_DIR)],
        "footer_links": ["api", "settings"],
        "show_error": True,  # API clients get the one-line message of a failed call, not a generic error
        "app_kwargs": {"lifespan": server_lifespan},
    }


demo = build_demo()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ichdemo web app (research use only, not for diagnosis).")
    p.add_argument(
        "--host",
        default=None,
        help="interface to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for all)",
    )
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model references (bundled names, folders, hf://owner/repo@rev); "
        "default: $ICHDEMO_MODELS, $ICHDEMO_MODELS_FILE, else checkpoints/",
    )
    p.add_argument("--max-file-size", default=MAX_FILE_SIZE, help="largest upload per file, e.g. 500mb (default 1gb)")
    p.add_argument(
        "--no-warm", action="store_true", help="skip the start-up warm-up (phantom examples, models)"
    )
    return p.parse_args(argv)


def configure_logging() -> None:
    """The server log: ichdemo's INFO and up, the libraries' WARNING and up. Libraries log what they read at INFO
    (highdicom names the source images' UIDs for every DICOM SEG), and nothing uploaded goes to the log."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("ichdemo").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> None:
    global demo
    args = parse_args(argv)
    configure_logging()
    if args.models:
        demo = build_demo(ModelPool([r.strip() for r in args.models.split(",") if r.strip()]))
    if not args.no_warm:
        demo.ichdemo_app.warm()
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options(args.max_file_size))


if __name__ == "__main__":
    main()

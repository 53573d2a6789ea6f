"""What the app shows as text: Markdown and HTML built from the library's plain data, and the app's CSS.

The library (``ichdemo``) returns numbers, arrays and dataclasses; every sentence, table cell and colour swatch the
browser shows is formatted here, next to the CSS classes it uses.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from ichdemo.catalogue import NO_MODEL_HELP, UNTRAINED, ModelPool
from ichdemo.constants import CLASS_COLORS, CLASS_NAMES, CLASSES, RESEARCH_NOTICE
from ichdemo.viz import AGREEMENT_CODES
from ichdemo.volume import Volume

NOTICE_HTML = f'<div class="ich-notice">⚠ {RESEARCH_NOTICE} Not for diagnosis or treatment decisions.</div>'
CSS = """
.ich-notice {background:#fff4e5;border:1px solid #f0a040;color:#5a3200;padding:6px 10px;border-radius:6px;
             font-weight:600;margin:4px 0}
.ich-legend {font-size:0.9em;padding:2px 0}
.ich-warning {color:#8a1c00;font-weight:600;padding:2px 0}
.ich-untrained {color:#b00020;font-weight:600}
.ich-gallery .grid-wrap {max-height:none !important; min-height:0 !important; height:auto !important}
#overlay img, #raw-overlay img, #agreement img {width:100%; height:100%; object-fit:contain}
#upload {min-height:220px}  /* the box keeps its height with files in it: nothing below moves under the pointer */
#heatmaps .grid-wrap {padding-top:30px}  /* the rows start below the block's label */
#heatmaps .thumbnail-item {aspect-ratio:auto !important; height:auto !important}
#heatmaps .thumbnail-item img {width:100% !important; height:auto !important; object-fit:contain}
#heatmaps .caption-label {white-space:normal !important; overflow:visible !important; position:static !important;
                          text-overflow:clip !important; max-width:none !important}
"""


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def legend_html(volumes_ml: Mapping[str, float] | None = None, present: Sequence[str] | None = None) -> str:
    """A one-line HTML legend: a colour square and the name of every subtype, with mL when ``volumes_ml`` is given.

    Subtypes not in ``present`` (when given) are shown dimmed.
    """
    items = []
    for c in CLASSES:
        dim = present is not None and c not in present
        ml = f" {volumes_ml[c]:.2f} mL" if volumes_ml is not None and c in volumes_ml else ""
        items.append(
            f'<span style="margin-right:14px;opacity:{0.35 if dim else 1}" title="{CLASS_NAMES[c]}">'
            f'<span style="display:inline-block;width:12px;height:12px;background:{_hex(CLASS_COLORS[c])};'
            f'border:1px solid #444;margin-right:4px;vertical-align:middle"></span>{c}{ml}</span>'
        )
    return '<div class="ich-legend">' + "".join(items) + "</div>"


def agreement_legend_html() -> str:
    """HTML legend of the agreement colours."""
    return (
        '<div class="ich-legend">'
        + "".join(
            f'<span style="margin-right:14px"><span style="display:inline-block;width:12px;height:12px;'
            f'background:{_hex(rgb)};border:1px solid #444;margin-right:4px;vertical-align:middle"></span>{text}</span>'
            for text, rgb in AGREEMENT_CODES.values()
        )
        + "</div>"
    )


def warnings_html(warnings: Sequence[str]) -> str:
    """One highlighted line per warning (implausible volumes...), escaped."""
    return "".join(f'<div class="ich-warning">⚠ {html.escape(w, quote=False)}</div>' for w in warnings)


def info_markdown(volume: Volume | None) -> str:
    """Series facts and warnings."""
    if volume is None:
        return "No series loaded yet."
    s = volume.summary()
    sp = " x ".join(f"{v:g}" for v in s["spacing_mm"])
    lines = [
        f"**{s['description'] or s['source']}**",
        f"- {s['slices']} slice(s) of {s['cols']} x {s['rows']} px; spacing {sp} mm (slice x row x col)"
        + (" — **assumed** (the input carries none): volumes are estimates" if s["spacing_assumed"] else ""),
        f"- values: {s['values']}" + (" (window presets do not apply)" if volume.prewindowed else ""),
    ]
    if s["slices"] == 1:
        lines.append(
            "- one slice: the models read each slice with its two neighbours; here it stands in for both, so its "
            "probabilities can differ from the same slice inside its series"
        )
    lines += [f"- ⚠ {w}" for w in s["warnings"]]
    return "\n".join(lines)


def status_markdown(pool: ModelPool) -> str:
    """The models, untrained ones flagged, or how to add a model."""
    if not pool.infos:
        lines = [f"**{NO_MODEL_HELP}**"]
    else:
        lines = [
            f"- `{i.name}` ({i.family}, input {i.cfg.input_size} px, native heatmap {i.cfg.heatmap_size}x"
            f"{i.cfg.heatmap_size})" + ("" if i.trained else f" — **{UNTRAINED}**")
            for i in pool.infos.values()
        ]
    lines += [f"- could not use `{ref}`: {msg}" for ref, msg in pool.errors.items()]
    return "\n".join(lines)


def heatmap_rows_markdown(rows: Sequence[tuple[str, int]], volume: Volume) -> str:
    """Names the rows of the heatmap gallery (one row of five subtypes per model run)."""
    if not rows:
        return "Run at least one model to see its heatmaps."
    lines = [
        f"{n}. `{name}`: native heatmap {h}x{h}, shown on the {volume.shape[2]}x{volume.shape[1]} slice"
        for n, (name, h) in enumerate(rows, 1)
    ]
    return "Rows, top to bottom (columns: " + ", ".join(CLASSES) + "):\n\n" + "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def quality_markdown(pool: ModelPool) -> str:
    """How good each model's drafts measured on data held out of its training and calibration, in plain words."""
    rows = []
    for i in pool.infos.values():
        q = i.quality
        c, b = q.get("ctich_held_out") or {}, q.get("ich_boxes") or {}
        dice = c.get("dice_any") or {}
        inside, touched = b.get("draft_pixels_in_boxes") or {}, b.get("boxes_touched") or {}
        rows.append(
            f"| `{i.name}` | {i.family} | {_num(dice.get('refined'))} ({_num(dice.get('raw'))}) | "
            f"{_pct(c.get('pointing'))} | {_pct(inside.get('refined'))} | {_pct(touched.get('refined'))} | "
            f"{_pct(b.get('pointing_labelled_subtype'))} | {_num(q.get('auroc_validation'))} |"
        )
    if not rows:
        return ""
    return "\n".join([
        "**How good are the drafts?** Measured on scans no model saw in training or calibration "
        "(`python -m train.evaluate_drafts`, docs/RESULTS.md). *Dice*: overlap of the refined draft with the "
        "expert's hemorrhage mask on CT-ICH patients 77-81 (1 = identical, 0 = none; the paper's raw Algorithm 1 "
        "in brackets). *Peak on blood*: how often the heatmap's strongest point lies on the hemorrhage. On "
        "ich-boxes (other hospitals): the share of draft pixels inside the experts' boxes and of boxes the draft "
        "reaches. *AUROC*: telling slices with and without each subtype apart (validation patients; 0.5 = chance).",
        "",
        "| model | family | Dice CT-ICH 77-81 (raw) | peak on blood | draft in boxes | boxes reached | "
        "peak in box | AUROC |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])


def review_html(edits) -> str:
    """Review progress of a person's corrections (``ichdemo.edits.Edits``), one line under the legend; "" before
    the first correction."""
    if edits is None:
        return ""
    counts = edits.summary()["counts"]
    n = sum(counts.values())
    return (f'<div class="ich-legend"><b>Reviewed {n - counts["draft"]} of {n} slices</b> (edited '
            f'{counts["edited"]}, accepted {counts["reviewed"]}, no hemorrhage {counts["no-hemorrhage"]}); '
            "volumes and exports use the corrected slices.</div>")


STROKE_COLOUR = "#ff00ff"  # the brush: one colour whatever the subtype (the mode and subtype say what it does)

SHORTCUTS_HELP = (
    "**Keys** (outside text boxes): **&larr; / &rarr;** previous / next slice, **n** next unreviewed slice, "
    "**a** accept slice, **h** no hemorrhage, **p** apply strokes, **b** paint, **e** erase, **f** fill outline, "
    "**r** remove-a-region mode, **1-5** subtype (IPH, IVH, SAH, SDH, EDH), **o** overlay on/off, **z** undo, "
    "**y** redo. Your edits are kept for this browser: a reload (even after a server restart) reopens the series "
    "with them, until you close it, load another, or a day passes (by default). For that the server keeps a copy of "
    "the series you edit, which only this browser's key opens; export to keep your work."
)

SHORTCUTS_JS = """<script>
(() => {
  const press = (id) => { const el = document.getElementById(id); if (el) el.click(); };
  const pick = (group, value) => {
    const el = document.querySelector(`#${group} input[value="${value}"]`);
    if (el) el.click();
  };
  const modes = {b: "Paint", e: "Erase", f: "Fill outline", r: "Remove a region (click it)"};
  const subtypes = ["IPH", "IVH", "SAH", "SDH", "EDH"];
  const buttons = {ArrowRight: "nav-next", ArrowLeft: "nav-previous", n: "nav-unreviewed", a: "edit-accept",
                   h: "edit-no-hemorrhage", p: "edit-apply", o: "toggle-overlay", z: "edit-undo", y: "edit-redo"};
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    const typing = t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
      (t.tagName === "INPUT" && !["radio", "checkbox", "button"].includes(t.type)));
    if (typing || e.altKey || e.metaKey || e.ctrlKey || e.repeat) return;
    if (t && t.closest && t.closest("#editor")) return;  // the editor's own keys
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (buttons[k]) press(buttons[k]);
    else if (modes[k]) pick("edit-mode", modes[k]);
    else if (k >= "1" && k <= "5") pick("edit-subtype", subtypes[Number(k) - 1]);
    else return;
    e.preventDefault();
  });
})();
</script>"""

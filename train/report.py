"""Reports of ``train.evaluate`` results: a markdown table and a self-contained HTML page (plotly, inline JS).

The HTML holds ROC curves with the Youden operating point marked, Dice-versus-mask-threshold curves, the Dice
tables and example overlays (PNG, base64), and needs no network to open (``include_plotlyjs=True``).
"""

from __future__ import annotations

import base64
import html as html_lib
from typing import Any

import numpy as np

from ichdemo.constants import CLASS_COLORS, CLASSES, RESEARCH_NOTICE

DICE_COLUMNS: tuple[str, ...] = ("Normal", *CLASSES, "AVG")
SETTINGS: dict[str, str] = {
    "calibrated": "thresholds from the checkpoint's config.json",
    "lopo": "mask thresholds leave-one-patient-out on the other masked patients",
    "tuned_on_eval": "mask thresholds tuned on these evaluation slices (optimistic)",
    "true_gate": "true slice labels instead of the class gate (upper bound of gating)",
}


def fmt(v: Any) -> str:
    """A metric with 3 decimals; "n/a" for None or NaN."""
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def auroc_row(results: dict) -> str:
    a = results.get("auroc", {})
    return "| " + " | ".join(fmt(a.get(c)) for c in (*CLASSES, "AVG")) + " |"


def dice_rows(results: dict) -> list[str]:
    rows = []
    for setting, scores in results.get("dice", {}).items():
        per = scores.get("per_class", {})
        sub = (scores.get("subtype_mean") or {}).get("value")
        rows.append(f"| {setting} | " + " | ".join(fmt(per.get(c)) for c in DICE_COLUMNS)
                    + f" | {fmt(sub)} | {fmt((scores.get('any') or {}).get('ICH'))} |")
    return rows


def instance_rows(results: dict) -> list[str]:
    rows = []
    for setting, scores in results.get("dice", {}).items():
        inst = scores.get("instance", {})
        cells = []
        for c in CLASSES:
            e = inst.get(c) or {}
            cells.append(f"{fmt(e.get('mean'))} ± {fmt(e.get('sd'))} (n={e.get('n', 0)})" if e.get("n") else "n/a")
        rows.append(f"| {setting} | " + " | ".join(cells) + " |")
    return rows


def markdown(results: dict) -> str:
    """The results as markdown: AUROC table, Dice tables per threshold setting, instance Dice."""
    head = "| " + " | ".join((*CLASSES, "AVG")) + " |"
    lines = [
        f"## {results.get('architecture')} ({results.get('encoder')}) on `{results.get('data')}`", "",
        f"AUROC on the {results.get('auroc_part')} part ({results.get('auroc_slices')} slices):", "",
        head, "|" + "---|" * (len(CLASSES) + 1), auroc_row(results), "",
        f"Dice on {results.get('mask_slices')} masked slices of the {results.get('mask_part')} part "
        f"(patients {', '.join(map(str, results.get('mask_patients', [])))}), input grid "
        f"{results.get('input_size')} px, heatmaps: {results.get('heatmap_method')}:", "",
        "| thresholds | " + " | ".join(DICE_COLUMNS) + " | subtype mean | any ICH |",
        "|" + "---|" * (len(DICE_COLUMNS) + 3), *dice_rows(results), "",
        f"Instance Dice (lesions over {results.get('min_voxels')} voxels), mean ± sd:", "",
        "| thresholds | " + " | ".join(CLASSES) + " |", "|" + "---|" * (len(CLASSES) + 1), *instance_rows(results), "",
        "Settings: " + "; ".join(f"**{k}**: {v}" for k, v in SETTINGS.items() if k in results.get("dice", {})) + ".",
        "", *pointing_lines(results),
    ]
    return "\n".join(lines)


def pointing_lines(results: dict) -> list[str]:
    """The pointing game (threshold-free localisation), when the results have it."""
    p = results.get("pointing")
    if not p or not p.get("slices"):
        return []
    return [f"Pointing game on {p['slices']} slices with hemorrhage: heatmap peak on the lesion (within "
            f"{p['tolerance_px']} px) {fmt(p['hit_rate'])}, peak inside the head {fmt(p['peak_in_head'])}.", ""]


def summary_line(results: dict) -> str:
    """One line for the console."""
    cal = results.get("dice", {}).get("calibrated", {})
    sub = (cal.get("subtype_mean") or {}).get("value")
    return (f"AUROC AVG {fmt(results.get('auroc', {}).get('AVG'))}; Dice AVG "
            f"{fmt(cal.get('per_class', {}).get('AVG'))}, subtype mean {fmt(sub)}, "
            f"any ICH {fmt((cal.get('any') or {}).get('ICH'))}; pointing hit "
            f"{fmt((results.get('pointing') or {}).get('hit_rate'))}, peak in head "
            f"{fmt((results.get('pointing') or {}).get('peak_in_head'))}")


def _rgb(name: str) -> str:
    r, g, b = CLASS_COLORS[name]
    return f"rgb({r},{g},{b})"


def roc_figure(results: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, roc in results.get("roc", {}).items():
        auc = results.get("auroc", {}).get(name)
        fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"{name} (AUROC {fmt(auc)})",
                                 line={"color": _rgb(name)}))
        pt = roc["point"]
        fig.add_trace(go.Scatter(x=[pt["fpr"]], y=[pt["tpr"]], mode="markers", showlegend=False,
                                 marker={"color": _rgb(name), "size": 11, "symbol": "x"},
                                 name=f"{name} threshold {pt['threshold']:.3f}",
                                 hovertext=f"{name}: class threshold {pt['threshold']:.3f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, showlegend=False))
    fig.update_layout(title="ROC per subtype (x: the class threshold's operating point)", xaxis_title="1 - specificity",
                      yaxis_title="sensitivity", width=620, height=520)
    return fig


def dice_curve_figure(results: dict):
    import plotly.graph_objects as go

    curves = results.get("dice_curves") or {}
    fig = go.Figure()
    for name in CLASSES:
        if name in curves.get("class_dice", {}):
            fig.add_trace(go.Scatter(x=curves["grid"], y=curves["class_dice"][name], mode="lines+markers",
                                     name=f"{name} Dice", line={"color": _rgb(name)}))
    fig.update_layout(title=f"Dice versus mask threshold (others at their tuned value; objective: "
                      f"{curves.get('objective')})", xaxis_title="mask threshold (0..255 heatmap)",
                      yaxis_title="Dice", width=620, height=520)
    return fig


def overlay_png(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> str:
    """Side by side: image with the true mask outline, image with predicted labels; base64 PNG."""
    import cv2

    grey = np.clip(image * 255, 0, 255).astype(np.uint8)
    left = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    right = left.copy()
    contours, _ = cv2.findContours((truth > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(left, contours, -1, (255, 255, 255), 1)
    for k, name in enumerate(CLASSES, start=1):
        sel = pred == k
        right[sel] = (0.45 * right[sel] + 0.55 * np.array(CLASS_COLORS[name])).astype(np.uint8)
    cv2.drawContours(right, contours, -1, (255, 255, 255), 1)
    pane = np.concatenate([left, np.full((left.shape[0], 4, 3), 255, np.uint8), right], axis=1)
    scale = max(1, 256 // max(pane.shape[0], 1))
    pane = cv2.resize(pane, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(pane, cv2.COLOR_RGB2BGR))
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def _table_html(md_text: str) -> str:
    """A minimal markdown-table-to-HTML conversion (no dependency): tables, headings and paragraphs."""
    out, in_table = [], False
    for line in md_text.splitlines():
        if line.startswith("|"):
            cells = [html_lib.escape(c.strip()) for c in line.strip("|").split("|")]
            if set(line.replace("|", "").strip()) <= {"-"}:
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("## "):
            out.append(f"<h2>{html_lib.escape(line[3:])}</h2>")
        elif line.strip():
            out.append(f"<p>{html_lib.escape(line).replace('**', '')}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def html(results: dict, overlays: list[dict] | None = None) -> str:
    """The full self-contained HTML report (ROC and Dice curves, tables, overlays)."""
    roc = roc_figure(results).to_html(full_html=False, include_plotlyjs=True)
    dice = dice_curve_figure(results).to_html(full_html=False, include_plotlyjs=False)
    blocks = []
    for ov in overlays or []:
        png = overlay_png(ov["image"], ov["truth"], ov["pred"])
        probs = ", ".join(f"{k} {v:.2f}" for k, v in ov.get("probs", {}).items())
        blocks.append(f'<figure><img src="data:image/png;base64,{png}"/><figcaption>{html_lib.escape(ov["title"])}'
                      f"<br/>left: truth outline; right: predicted labels. p: {html_lib.escape(probs)}</figcaption>"
                      "</figure>")
    legend = " ".join(f'<span style="color:{_rgb(c)}">&#9632; {c}</span>' for c in CLASSES)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} .row{display:flex;flex-wrap:wrap}"
             "figure{display:inline-block;margin:6px} figcaption{font-size:12px;max-width:520px}")
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8"/><title>ichdemo evaluation</title>',
        f"<style>{style}</style></head><body>", f"<p><b>{html_lib.escape(RESEARCH_NOTICE)}</b></p>",
        _table_html(markdown(results)), f'<div class="row"><div>{roc}</div><div>{dice}</div></div>',
        f"<h2>Example overlays</h2><p>{legend}</p>", "".join(blocks), "</body></html>",
    ])


"""The one path a CT takes from input to drafts: ``Volume`` -> ``analyze`` -> ``Analysis`` -> ``save``.

Every front end runs this path: the CLI (``predict``), batch ``annotate``, the app's session and its API, and
training-time calibration and evaluation share its pieces (``ichdemo.inference.run_network`` and ``maps_on_grid``),
so a threshold calibrated in training means the same in the app.

1. ``analyze(lm, volume)``: windows the volume with the model's window, stacks 3 slices, letterboxes to the
   model's input (``ichdemo.transforms.prepare``), runs the network once (``LoadedModel.run``), scales the heatmaps
   to 0..255 and maps them back onto the source grid (``maps_on_grid``). Returns an in-memory ``Analysis``.
2. ``Analysis.labels(thresholds)``: Algorithm 1 on the cached heatmaps, then the refinement that keeps the draft's
   blood where the CT shows blood inside the skull (``ichdemo.refine``; ``refine=False`` gives the paper's raw
   Algorithm 1). Cheap, so the app re-runs it on every slider move without the network.
3. ``save(analysis, volume, out_dir, formats=...)``: writes the predict folder and the requested export formats, and
   returns what it wrote and what it skipped (``Saved``).

Example:
    >>> lm = load_model("lse_unet_lite0_blood")
    >>> vol = load_volume("series.zip")
    >>> analysis = analyze(lm, vol)
    >>> labels = analysis.labels()                      # (S, H, W) uint8 with the model's calibrated thresholds
    >>> saved = save(analysis, vol, "out/", formats=["nifti", "dicom-seg"])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichdemo import __version__
from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.edits import Edits
from ichdemo.errors import UnsupportedInputError
from ichdemo.inference import LoadedModel, load_model
from ichdemo.quantify import Thresholds, abc2_ml, algorithm1, scale_heatmaps, volumes_ml
from ichdemo.refine import Anatomy, RefineParams, RefineResult, anatomy, refine
from ichdemo.transforms import ResizeSpec, prepare
from ichdemo.volume import Volume

__all__ = ["Analysis", "Saved", "analyze", "load_model", "maps_on_grid", "save", "save_draft"]

Progress = Callable[[int, int], None]
"""Called with (slices done, slices in all) while the network runs."""
MAX_INTRACRANIAL_ML = 2000.0
"""More than any adult skull holds (about 1200-1700 mL): a hemorrhage volume above it, or above the intracranial
volume the refinement measured, says the spacing is wrong, not that the bleed is that large."""


def maps_on_grid(native: np.ndarray, thresholds: Thresholds, spec: ResizeSpec, nearest: bool = False) -> np.ndarray:
    """Raw heatmaps (N, 5, h, w) at the model's native grid -> (N, 5, rows, cols) uint8 on the 0..255 scale of
    ``thresholds.scale_mode``, on the grid ``spec`` maps back to (bilinear; ``nearest`` shows the native cells).

    The one scale-and-resize path: the pipeline uses it with the source grid, training-time evaluation with the
    input grid (``ResizeSpec(size, size, size)``). Rounding up makes ``map255 > m`` exact for an integer m.
    """
    out = np.empty(native.shape[:2] + (spec.rows, spec.cols), np.uint8)
    for s in range(native.shape[0]):  # slice by slice keeps the float temporaries small
        scaled = scale_heatmaps(native[s : s + 1].astype(np.float32), thresholds.scale_mode, thresholds.scale)[0]
        np.clip(np.ceil(spec.to_source(scaled, nearest=nearest)), 0, 255, out=out[s], casting="unsafe")
    return out


@dataclass
class Analysis:
    """What the network said about one series; thresholds and refinement are applied on demand.

    Attributes:
        model: name of the model that produced it.
        probs: (S, 5) slice probabilities.
        maps255: (S, 5, H, W) uint8 heatmaps on the source grid, scaled to 0..255 (the model's scale mode).
        native: (S, 5, h, w) float16 raw heatmaps at the model's native resolution (before any rescaling).
        spacing: (slice, row, col) mm of the source grid.
        thresholds: the model's calibrated thresholds (the default for ``labels``).
        model_info: ``LoadedModel.describe()``.
        hu: (S, H, W) the series in HU as the model sees it, for the refinement: clipped at the top of the model's
            window, so that a DICOM series and the same CT as an 8-bit export in that window (CT-ICH's JPEGs) are
            refined alike (dense blood and bone both saturate there); None disables the refinement.
        refine_params: the model's refinement settings.
    """

    model: str
    probs: np.ndarray
    maps255: np.ndarray
    native: np.ndarray
    spacing: tuple[float, float, float]
    thresholds: Thresholds
    model_info: dict[str, Any] = field(default_factory=dict)
    hu: np.ndarray | None = field(default=None, repr=False)
    refine_params: RefineParams = field(default_factory=RefineParams)
    refine_skipped: str | None = None
    _anatomy: Anatomy | None = field(default=None, repr=False)

    @property
    def anatomy(self) -> Anatomy | None:
        """The series' intracranial mask and blood band (computed once); None without HU, or when the CT cannot
        tell blood from bone (a window saturating inside the blood band: ``refine_skipped`` says why)."""
        if self._anatomy is None and self.hu is not None and self.refine_skipped is None:
            try:
                self._anatomy = anatomy(self.hu, self.spacing, self.refine_params)
            except UnsupportedInputError as err:
                self.refine_skipped = f"drafts not refined: {err}"
        return self._anatomy

    def share_anatomy(self, other: Analysis) -> bool:
        """Take ``other``'s computed anatomy when both see the series alike (same clipped HU, same refinement
        settings): one intracranial mask per series, not one per model. Returns True when taken."""
        same = (other._anatomy is not None and other.refine_params == self.refine_params and self.hu is not None
                and other.hu is not None and other.hu.shape == self.hu.shape and np.array_equal(other.hu, self.hu))
        if same:
            self._anatomy = other._anatomy
        return same

    @property
    def refines(self) -> bool:
        """True when ``labels`` can refine (HU present and their densities usable)."""
        return self.anatomy is not None

    def refinement(self, thresholds: Thresholds | None = None) -> RefineResult | None:
        """The refinement of Algorithm 1's labels under ``thresholds`` (None when it cannot run: ``refines``)."""
        if not self.refines:
            return None
        t = thresholds or self.thresholds
        raw = algorithm1(self.probs, self.maps255, t.class_thresholds, t.mask_thresholds)
        return refine(self.hu, self.probs, self.maps255, raw, t.class_thresholds, self.spacing, self.refine_params,
                      known=self.anatomy)

    def labels(self, thresholds: Thresholds | None = None, refined: bool = True) -> np.ndarray:
        """(S, H, W) uint8 label map (0 normal, k = CLASSES[k-1]): Algorithm 1, refined unless ``refined`` is False
        (or the analysis has no HU); cheap, no network."""
        t = thresholds or self.thresholds
        if refined and self.refines:
            return self.refinement(t).labels
        return algorithm1(self.probs, self.maps255, t.class_thresholds, t.mask_thresholds)

    def report(
        self, labels: np.ndarray, thresholds: Thresholds | None = None, volume: Volume | None = None,
        refined: bool = True,
    ) -> dict:
        """JSON-ready report: per-slice probabilities, thresholds, volumes (mL) and ABC/2, how the drafts were made,
        warnings about implausible volumes, model and notice."""
        t = thresholds or self.thresholds
        ml = volumes_ml(labels, self.spacing)
        head = self.anatomy.intracranial_ml if self.anatomy is not None else None
        rep = {
            "notice": RESEARCH_NOTICE,
            "ichdemo_version": __version__,
            "model": self.model_info,
            "thresholds": t.to_dict(),
            "drafts": {
                "method": "refined" if refined and self.refines else "algorithm1",
                "refine": self.refine_params.to_dict() if refined and self.refines else None,
                "refine_skipped": self.refine_skipped if refined else None,
                "intracranial_ml": None if head is None else round(head, 2),
            },
            "classes": list(CLASSES),
            "spacing_mm": list(self.spacing),
            "volumes_ml": ml,
            "abc2_ml": abc2_ml(labels, self.spacing),
            "warnings": implausible_volumes(ml, head, volume.spacing_assumed if volume is not None else False)
            + ([self.refine_skipped] if refined and self.refine_skipped else []),
            "slices": [
                {"index": i, "probabilities": {c: round(float(p), 5) for c, p in zip(CLASSES, row)},
                 "present": [c for c, p, thr in zip(CLASSES, row, t.class_thresholds) if p > thr]}
                for i, row in enumerate(self.probs)
            ],
        }
        if volume is not None:
            rep["input"] = volume.summary()
        return rep


def implausible_volumes(ml: dict[str, float], intracranial_ml: float | None, spacing_assumed: bool) -> list[str]:
    """Warnings for hemorrhage volumes no head can hold: above the measured intracranial volume, or above
    ``MAX_INTRACRANIAL_ML`` (and an intracranial volume outside an adult range says the spacing is off)."""
    out = []
    total = float(ml.get("total", sum(v for k, v in ml.items() if k in CLASSES)))
    why = " (the spacing was assumed: set the true pixel spacing)" if spacing_assumed else ""
    if intracranial_ml is not None and intracranial_ml > 0 and total > intracranial_ml:
        out.append(f"hemorrhage volume {total:.0f} mL exceeds the intracranial volume {intracranial_ml:.0f} mL: "
                   f"not plausible{why}")
    elif total > MAX_INTRACRANIAL_ML:
        out.append(f"hemorrhage volume {total:.0f} mL exceeds what a skull holds: not plausible{why}")
    if intracranial_ml is not None and intracranial_ml > MAX_INTRACRANIAL_ML:
        out.append(f"intracranial volume {intracranial_ml:.0f} mL is larger than any head: volumes are off{why}")
    return out


def analyze(
    lm: LoadedModel,
    vol: Volume,
    *,
    batch_size: int = 4,
    method: str = "auto",
    progress: Progress | None = None,
    index: int | None = None,
) -> Analysis:
    """Run the network once over every slice of ``vol`` (3-slice stacks) and keep heatmaps on the source grid.

    Args:
        lm: from ``load_model``.
        vol: from ``ichdemo.io.load_volume``.
        batch_size: slices per forward pass.
        method: heatmap method for ``ichdemo.cam.heatmaps`` ("auto": Grad-CAM for gap, the LSE map for lse_unet).
        progress: called with (slices done, slices in all) after every batch.
        index: only this slice (its stack of neighbours, as in the whole run): an Analysis of one slice, the same
            as that slice of the whole run, for a first look while the rest runs.
    """
    data = vol.data
    if index is not None:
        lo = max(0, index - 1)
        data = vol.data[lo : index + 2]  # the slice and its neighbours: its 3-slice stack is the whole run's
    x, spec = prepare(data, vol.prewindowed, lm.cfg.input_size, lm.cfg.window)
    if index is not None:
        x, data = x[index - lo : index - lo + 1], data[index - lo : index - lo + 1]
    total = x.shape[0]
    out = lm.run(x, batch_size, method, progress=(lambda done: progress(done, total)) if progress else None)
    t = lm.thresholds
    maps255 = maps_on_grid(out.native, t, spec)
    centre, width = lm.cfg.window
    hu = None if vol.prewindowed else np.minimum(data, np.float32(centre + width / 2))
    return Analysis(lm.name, out.probs, maps255, out.native.astype(np.float16), vol.spacing, t, lm.describe(), hu,
                    lm.cfg.refine)


@dataclass
class Saved:
    """What ``save`` wrote.

    Attributes:
        labels: the (S, H, W) label map that was written.
        report: the JSON report that was written.
        files: the predict folder's files (``ichdemo.export.predictions.write_prediction``).
        exported: {format: path} of the export formats written.
        skipped: {format: why} of requested formats this input or result cannot have.
    """

    labels: np.ndarray
    report: dict[str, Any]
    files: dict[str, Path]
    exported: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def save(
    analysis: Analysis,
    volume: Volume,
    out_dir: str | Path,
    thresholds: Thresholds | None = None,
    formats: Sequence[str] = (),
    *,
    export_dir: str | Path | None = None,
    source_paths: Sequence[str] | None = None,
    heatmaps: bool = True,
    keep_phi: bool = False,
    name: str | None = None,
    refined: bool = True,
    edits: Edits | None = None,
) -> Saved:
    """Write the predict folder (labels.nii.gz, report.json, heatmaps.npz, label PNGs for images) and ``formats``.

    Args:
        analysis: from ``analyze``; ``volume`` is the series it analysed.
        out_dir: the predict folder.
        thresholds: Algorithm 1 thresholds (default: the model's calibrated ones).
        formats: ``ichdemo.export.FORMATS`` names; a format this result cannot have is skipped, with the reason.
        export_dir: where the formats go (default ``out_dir``).
        source_paths: the input paths, for the local ``source.json`` that `ichdemo export` reads.
        heatmaps: write heatmaps.npz (large for long series).
        keep_phi: keep patient name, ID and birth date in DICOM SEG.
        name: series name in export file names (default the neutral "draft": an input's own name may be the
            patient's).
        refined: refine Algorithm 1's drafts (``Analysis.labels``); False writes the paper's raw Algorithm 1.
        edits: a person's corrections (``ichdemo.edits``): their slices replace the draft's, volumes follow, and
            the report says per slice what is the model's draft and what a person edited or reviewed.
    """
    from ichdemo.export import export
    from ichdemo.export.predictions import EXPORT_NAME, write_prediction

    t = thresholds or analysis.thresholds
    labels = analysis.labels(t, refined)
    if edits is not None:
        labels = edits.apply(labels)
    report = analysis.report(labels, t, volume, refined)
    if edits is not None:
        report["review"] = edits.summary()
    files = write_prediction(out_dir, volume, labels, report, analysis.maps255 if heatmaps else None,
                             analysis.probs, list(source_paths) if source_paths else None)
    saved = Saved(labels, report, files)
    if formats:
        done = export(labels, volume, list(formats), Path(export_dir or out_dir), model_info=analysis.model_info,
                      thresholds=t, keep_phi=keep_phi, name=name or EXPORT_NAME, skip_unsupported=True,
                      review=edits.provenance() if edits is not None else None)
        saved.exported, saved.skipped = dict(done), done.skipped
    return saved


def save_draft(
    analysis: Analysis,
    volume: Volume,
    zpath: str | Path,
    thresholds: Thresholds | None = None,
    formats: Sequence[str] = (),
    refined: bool = True,
    edits: Edits | None = None,
) -> Saved:
    """The draft zip an annotator downloads: ``prediction/`` (the predict folder), ``formats/`` (the requested
    export formats, with export.json) and DRAFT.txt (model, version, thresholds, "not reviewed").

    Args:
        zpath: the zip to write; its folder holds the work files meanwhile.
    """
    import secrets

    from ichdemo.export.draft import draft_stamp, zip_folder

    zpath = Path(zpath)
    work = zpath.parent / f".{zpath.stem}-{secrets.token_hex(4)}"
    t = thresholds or analysis.thresholds
    saved = save(analysis, volume, work / "prediction", t, formats, export_dir=work / "formats", name="labels",
                 refined=refined, edits=edits)
    stamp = draft_stamp(analysis.model_info, t, list(saved.exported), saved.skipped, saved.report.get("review"))
    (work / "DRAFT.txt").write_text(stamp)
    zip_folder(work, zpath)
    return saved

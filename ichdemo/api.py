"""The app's stateless endpoints for scripts (gradio_client): files and plain values in, results out, nothing kept.

``analyze_files`` runs the pipeline over uploaded files for several models at once, ``export_files`` writes the
draft zip of one model, ``teach_files`` the Teach tab's pictures of one slice. ``ScratchFolders`` gives each call a
private folder that goes once the web framework has copied the results away.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ichdemo import __version__
from ichdemo.catalogue import ModelPool, run_models
from ichdemo.constants import RESEARCH_NOTICE
from ichdemo.errors import UnsupportedInputError
from ichdemo.export.images import safe_name
from ichdemo.quantify import Thresholds


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


def _series(paths: Sequence[str | Path]):
    from ichdemo.io import load_volume

    if not paths:
        raise UnsupportedInputError("empty upload: choose DICOM files, a .zip, a NIfTI or PNG/JPG images")
    return load_volume([str(p) for p in paths])


def analyze_files(
    pool: ModelPool,
    paths: Sequence[str | Path],
    refs: Sequence[str],
    out_dir: str | Path,
    thresholds: dict[str, Thresholds] | None = None,
) -> tuple[dict, list[Path]]:
    """Load files as one series, run each model, write its label map. Returns (report, label map files).

    Args:
        pool: the models; ``refs`` the ones to run (default: the first of the default comparison).
        paths: the uploaded files (one series).
        out_dir: where the label maps go (``<model>_labels.nii.gz``, in ``refs`` order).
        thresholds: per reference, thresholds in place of the model's calibrated ones.

    Returns:
        ``{"notice", "ichdemo_version", "models": {name: report}}`` and the label map files.
    """
    from ichdemo.pipeline import save

    vol = _series(paths)
    refs = list(refs) or pool.default_selection()[:1]
    out, files, reports = Path(out_dir), [], {}
    for ref, analysis in run_models(pool, refs, vol).items():
        name = safe_name(analysis.model)
        saved = save(analysis, vol, out / name, (thresholds or {}).get(ref), heatmaps=False)
        dest = out / f"{name}_labels.nii.gz"
        shutil.move(saved.files["labels"], dest)
        files.append(dest)
        reports[analysis.model] = saved.report
    return {"notice": RESEARCH_NOTICE, "ichdemo_version": __version__, "models": reports}, files


def export_files(
    pool: ModelPool,
    paths: Sequence[str | Path],
    ref: str,
    formats: Sequence[str],
    out_dir: str | Path,
    thresholds: Thresholds | None = None,
) -> tuple[Path, dict[str, str]]:
    """The draft zip (``ichdemo.pipeline.save_draft``) of one model over uploaded files.

    Returns:
        (the zip, {format: why it was skipped}).
    """
    from ichdemo.export import parse_formats
    from ichdemo.pipeline import save_draft

    names = parse_formats(formats) if formats else []
    vol = _series(paths)
    analysis = run_models(pool, [ref], vol)[ref]
    zpath = Path(out_dir) / f"ichdemo-draft-{safe_name(analysis.model)[:60]}.zip"
    return zpath, save_draft(analysis, vol, zpath, thresholds, names).skipped


def teach_files(
    pool: ModelPool,
    paths: Sequence[str | Path],
    index: int,
    cls: str,
    gap_ref: str | None,
    lse_ref: str | None,
    r: float = 3.0,
):
    """The Teach tab's pictures (``ichdemo.teach.explain_slice``) of slice ``index`` of uploaded files."""
    from ichdemo.teach import explain_slice

    return explain_slice(pool, _series(paths), index, cls, gap_ref, lse_ref, r_values=(0.3, float(r), 30.0))

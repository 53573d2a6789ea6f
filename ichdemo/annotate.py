"""Batch pre-annotation of a folder tree of CT series.

    python -m ichdemo annotate INPUT_ROOT OUTPUT_ROOT --model M --format nifti,dicom-seg,cvat [--workers N]

Series found under INPUT_ROOT (``discover``): every folder holding DICOM files (the files directly in it), every
``.zip`` and every ``.nii`` / ``.nii.gz``. Each gets one output folder ``OUTPUT_ROOT/<name>``, where ``<name>`` is
its path relative to INPUT_ROOT with "/" turned into "__" (a flat layout, so one series' folder never holds
another's). The folder holds ``predict``'s outputs (labels.nii.gz, report.json; heatmaps.npz with
``keep_heatmaps``), the requested exports and ``series.json``, the series' row of the summary.

No lost work: a series is written into ``OUTPUT_ROOT/.ichdemo-tmp/<name>.<random>`` and renamed to its
final name only once everything in it is written, so a final folder is always complete. A run killed at any point
leaves at most a temporary folder, removed when that series is processed again. Resume: a series whose final
folder exists is skipped; a failed series (recorded in ``OUTPUT_ROOT/_failed/<name>.json`` with its error) is
skipped too unless ``retry_failed``. So a second run over the same tree does nothing.

Failures are isolated: an exception while processing one series is recorded and logged (``annotate.log``) and the
run goes on. A worker process that dies (killed, out of memory) stops the run; run again to resume.

Parallelism: ``workers`` processes on one machine (``concurrent.futures.ProcessPoolExecutor``, spawn start, the
model loaded once per process by the pool initializer). Across GPUs or machines, launch with torchrun: each rank
takes every WORLD_SIZE-th series starting at RANK (from the environment), uses ``cuda:LOCAL_RANK`` when CUDA is
available, and writes ``summary.rank<R>-of-<W>.csv`` for its share, e.g.
    torchrun --nproc-per-node 4 -m ichdemo annotate IN OUT --model M --format nifti
No home-made scheduler and no communication between ranks.

Summary: ``summary.csv`` (series, output, status, slices, size, spacing, volume per subtype in mL, subtypes
present, flags, error, seconds) is rebuilt from the per-series records at the end of a run whenever every series
has one. With several ranks the last rank to finish writes it; merging by hand is never needed, but running
annotate again (which then does nothing else) rebuilds it too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import time
import traceback
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ichdemo.atomic import write_text
from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, IchdemoError, brief
from ichdemo.export.images import safe_name
from ichdemo.io.archive import is_ignored_member

log = logging.getLogger(__name__)

TMP_DIR = ".ichdemo-tmp"
FAILED_DIR = "_failed"
RECORD = "series.json"
SUMMARY = "summary.csv"
LOG_FILE = "annotate.log"
COLUMNS = (
    "series",
    "output",
    "status",
    "slices",
    "rows",
    "cols",
    "spacing_mm",
    *(f"{c}_ml" for c in CLASSES),
    "total_ml",
    "present",
    "flags",
    "error",
    "seconds",
)
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ".dic"}


# --------------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class SeriesItem:
    """One series to annotate.

    Attributes:
        key: its path relative to the input root (POSIX form; "." for DICOM files directly in the root).
        kind: "dicom" (a folder's files), "zip" or "nifti".
        paths: the files to load (absolute).
        name: output folder name (flat, file-name safe, unique in the run).
    """

    key: str
    kind: str
    paths: tuple[str, ...]
    name: str = ""


def _series_kind(path: Path) -> str | None:
    """The series kind of a file: "zip", "nifti", "dicom" or None (by name; by content for suffix-less files)."""
    from ichdemo.io import sniff

    lower = path.name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return "dicom"
    if path.suffix == "" and path.stat().st_size > 0 and sniff(path) == "dicom":
        return "dicom"
    return None


def _output_name(key: str, kind: str) -> str:
    stem = key
    for suffix in (".nii.gz", ".nii", ".zip"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return safe_name(stem.replace("/", "__")) if stem not in ("", ".") else "root"


def _unique_names(items: list[SeriesItem]) -> list[SeriesItem]:
    seen: dict[str, int] = {}
    out = []
    for it in items:
        name = _output_name(it.key, it.kind)
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(SeriesItem(it.key, it.kind, it.paths, name if n == 0 else f"{name}_{it.kind}{n}"))
    return out


def discover(root: str | Path, exclude: Iterable[str | Path] = ()) -> list[SeriesItem]:
    """Every series under ``root``, sorted by key (see the module docstring). Dotfiles and __MACOSX are ignored.

    Args:
        root: the input folder.
        exclude: folders not to walk (e.g. the output root when it lies inside the input root).

    Raises:
        ConfigError: ``root`` is not a folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"input root {root} is not a folder")
    skip = {Path(e).resolve() for e in exclude}
    items: list[SeriesItem] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not is_ignored_member(d) and (here / d).resolve() not in skip)
        dicom = []
        for f in sorted(n for n in filenames if not is_ignored_member(n)):
            path = here / f
            kind = _series_kind(path)
            if kind == "dicom":
                dicom.append(str(path))
            elif kind:
                items.append(SeriesItem(path.relative_to(root).as_posix(), kind, (str(path),)))
        if dicom:
            items.append(SeriesItem(here.relative_to(root).as_posix(), "dicom", tuple(dicom)))
    return _unique_names(sorted(items, key=lambda it: it.key))


def shard(items: Sequence[SeriesItem], rank: int, world_size: int) -> list[SeriesItem]:
    """The items of one rank: every ``world_size``-th starting at ``rank`` (deterministic, disjoint, complete)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..{world_size - 1} (WORLD_SIZE {world_size})")
    return list(items[rank::world_size])


def dist_env(env: dict[str, str] | None = None) -> tuple[int, int, int | None]:
    """(rank, world_size, local_rank) from torchrun's environment variables; (0, 1, None) without them."""
    env = dict(os.environ if env is None else env)
    try:
        rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        local = int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else None
    except ValueError as err:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err})") from None
    return rank, world, local


# ------------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class AnnotateConfig:
    """What every worker needs to process a series (plain values: it travels to worker processes).

    Attributes:
        model: model reference (bundled name, folder, hf://...).
        formats: export formats (``ichdemo.export.FORMATS`` names); may be empty.
        device: torch device, or None for the default (cuda:LOCAL_RANK / cuda / cpu).
        batch_size: slices per forward pass.
        class_thresholds / mask_thresholds: overrides of the model's calibrated thresholds (5 values), or None.
        keep_phi: keep patient name, ID and birth date in DICOM SEG exports (default: de-identified).
        keep_heatmaps: keep predict's heatmaps.npz (large; off by default).
        threads: torch CPU threads per worker process (0: leave torch's default).
        refined: refine Algorithm 1's drafts with the CT's densities (``ichdemo.refine``); False: raw Algorithm 1.
        image_window / spacing: how PNG/JPG grey levels were made and their voxel spacing (``load_volume``).
    """

    model: str
    formats: tuple[str, ...] = ("nifti",)
    device: str | None = None
    batch_size: int = 4
    class_thresholds: tuple[float, ...] | None = None
    mask_thresholds: tuple[float, ...] | None = None
    keep_phi: bool = False
    keep_heatmaps: bool = False
    threads: int = 0
    refined: bool = True
    image_window: str | None = None
    spacing: tuple[float, ...] | None = None


@dataclass
class RunResult:
    """What a run did."""

    total: int = 0
    shard: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    rows: list[dict] = field(default_factory=list)
    summary: Path | None = None


# ---------------------------------------------------------------------------------------------------- one series
def _row(item: SeriesItem, status: str, **values: Any) -> dict[str, Any]:
    row = {c: "" for c in COLUMNS}
    row.update(series=item.key, output=item.name if status == "done" else "", status=status)
    row.update({k: v for k, v in values.items() if k in row})
    return row


def _flags(volume, skipped: dict[str, str]) -> str:
    flags = ["spacing assumed: volumes are estimates"] if volume.spacing_assumed else []
    flags += [w if len(w) <= 100 else w[:97] + "..." for w in volume.warnings]
    flags += [f"{fmt} skipped: {reason.split(':')[0]}" for fmt, reason in skipped.items()]
    return " | ".join(flags)


def _success_row(item: SeriesItem, volume, vols: dict[str, float], skipped: dict[str, str], seconds: float) -> dict:
    return _row(
        item,
        "done",
        slices=volume.shape[0],
        rows=volume.shape[1],
        cols=volume.shape[2],
        spacing_mm="x".join(f"{v:.4g}" for v in volume.spacing),
        total_ml=round(vols["total"], 3),
        present=",".join(c for c in CLASSES if vols.get(c, 0) > 0),
        flags=_flags(volume, skipped),
        seconds=round(seconds, 2),
        **{f"{c}_ml": round(vols.get(c, 0.0), 3) for c in CLASSES},
    )


def _fresh_tmp(out_root: Path, name: str) -> Path:
    """A new temporary folder for ``name``, after removing any left by an interrupted run."""
    base = out_root / TMP_DIR
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(f"{name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = base / f"{name}.{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _thresholds(lm, cfg: AnnotateConfig):
    return lm.thresholds.replace(class_thresholds=cfg.class_thresholds, mask_thresholds=cfg.mask_thresholds)


def _write_series(item: SeriesItem, lm, cfg: AnnotateConfig, tmp: Path) -> dict[str, Any]:
    """Everything for one series, into ``tmp``; returns its summary row."""
    from ichdemo.io import load_volume
    from ichdemo.pipeline import analyze, save

    t0 = time.monotonic()
    src = list(item.paths) if item.kind == "dicom" else item.paths[0]
    volume = load_volume(src, image_window=cfg.image_window, spacing=cfg.spacing)
    saved = save(analyze(lm, volume, batch_size=cfg.batch_size), volume, tmp, _thresholds(lm, cfg), cfg.formats,
                 source_paths=list(item.paths), heatmaps=cfg.keep_heatmaps, keep_phi=cfg.keep_phi, name=item.name,
                 refined=cfg.refined)
    row = _success_row(item, volume, saved.report["volumes_ml"], saved.skipped, time.monotonic() - t0)
    write_text(tmp / RECORD, json.dumps(row, indent=2) + "\n")
    return row


def _record_failure(item: SeriesItem, out_root: Path, err: Exception, seconds: float) -> dict[str, Any]:
    expected = isinstance(err, (IchdemoError, OSError))
    message = brief(err, 300) if isinstance(err, IchdemoError) else f"{type(err).__name__}: {brief(err, 300)}"
    row = _row(item, "failed", error=message, seconds=round(seconds, 2))
    record = dict(row, traceback=None if expected else traceback.format_exc(limit=20))
    write_text(out_root / FAILED_DIR / f"{item.name}.json", json.dumps(record, indent=2) + "\n")
    return row


def process_series(item: SeriesItem, lm, cfg: AnnotateConfig, out_root: str | Path) -> dict[str, Any]:
    """Annotate one series into ``out_root/<item.name>`` (atomically); never raises for a bad series.

    Returns:
        The summary row; status "done", or "failed" with the error (also recorded under ``_failed/``).
    """
    out_root = Path(out_root)
    t0 = time.monotonic()
    tmp = _fresh_tmp(out_root, item.name)
    try:
        row = _write_series(item, lm, cfg, tmp)
        (out_root / FAILED_DIR / f"{item.name}.json").unlink(missing_ok=True)
        os.replace(tmp, out_root / item.name)  # the one step that makes the series visible, complete
        return row
    except Exception as err:  # isolate every failure of one series  # noqa: BLE001
        log.warning("%s: failed: %s", item.key, brief(err))
        return _record_failure(item, out_root, err, time.monotonic() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ workers
_WORKER: dict[str, Any] = {}


def _init_worker(cfg: AnnotateConfig, log_path: str | None) -> None:
    """Pool initializer: load the model once per worker process."""
    import torch

    from ichdemo.inference import load_model

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if log_path:
        _attach_log(Path(log_path))
    _WORKER["lm"] = load_model(cfg.model, device=cfg.device)
    _WORKER["cfg"] = cfg


def _work(item: SeriesItem, out_root: str) -> dict[str, Any]:
    return process_series(item, _WORKER["lm"], _WORKER["cfg"], out_root)


def _attach_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s pid%(process)d %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="annotate", unit="series", disable=not enabled, dynamic_ncols=True)


def _run_inline(todo: list[SeriesItem], cfg: AnnotateConfig, out_root: Path, bar) -> Iterable[dict]:
    from ichdemo.inference import load_model

    lm = load_model(cfg.model, device=cfg.device)
    for item in todo:
        yield process_series(item, lm, cfg, out_root)
        bar.update(1)


def _run_pool(
    todo: list[SeriesItem], cfg: AnnotateConfig, out_root: Path, workers: int, log_path: Path, bar
) -> Iterable[dict]:
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg, str(log_path))) as pool:
        futures = {pool.submit(_work, item, str(out_root)): item for item in todo}
        try:
            for fut in as_completed(futures):
                yield fut.result()
                bar.update(1)
        except BrokenProcessPool as err:
            raise IchdemoError(
                f"a worker process died ({brief(err)}); finished series are kept, run annotate again to resume"
            ) from err


# ---------------------------------------------------------------------------------------------------- summary
def _read_record(out_root: Path, item: SeriesItem) -> dict[str, Any] | None:
    for path in (out_root / item.name / RECORD, out_root / FAILED_DIR / f"{item.name}.json"):
        if path.is_file():
            rec = json.loads(path.read_text())
            return {c: rec.get(c, "") for c in COLUMNS}
    return None


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_if_changed(path: Path, text: str) -> Path:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)
    return path


def write_summary(out_root: str | Path, items: Sequence[SeriesItem], path: str | Path | None = None) -> Path | None:
    """Write the summary CSV of ``items`` from their records; None (nothing written) while some have none yet.

    The file is only rewritten when its content changes (a run that did nothing leaves it untouched).
    """
    out_root = Path(out_root)
    rows = [_read_record(out_root, it) for it in items]
    if any(r is None for r in rows):
        return None
    return _write_if_changed(Path(path) if path else out_root / SUMMARY, _csv_text(rows))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------- run
def _todo(items: list[SeriesItem], out_root: Path, retry_failed: bool) -> list[SeriesItem]:
    todo = []
    for it in items:
        if (out_root / it.name).exists():
            continue
        failed = out_root / FAILED_DIR / f"{it.name}.json"
        if failed.exists() and not retry_failed:
            continue
        todo.append(it)
    return todo


def _device(cfg: AnnotateConfig, local_rank: int | None) -> AnnotateConfig:
    if cfg.device is not None or local_rank is None:
        return cfg
    import torch

    return AnnotateConfig(**{**asdict(cfg), "device": f"cuda:{local_rank}" if torch.cuda.is_available() else None})


def run(
    input_root: str | Path,
    output_root: str | Path,
    cfg: AnnotateConfig,
    *,
    workers: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> RunResult:
    """Annotate every series under ``input_root`` not done yet (see the module docstring).

    Args:
        input_root: folder tree of series.
        output_root: where the per-series folders, ``summary.csv``, ``_failed/`` and ``annotate.log`` go.
        cfg: model, formats and options.
        workers: worker processes (1: in this process).
        rank / world_size: this process's share; default from RANK / WORLD_SIZE (torchrun), else 0 / 1.
        retry_failed: process series recorded as failed by an earlier run again.
        progress: show a tqdm progress bar.

    Raises:
        ConfigError: bad root, rank or worker count.
        IchdemoError: a worker process died (the run can be resumed).
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    env_rank, env_world, local_rank = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    out_root = Path(output_root).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    items = discover(input_root, exclude=[out_root])
    mine = shard(items, rank, world_size)
    todo = _todo(mine, out_root, retry_failed)
    cfg = _device(cfg, local_rank)
    log_path = out_root / (LOG_FILE if world_size == 1 else f"annotate.rank{rank}.log")
    handler = _attach_log(log_path)
    result = RunResult(total=len(items), shard=len(mine), skipped=len(mine) - len(todo))
    log.info(
        "rank %d/%d: %d series found, %d in this shard, %d to do", rank, world_size, len(items), len(mine), len(todo)
    )
    try:
        with _progress(len(todo), progress) as bar:
            rows = (
                (
                    _run_pool(todo, cfg, out_root, workers, log_path, bar)
                    if workers > 1 and len(todo) > 1
                    else _run_inline(todo, cfg, out_root, bar)
                )
                if todo
                else iter(())
            )
            for row in rows:
                result.rows.append(row)
                result.done += row["status"] == "done"
                result.failed += row["status"] == "failed"
                bar.set_postfix(failed=result.failed)
    finally:
        log.removeHandler(handler)
        handler.close()
        _remove_empty(out_root / TMP_DIR)
    if world_size > 1:
        write_summary(out_root, mine, out_root / f"summary.rank{rank}-of-{world_size}.csv")
    result.summary = write_summary(out_root, items)
    return result


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # missing, or still holding another rank's work
        pass

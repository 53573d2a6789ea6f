"""Command-line entry: `python -m ichdemo {info,phantom,predict,export,annotate,models} ...`.

Every failure the library raises on purpose (``IchdemoError``) is printed as one line on stderr with a non-zero exit
status; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ichdemo import __version__, hub
from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, IchdemoError


def _load(inp, args: argparse.Namespace):
    """``load_volume`` with the --image-window and --spacing the user gave (images only)."""
    from ichdemo.io import load_volume, parse_spacing

    return load_volume(inp, image_window=args.image_window, spacing=parse_spacing(args.spacing))


def _cmd_info(args: argparse.Namespace) -> int:
    from ichdemo.io import describe

    vol = _load(args.inputs if len(args.inputs) > 1 else args.inputs[0], args)
    if args.json:
        print(json.dumps(vol.summary(), indent=2))
    else:
        print(describe(vol))
    return 0


def _parse_subtypes(text: str) -> tuple[str, ...]:
    names = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        raise ConfigError(f"unknown subtype(s) {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
    return names


def _cmd_phantom(args: argparse.Namespace) -> int:
    from ichdemo.phantom import generate_phantom, write_phantom

    shape = tuple(int(v) for v in args.shape.split("x"))
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--shape must be SxHxW with positive sizes, got {args.shape!r}")
    phantom = generate_phantom(seed=args.seed, subtypes=_parse_subtypes(args.subtypes), shape=shape)
    paths = write_phantom(phantom, Path(args.out), fmt=args.format)
    shown = {k: str(v) for k, v in paths.items() if k != "files"}
    print(json.dumps(shown | {"truth_ml": phantom.truth_ml}, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ichdemo.pipeline import analyze, load_model, save

    lm = load_model(args.model or hub.default_model(), device=args.device, runtime=args.runtime)
    thresholds = _thresholds(lm.thresholds, args)
    out = Path(args.out)
    formats = _parse_formats(args.format)
    names = [Path(p).name.split(".")[0] or f"input{i}" for i, p in enumerate(args.inputs)]
    for inp, name in zip(args.inputs, names):
        vol = _load(inp, args)
        _check_formats(formats, vol, inp)
        target = out if len(args.inputs) == 1 else out / name
        saved = save(analyze(lm, vol, batch_size=args.batch_size), vol, target, thresholds, formats,
                     source_paths=[inp], keep_phi=args.keep_phi, refined=args.refine != "none")
        vols = ", ".join(f"{k} {v:.2f} mL" for k, v in saved.report["volumes_ml"].items())
        print(f"{inp}: {vol.shape[0]} slice(s) -> {target} ({vols})")
        _print_exported(saved.exported, saved.skipped)
    return 0


def _thresholds(base, args: argparse.Namespace):
    """The model's thresholds with the --class-thresholds / --mask-thresholds overrides."""
    from ichdemo.quantify import parse_thresholds

    return base.replace(
        class_thresholds=parse_thresholds(args.class_thresholds, "class") if args.class_thresholds else None,
        mask_thresholds=parse_thresholds(args.mask_thresholds, "mask") if args.mask_thresholds else None,
    )


def _parse_formats(text: str | None) -> list[str]:
    from ichdemo.export import parse_formats

    return parse_formats(text) if text else []


def _check_formats(formats: list[str], vol, inp: str) -> None:
    """Refuse, before the network runs, a format the input can never have (DICOM SEG for NIfTI or images)."""
    from ichdemo.errors import UnsupportedInputError
    from ichdemo.export import unsupported_reason

    for fmt in formats:
        reason = unsupported_reason(fmt, vol)
        if reason:
            raise UnsupportedInputError(f"{inp}: {reason}")


def _print_exported(exported: dict[str, Path], skipped: dict[str, str]) -> None:
    """One line per format written; a format this result cannot have (no segment for a SEG) is reported, not fatal."""
    for fmt, path in exported.items():
        print(f"  {fmt}: {path}")
    for fmt, reason in skipped.items():
        print(f"  {fmt}: skipped: {reason}", file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> int:
    from ichdemo.export import export
    from ichdemo.export.predictions import read_prediction

    formats = _parse_formats(args.format)
    pred = read_prediction(args.pred_dir)
    _check_formats(formats, pred.volume, args.pred_dir)
    print(f"{args.pred_dir}: {pred.volume.shape[0]} slice(s) -> {args.out}")
    done = export(pred.labels, pred.volume, formats, Path(args.out), model_info=pred.model_info,
                  thresholds=pred.thresholds, keep_phi=args.keep_phi, name=pred.name, skip_unsupported=True)
    _print_exported(done, done.skipped)
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from ichdemo.annotate import AnnotateConfig, run
    from ichdemo.io import parse_spacing
    from ichdemo.quantify import parse_thresholds

    cfg = AnnotateConfig(
        model=args.model or hub.default_model(),
        formats=tuple(_parse_formats(args.format)),
        device=args.device,
        batch_size=args.batch_size,
        class_thresholds=parse_thresholds(args.class_thresholds, "class") if args.class_thresholds else None,
        mask_thresholds=parse_thresholds(args.mask_thresholds, "mask") if args.mask_thresholds else None,
        keep_phi=args.keep_phi,
        keep_heatmaps=args.keep_heatmaps,
        threads=args.threads,
        refined=args.refine != "none",
        image_window=args.image_window,
        spacing=parse_spacing(args.spacing),
    )
    res = run(args.input_root, args.output_root, cfg, workers=args.workers, retry_failed=args.retry_failed,
              progress=not args.no_progress)
    print(f"{res.total} series found, {res.shard} in this shard: {res.done} done, {res.failed} failed, "
          f"{res.skipped} already finished or failed earlier")
    print(f"summary: {res.summary}" if res.summary else "summary: written once every shard has finished")
    return 1 if res.failed else 0


def _cmd_models(args: argparse.Namespace) -> int:
    from ichdemo.models.config import ModelConfig

    refs = hub.configured_refs()
    if not refs:
        print(f"no models: no bundled checkpoints in {hub.bundled_dir()} (set {hub.CHECKPOINTS_ENV} to the "
              "repository's checkpoints/ folder) and ICHDEMO_MODELS is not set")
        return 1
    for ref in refs:
        try:
            found = hub.resolve(ref)
            cfg = ModelConfig.read(found.folder)
            print(f"{found.name}\t{cfg.architecture}\t{found.origin}\t{found.folder}")
        except IchdemoError as err:
            print(f"{ref}\tunavailable\t{err}")
    return 0


_WINDOW_HELP = ("how PNG/JPG grey levels were made: a preset (ctich = the CT-ICH JPEGs' 40/120, brain 40/80, "
                "subdural, bone, paper, hu = grey level is HU) or CENTRE/WIDTH; default: estimated from the image "
                "and said in the report")
_SPACING_HELP = "voxel spacing SLICE,ROW,COL in mm for PNG/JPG input (default: pixel size estimated from the skull)"
_REFINE_HELP = ("model: refine Algorithm 1's drafts with the CT's blood density inside the skull, with the model's "
                "settings (default); none: the paper's raw Algorithm 1")
_FORMATS_HELP = "export formats: nifti, dicom-seg, seg-nrrd, cvat, labelstudio, coco, overlay, or all"


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand (help on every flag)."""
    p = argparse.ArgumentParser(prog="ichdemo", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"ichdemo {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a CT input (DICOM folder/files/zip, NIfTI, PNG/JPG)")
    info.add_argument("inputs", nargs="+", help="a file, a folder, a .zip, or several files of one series")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.add_argument("--image-window", help=_WINDOW_HELP)
    info.add_argument("--spacing", help=_SPACING_HELP)
    info.set_defaults(func=_cmd_info)

    ph = sub.add_parser("phantom", help="write a synthetic head CT with known hemorrhage masks")
    ph.add_argument("out", help="output folder")
    ph.add_argument("--seed", type=int, default=0, help="random seed (same seed, same phantom)")
    ph.add_argument("--subtypes", default="IPH", help=f"comma-separated subset of {','.join(CLASSES)}; '' for normal")
    ph.add_argument("--format", choices=("dicom", "nifti"), default="dicom", help="series format")
    ph.add_argument("--shape", default="24x256x256", help="slices x rows x cols")
    ph.set_defaults(func=_cmd_phantom)

    pr = sub.add_parser("predict", help="heatmaps, subtype masks and volumes for one or more inputs")
    pr.add_argument("inputs", nargs="+", help="each a file, folder or .zip (one series or image stack per input)")
    pr.add_argument("--model", help="bundled name, local folder or hf://owner/repo[@rev] (default: bundled default)")
    pr.add_argument("--out", required=True, help="output folder (one subfolder per input when several)")
    pr.add_argument("--class-thresholds", help="5 comma-separated probabilities (IPH,IVH,SAH,SDH,EDH) in [0, 1]")
    pr.add_argument("--mask-thresholds", help="5 comma-separated heatmap levels (IPH,IVH,SAH,SDH,EDH) in [0, 255]")
    pr.add_argument("--batch-size", type=int, default=4, help="slices per forward pass")
    pr.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    pr.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                    help="run the network in PyTorch or on ONNX Runtime (exported and cached on first use)")
    pr.add_argument("--refine", choices=("model", "none"), default="model", help=_REFINE_HELP)
    pr.add_argument("--image-window", help=_WINDOW_HELP)
    pr.add_argument("--spacing", help=_SPACING_HELP)
    pr.add_argument("--format", help=f"also export: comma-separated {_FORMATS_HELP}")
    pr.add_argument("--keep-phi", action="store_true", help="keep patient name/ID/birth date in DICOM SEG exports")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="turn a predict output folder into annotation-tool formats")
    ex.add_argument("pred_dir", help="a predict output folder (report.json + labels.nii.gz)")
    ex.add_argument("--format", required=True, help=f"comma-separated {_FORMATS_HELP}")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--keep-phi", action="store_true", help="keep patient name/ID/birth date in DICOM SEG exports")
    ex.set_defaults(func=_cmd_export)

    an = sub.add_parser("annotate", help="pre-annotate every series under a folder tree (resumable, parallel)")
    an.add_argument("input_root", help="folder tree of series: DICOM folders, .zip files, .nii/.nii.gz files")
    an.add_argument("output_root", help="one output folder per series, summary.csv, _failed/, annotate.log")
    an.add_argument("--model", help="bundled name, local folder or hf://owner/repo[@rev] (default: bundled default)")
    an.add_argument("--format", default="nifti", help=f"comma-separated {_FORMATS_HELP} ('' for none)")
    an.add_argument("--workers", type=int, default=1, help="worker processes on this machine (model loaded once each)")
    an.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0: torch's default)")
    an.add_argument("--class-thresholds", help="5 comma-separated probabilities (IPH,IVH,SAH,SDH,EDH) in [0, 1]")
    an.add_argument("--mask-thresholds", help="5 comma-separated heatmap levels (IPH,IVH,SAH,SDH,EDH) in [0, 255]")
    an.add_argument("--batch-size", type=int, default=4, help="slices per forward pass")
    an.add_argument("--refine", choices=("model", "none"), default="model", help=_REFINE_HELP)
    an.add_argument("--image-window", help=_WINDOW_HELP)
    an.add_argument("--spacing", help=_SPACING_HELP)
    an.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK / cuda / cpu)")
    an.add_argument("--keep-phi", action="store_true", help="keep patient name/ID/birth date in DICOM SEG exports")
    an.add_argument("--keep-heatmaps", action="store_true", help="keep heatmaps.npz per series (large)")
    an.add_argument("--retry-failed", action="store_true", help="process series that failed in an earlier run again")
    an.add_argument("--no-progress", action="store_true", help="no progress bar")
    an.set_defaults(func=_cmd_annotate)

    mo = sub.add_parser("models", help="list the models available and where they come from")
    mo.set_defaults(func=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if not args.debug:  # library warnings (pydicom on odd headers...) would break the one-line error contract
        warnings.simplefilter("ignore")
    try:
        return args.func(args)
    except IchdemoError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        if args.debug:
            raise
        print(f"error: {err.strerror}: {err.filename}", file=sys.stderr)
        return 2

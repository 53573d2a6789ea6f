"""Command-line entry: `python -m ichdemo {info,phantom,predict,models} ...`.

Every failure the library raises on purpose (``IchdemoError``) is printed as one line on stderr with a non-zero exit
status; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ichdemo import __version__, hub
from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, IchdemoError


def _cmd_info(args: argparse.Namespace) -> int:
    from ichdemo.io import describe, load_volume

    vol = load_volume(args.inputs if len(args.inputs) > 1 else args.inputs[0])
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
    from ichdemo.io import load_volume
    from ichdemo.predict import analyze, load_model, write_outputs
    from ichdemo.quantify import parse_thresholds

    lm = load_model(args.model or hub.default_model(), device=args.device)
    thresholds = lm.thresholds.replace(
        class_thresholds=parse_thresholds(args.class_thresholds, "class") if args.class_thresholds else None,
        mask_thresholds=parse_thresholds(args.mask_thresholds, "mask") if args.mask_thresholds else None,
    )
    out = Path(args.out)
    names = [Path(p).name.split(".")[0] or f"input{i}" for i, p in enumerate(args.inputs)]
    for inp, name in zip(args.inputs, names):
        vol = load_volume(inp)
        analysis = analyze(lm, vol, batch_size=args.batch_size)
        target = out if len(args.inputs) == 1 else out / name
        paths = write_outputs(analysis, vol, target, thresholds, source_paths=[inp])
        report = json.loads(paths["report"].read_text())
        vols = ", ".join(f"{k} {v:.2f} mL" for k, v in report["volumes_ml"].items())
        print(f"{inp}: {vol.shape[0]} slices -> {target} ({vols})")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    refs = hub.configured_refs()
    if not refs:
        print("no models: checkpoints/ holds none and ICHDEMO_MODELS is not set")
        return 1
    for ref in refs:
        try:
            found = hub.resolve(ref)
            cfg = json.loads((found.folder / "config.json").read_text())
            print(f"{found.name}\t{cfg.get('architecture')}\t{found.origin}\t{found.folder}")
        except IchdemoError as err:
            print(f"{ref}\tunavailable\t{err}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand (help on every flag)."""
    p = argparse.ArgumentParser(prog="python -m ichdemo", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"ichdemo {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a CT input (DICOM folder/files/zip, NIfTI, PNG/JPG)")
    info.add_argument("inputs", nargs="+", help="a file, a folder, a .zip, or several files of one series")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
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
    pr.set_defaults(func=_cmd_predict)

    mo = sub.add_parser("models", help="list the models available and where they come from")
    mo.set_defaults(func=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
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

"""Command-line entry: `python -m ichdemo {info,phantom,predict,models} ...`.

Every failure the library raises on purpose (``IchdemoError``) is printed as one line on stderr with a non-zero exit
status; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ichdemo import __version__
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
    print(json.dumps({k: str(v) for k, v in paths.items()} | {"truth_ml": phantom.truth_ml}, indent=2))
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

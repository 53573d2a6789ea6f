"""CT input: ``load_volume`` turns whatever a user brings into a ``Volume``.

Accepted: DICOM (a file, a folder, a list of files, a .zip), NIfTI (.nii, .nii.gz), PNG/JPG images and stacks.
The format is told from the file content (magic bytes), not from the name: a DICOM named .png loads, a text file
named .dcm fails with "not a DICOM file". Folders are searched recursively; dotfiles and ``__MACOSX`` are ignored.
In a set of files, zero-byte and unrecognised files are skipped with a warning; DICOM wins over other kinds.
Every volume holds HU: PNG/JPG grey levels are turned back into HU through the window they were exported with,
declared (``image_window``) or estimated from the images (``ichdemo.io.window``).

Example:
    >>> from ichdemo.io import load_volume, describe
    >>> vol = load_volume("study.zip")
    >>> print(describe(vol))
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nibabel.orientations import aff2axcodes

from ichdemo.errors import ConfigError, CorruptInputError, UnsafeInputError, UnsupportedInputError
from ichdemo.io.archive import is_ignored_member, safe_extract_zip
from ichdemo.io.dicom import load_dicom_series, looks_like_dicom
from ichdemo.io.image import load_images
from ichdemo.io.limits import Limits, check_file_sizes
from ichdemo.io.nifti import load_nifti, sniff_nifti, to_source_grid, write_nifti
from ichdemo.io.window import Window, parse_window
from ichdemo.volume import Volume

__all__ = ["Limits", "load_volume", "describe", "sniff", "to_source_grid", "write_nifti"]

_DICOM_SUFFIXES = {"", ".dcm", ".dicom", ".ima", ".dic"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def sniff(path: str | Path) -> str:
    """The kind of a file from its content: "dicom", "nifti", "image", "zip", "empty" or "unknown"."""
    path = Path(path)
    if os.path.getsize(path) == 0:
        return "empty"
    with open(path, "rb") as fh:
        head = fh.read(544)
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in _ZIP_MAGIC:
        return "zip"
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return "image"
    if head[:2] == b"\x1f\x8b":
        return "nifti" if sniff_nifti(_gunzip_head(path)) else "unknown"
    if sniff_nifti(head):
        return "nifti"
    if path.suffix.lower() in _DICOM_SUFFIXES and looks_like_dicom(path):
        return "dicom"
    return "unknown"


def _gunzip_head(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read(544)
    except (OSError, EOFError, zlib.error):  # a damaged deflate stream raises zlib.error (fuzzing)
        return b""


def _not_recognised(path: Path) -> Exception:
    """The error for a single file of unknown content, worded after what its name claims."""
    name, suffix = path.name.lower(), path.suffix.lower()
    if suffix in _DICOM_SUFFIXES - {""}:
        return CorruptInputError(f"{path.name}: not a DICOM file (no 'DICM' marker and no DICOM header)")
    if name.endswith((".nii", ".nii.gz")):
        return CorruptInputError(f"{path.name}: not a NIfTI file (no NIfTI header)")
    if suffix in (".png", ".jpg", ".jpeg"):
        return CorruptInputError(f"{path.name}: not a readable PNG/JPEG image")
    if suffix == ".zip":
        return CorruptInputError(f"{path.name}: not a readable zip archive")
    return UnsupportedInputError(
        f"{path.name}: unrecognised file type; expected DICOM, NIfTI (.nii/.nii.gz), PNG/JPG or a .zip of them"
    )


# -------------------------------------------------------------------------------------------------- collecting
def _as_paths(src: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(src, (str, os.PathLike)):
        return [Path(src)]
    paths = [Path(p) for p in src]
    if not paths:
        raise UnsupportedInputError("empty upload: no files were given")
    return paths


def _walk(folder: Path) -> list[Path]:
    """Files under ``folder``, recursively, in sorted order, without dotfiles and ``__MACOSX``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored_member(d))
        out += [Path(dirpath) / f for f in sorted(filenames) if not is_ignored_member(f)]
    return out


def _expand(entries: list[Path], limits: Limits, tmp: Path) -> tuple[list[Path], bool]:
    """Folders -> their files; zips -> their extracted files. Returns the files and whether any was extracted."""
    files: list[Path] = []
    extracted = False
    for n, entry in enumerate(entries):
        if entry.is_dir():
            files += _walk(entry)
        elif not entry.is_file():
            raise UnsupportedInputError(f"{entry}: no such file or folder")
        elif sniff(entry) == "zip":
            dest = tmp / f"zip{n}"
            dest.mkdir()
            if os.path.getsize(entry) > limits.max_file_bytes:
                raise UnsafeInputError(f"{entry.name}: over the limit of {limits.max_file_bytes} bytes per file")
            files += safe_extract_zip(entry, dest, limits)
            extracted = True
        else:
            files.append(entry)
        if len(files) > limits.max_files:
            check_file_sizes(files, limits)  # raises the too-many-files error before walking further
    if not files:
        raise UnsupportedInputError("empty upload: no files found in " + ", ".join(e.name for e in entries))
    return files, extracted


# ------------------------------------------------------------------------------------------------------ loading
def parse_spacing(text: str | None) -> tuple[float, float, float] | None:
    """"SLICE,ROW,COL" in mm (a user's entry) -> three positive floats; None for an empty entry.

    Raises:
        ConfigError: not three positive numbers.
    """
    if text is None or not str(text).strip():
        return None
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"spacing must be 3 numbers SLICE,ROW,COL in mm, e.g. 5,0.45,0.45; got {text!r}") from None
    return _check_spacing(values)


def _check_spacing(spacing) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(f"spacing must be three numbers (slice, row, col) in mm, got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ConfigError(f"spacing must be three positive numbers (slice, row, col) in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def _classify(files: list[Path]) -> tuple[dict[str, list[Path]], list[str]]:
    """Group files by kind; a lone unusable file raises, unusable files in a set are skipped with a warning."""
    kinds: dict[str, list[Path]] = {}
    for f in files:
        kinds.setdefault(sniff(f), []).append(f)
    skipped = kinds.pop("empty", []) + kinds.pop("unknown", []) + kinds.pop("zip", [])
    if len(files) == 1 and skipped:
        f = files[0]
        if os.path.getsize(f) == 0:
            raise UnsupportedInputError(f"empty upload: {f.name} is 0 bytes")
        if sniff(f) == "zip":
            raise UnsupportedInputError(f"{f.name}: a zip inside an upload is not opened; upload it directly")
        raise _not_recognised(f)
    if not kinds:
        raise UnsupportedInputError(
            f"no DICOM, NIfTI or PNG/JPG file among {len(files)} file(s); "
            f"e.g. {skipped[0].name}: {_not_recognised(skipped[0])}"
        )
    warnings = []
    if skipped:
        names = ", ".join(f.name for f in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.append(
            f"skipped {len(skipped)} file(s) that are empty, nested zips or not DICOM/NIfTI/PNG/JPG: {names}"
        )
    return kinds, warnings


def _load_kind(
    kinds: dict[str, list[Path]], limits: Limits, spacing, keep_paths: bool, window: Window | None
) -> tuple[Volume, list[str]]:
    """Load the highest-priority kind present (DICOM, then NIfTI, then images); warn about the rest."""
    kind = next(k for k in ("dicom", "nifti", "image") if k in kinds)
    ignored = sum(len(v) for k, v in kinds.items() if k != kind)
    warnings = [f"ignored {ignored} file(s) that are not {kind.upper()}: one volume per upload"] if ignored else []
    files = kinds[kind]
    if kind == "dicom":
        return load_dicom_series(files, limits, keep_paths=keep_paths), warnings
    if kind == "nifti":
        if len(files) > 1:
            raise UnsupportedInputError(
                f"{len(files)} NIfTI files given ({', '.join(f.name for f in files[:3])}); upload one volume at a time"
            )
        return load_nifti(files[0], limits), warnings
    return load_images(files, limits, spacing, window), warnings


def load_volume(
    src: str | Path | Sequence[str | Path],
    *,
    limits: Limits | None = None,
    spacing: Sequence[float] | None = None,
    image_window: str | tuple[float, float] | Window | None = None,
) -> Volume:
    """Read a CT volume from a file, a folder, a list of files or a .zip (see the module docstring).

    Args:
        src: a path (file or folder) or a list of paths (the files a user uploaded).
        limits: size limits (``Limits()`` by default).
        spacing: (slice, row, col) mm for PNG/JPG input, which carries none; ignored, with a warning, for DICOM
            and NIfTI, which carry their own.
        image_window: the display window PNG/JPG input was exported with, to turn its grey levels back into HU:
            a preset ("ctich", "brain", "subdural", "bone", "paper", "hu"), "C/W" or "C,W" text, or a
            (centre, width) pair; None or "auto" estimates it from the images (``Volume.meta["input_window"]``
            says what was used). Ignored, with a warning, for DICOM and NIfTI, which hold HU.

    Returns:
        A completely filled ``Volume``; ``warnings`` lists what was skipped or assumed.

    Raises:
        UnsupportedInputError: empty upload, unrecognised or unsupported input (modality, 4-D, colour DICOM...).
        CorruptInputError: a file that is not what it claims, or truncated.
        UnsafeInputError: unsafe archive or input over a size limit.
        ConfigError: a malformed ``spacing`` or ``image_window``.
    """
    limits = limits or Limits()
    spacing = _check_spacing(spacing)
    window = parse_window(image_window)
    entries = _as_paths(src)
    with tempfile.TemporaryDirectory(prefix="ichdemo-") as tmp:
        files, extracted = _expand(entries, limits, Path(tmp))
        check_file_sizes(files, limits)
        kinds, warnings = _classify(files)
        volume, more = _load_kind(kinds, limits, spacing, keep_paths=not extracted, window=window)
    if spacing is not None and volume.source != "image":
        more.append(f"spacing={spacing} ignored: {volume.source.upper()} input carries its own spacing")
    if window is not None and volume.source != "image":
        more.append(f"image_window={window} ignored: {volume.source.upper()} input holds HU")
    volume.warnings = warnings + more + volume.warnings
    return volume


# -------------------------------------------------------------------------------------------------------- describe
def describe(volume: Volume) -> str:
    """Multi-line, human-readable account of a loaded volume (for ``python -m ichdemo info``)."""
    s = volume.summary()
    lines = [
        f"source:   {volume.description or volume.source}",
        f"slices:   {s['slices']} of {s['cols']} x {s['rows']} px (cols x rows)",
        "spacing:  "
        + " x ".join(f"{v:g}" for v in s["spacing_mm"])
        + " mm (slice x row x col)"
        + (" - assumed, volumes are estimates" if s["spacing_assumed"] else ""),
        f"voxel:    {volume.voxel_volume_ml * 1000:.4g} mm^3",
        f"values:   {s['values']}, range {s['range'][0]:g} to {s['range'][1]:g}",
        f"axes:     {''.join(aff2axcodes(volume.affine))} (of data.transpose(2, 1, 0))",
    ]
    if volume.dicom is not None:
        lines.append(f"series:   {volume.dicom.series_instance_uid}")
        lines.append(f"study:    {volume.dicom.study_instance_uid}")
    lines.append(f"warnings: {len(s['warnings'])}" if s["warnings"] else "warnings: none")
    lines += [f"  - {w}" for w in s["warnings"]]
    return "\n".join(lines)

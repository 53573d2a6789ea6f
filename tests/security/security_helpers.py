"""Helpers of the security tests: tiny DICOM series, byte-level edits, a sandboxed and time-limited loader run
(fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom

from ichdemo.errors import IchdemoError
from ichdemo.io import load_volume
from ichdemo.io.dicom_write import write_dicom_series
from ichdemo.volume import Volume

SPACING = (2.0, 0.5, 0.5)  # (slice, row, col) mm of every tiny series; PixelSpacing is written as "0.5\0.5"


def tiny_series(folder: Path, n: int = 1, size: tuple[int, int] = (8, 8), **kw) -> list[Path]:
    """``n`` slices of ``size`` (8 x 8 by default: fast), HU ramp 0..n-1, written as one CT series."""
    hu = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, *size)).copy()
    return write_dicom_series(hu, SPACING, folder, **kw)


def rewrite(paths: list[Path], change: Callable[[pydicom.Dataset], None]) -> None:
    """Apply ``change`` to every file's dataset and save it back."""
    for p in paths:
        ds = pydicom.dcmread(p)
        change(ds)
        ds.save_as(p)


def patch_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Replace the one occurrence of ``old`` in ``path`` by ``new`` (asserts it occurs exactly once)."""
    data = path.read_bytes()
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times in {path.name}"
    path.write_bytes(data.replace(old, new))


# ------------------------------------------------------------------------------------------------------ fuzzing
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def element_offsets(data: bytes) -> dict[int, tuple[int, int, int]]:
    """Tag -> (offset of its length field, size of that field, value length), for a flat explicit VR little
    endian file after its 132-byte preamble (what ``write_dicom_series`` writes: no sequences)."""
    out, pos = {}, 132
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            field, size = pos + 8, 4
        else:
            field, size = pos + 6, 2
        length = struct.unpack_from("<I" if size == 4 else "<H", data, field)[0]
        out[(group << 16) | elem] = (field, size, length)
        pos = field + size + length
    return out


def set_raw_value(data: bytes, offsets: dict[int, tuple[int, int, int]], tag: int, value: bytes) -> bytes:
    """``data`` with the value of ``tag`` replaced by ``value`` (padded to even length) and its length field fixed;
    no validation at all, unlike pydicom's writer."""
    field, size, length = offsets[tag]
    value = value + b" " if len(value) % 2 else value
    start = field + size
    return data[:field] + struct.pack("<I" if size == 4 else "<H", len(value)) + value + data[start + length :]


class Hang(BaseException):
    """Raised by ``time_limit``; a BaseException so that no ``except Exception`` in the code under test eats it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` of wall time (SIGALRM; main thread, Unix)."""

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Blob(bytes):
    """File content with a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


class Files(dict):
    """name -> bytes of an upload, with a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<{len(self)} file(s): {', '.join(f'{k} ({len(v)} B)' for k, v in self.items())}>"


def load_in_sandbox(
    files: dict[str, bytes],
    root: Path,
    seconds: float = 20.0,
    inspect: Callable[[Volume], None] | None = None,
) -> Volume | None:
    """Write ``files`` into a fresh inbox under ``root`` and ``load_volume`` the inbox (the one file if there is
    one) with ``tempfile`` and the working directory pointed at empty folders.

    Returns the Volume, or None when the loader refused with an ``IchdemoError``; any other exception propagates
    (that is the bug fuzzing looks for). Asserts that the inputs are untouched and nothing was written anywhere
    else (temp root and working directory empty afterwards). ``inspect(volume)`` runs while the inbox still exists.
    """
    work = Path(tempfile.mkdtemp(dir=root))
    inbox, tmp, cwd = work / "in", work / "tmp", work / "cwd"
    for folder in (inbox, tmp, cwd):
        folder.mkdir()
    for name, data in files.items():
        (inbox / name).write_bytes(data)
    src = inbox / next(iter(files)) if len(files) == 1 else inbox
    old_tmp, old_cwd = tempfile.tempdir, os.getcwd()
    tempfile.tempdir = str(tmp)
    os.chdir(cwd)
    try:
        with time_limit(seconds), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom/nibabel complain about every damaged value
            try:
                volume = load_volume(src)
            except IchdemoError as err:
                assert "\n" not in str(err), f"multi-line message: {err!r}"
                volume = None
    finally:
        os.chdir(old_cwd)
        tempfile.tempdir = old_tmp
    assert not any(tmp.iterdir()) and not any(cwd.iterdir()), "the loader left files behind"
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == files, "the loader changed its input"
    if volume is not None and inspect is not None:
        inspect(volume)
    shutil.rmtree(work)
    return volume


def assert_sane(volume: Volume) -> None:
    """What any returned Volume must be: finite float32 (S, H, W) data with finite positive spacing."""
    data = volume.data
    assert isinstance(data, np.ndarray) and data.dtype == np.float32 and data.ndim == 3, (type(data), data.dtype)
    assert min(data.shape) >= 1, data.shape
    assert np.isfinite(data).all(), "non-finite voxels"
    spacing = np.asarray(volume.spacing, dtype=float)
    assert spacing.shape == (3,) and np.isfinite(spacing).all() and (spacing > 0).all(), volume.spacing
    assert volume.affine.shape == (4, 4) and np.isfinite(volume.affine).all(), volume.affine
    assert len(volume.slice_names) == data.shape[0]
    assert all(isinstance(w, str) for w in volume.warnings)

"""Size limits that keep a hostile or accidental upload from exhausting memory or disk.

Every loader in ``ichdemo.io`` takes a ``Limits``; the defaults fit a full head CT study with room to spare.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ichdemo.errors import UnsafeInputError, UnsupportedInputError


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one load may read.

    Attributes:
        max_file_bytes: largest single file (on disk or inside an archive), bytes.
        max_total_bytes: largest total (uncompressed) size of all files of one upload, bytes.
        max_files: most files in one upload (folder, list or archive).
        max_slices: most slices in the volume that is returned.
        max_pixels: most pixels in one 2-D image (rows x cols); also the guard against PIL decompression bombs.
        max_compression_ratio: an archive entry that expands more than this (uncompressed / compressed) is
            treated as a zip bomb (checked for entries over 1 MiB, where real DICOMs stay far below it).
    """

    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30
    max_files: int = 4000
    max_slices: int = 2000
    max_pixels: int = 4096 * 4096
    max_compression_ratio: float = 100.0

    def check_pixels(self, rows: int, cols: int, what: str) -> None:
        """Raise ``UnsafeInputError`` when a ``rows`` x ``cols`` image is over ``max_pixels``."""
        if rows * cols > self.max_pixels:
            raise UnsafeInputError(
                f"{what}: image of {cols}x{rows} pixels is over the limit of {self.max_pixels} pixels per image"
            )

    def check_slices(self, n: int, what: str) -> None:
        """Raise ``UnsafeInputError`` when a volume has more than ``max_slices`` slices."""
        if n > self.max_slices:
            raise UnsafeInputError(f"{what}: {n} slices is over the limit of {self.max_slices} slices")


def check_file_sizes(files: list[Path], limits: Limits) -> None:
    """Check an upload's file count, each file's size and the total size against ``limits``.

    Raises:
        UnsupportedInputError: no files, or only zero-byte files ("empty upload").
        UnsafeInputError: too many files, a file or the total over the byte limits.
    """
    if not files:
        raise UnsupportedInputError("empty upload: no files were given")
    if len(files) > limits.max_files:
        raise UnsafeInputError(f"upload has {len(files)} files, over the limit of {limits.max_files} files")
    sizes = [os.path.getsize(f) for f in files]
    for f, size in zip(files, sizes):
        if size > limits.max_file_bytes:
            raise UnsafeInputError(
                f"{f.name}: {size} bytes is over the limit of {limits.max_file_bytes} bytes per file"
            )
    if sum(sizes) > limits.max_total_bytes:
        raise UnsafeInputError(f"upload totals {sum(sizes)} bytes, over the limit of {limits.max_total_bytes} bytes")
    if not any(sizes):
        if len(files) == 1:
            raise UnsupportedInputError(f"empty upload: {files[0].name} is 0 bytes")
        names = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise UnsupportedInputError(f"empty upload: all {len(files)} files are 0 bytes ({names})")

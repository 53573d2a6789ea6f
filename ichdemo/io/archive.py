"""Safe extraction of uploaded .zip archives (DICOM series usually travel zipped).

A zip can try to write outside the extraction folder (absolute names, ``..``), plant symlinks, or expand into far
more bytes than it occupies (a zip bomb). ``safe_extract_zip`` refuses all of these before writing anything, and
counts the bytes it actually writes, because the sizes in an archive's directory are only claims.
"""

from __future__ import annotations

import lzma
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ichdemo.errors import CorruptInputError, UnsafeInputError, UnsupportedInputError, brief
from ichdemo.io.limits import Limits

_BOMB_MIN_BYTES = 1 << 20  # ratios of tiny entries say nothing (an empty DICOM slice deflates 1000x)
_CHUNK = 1 << 20


def is_ignored_member(name: str) -> bool:
    """True for macOS resource forks (``__MACOSX/``) and dotfiles (``.DS_Store``, ``._x``) anywhere in the path."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p == "__MACOSX" or p.startswith(".") and p not in (".", "..") for p in parts)


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; raise ``UnsafeInputError`` for absolute names, ``..`` and symlinks."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeInputError(f"zip entry '{info.filename}' has an absolute path; refusing to extract")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeInputError(f"zip entry '{info.filename}' escapes the extraction folder with '..'; refusing")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeInputError(f"zip entry '{info.filename}' is a symbolic link; refusing to extract")
    return path


def _check_members(members: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Check counts, sizes and compression ratios as the archive's directory declares them."""
    if len(members) > limits.max_files:
        raise UnsafeInputError(f"zip has {len(members)} files, over the limit of {limits.max_files} files")
    total = 0
    for info in members:
        if info.flag_bits & 0x1:
            raise UnsupportedInputError(f"zip entry '{info.filename}' is encrypted; upload an unencrypted archive")
        if info.file_size > limits.max_file_bytes:
            raise UnsafeInputError(
                f"zip entry '{info.filename}' expands to {info.file_size} bytes, over the limit of "
                f"{limits.max_file_bytes} bytes per file"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _BOMB_MIN_BYTES and ratio > limits.max_compression_ratio:
            raise UnsafeInputError(
                f"zip entry '{info.filename}' expands {ratio:.0f}x (limit {limits.max_compression_ratio:.0f}x): "
                "this looks like a zip bomb; refusing to extract"
            )
        total += info.file_size
    if total > limits.max_total_bytes:
        raise UnsafeInputError(
            f"zip expands to {total} bytes in total, over the limit of {limits.max_total_bytes} bytes"
        )


def _read_chunk(src, info: zipfile.ZipInfo) -> bytes:
    """The next decompressed chunk; a damaged stream (found by fuzzing) is a ``CorruptInputError``."""
    try:
        return src.read(_CHUNK)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError) as err:  # bz2 raises OSError
        raise CorruptInputError(
            f"zip entry '{info.filename}' cannot be decompressed, the archive is damaged ({brief(err)})"
        ) from err


def _open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    try:
        return zf.open(info)
    except NotImplementedError as err:  # a compression method zipfile cannot decode (or a damaged method field)
        raise UnsupportedInputError(
            f"zip entry '{info.filename}' uses a compression method that is not supported ({brief(err)}); "
            "re-zip with standard (deflate) compression"
        ) from err


def _copy_counted(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Write one member, stopping if it yields more bytes than declared or than the remaining ``budget``."""
    written = 0
    cap = min(info.file_size, budget)
    with _open_member(zf, info) as src, open(target, "wb") as dst:
        while chunk := _read_chunk(src, info):
            written += len(chunk)
            if written > cap:
                raise UnsafeInputError(
                    f"zip entry '{info.filename}' expands beyond its declared size or the total limit; refusing"
                )
            dst.write(chunk)
    return written


def safe_extract_zip(path: str | Path, dest: str | Path, limits: Limits | None = None) -> list[Path]:
    """Extract a zip archive into ``dest`` after checking every entry.

    Directories, ``__MACOSX/`` and dotfiles are skipped. Nothing is written if a check on the archive's directory
    fails; if an entry turns out to expand beyond its declared size, extraction stops and the files written so far
    are removed.

    Args:
        path: the .zip file.
        dest: an existing folder to extract into.
        limits: size limits (``Limits()`` by default).

    Returns:
        The extracted files, in archive order.

    Raises:
        UnsafeInputError: absolute path, ``..`` escape, symlink, too many files, too many bytes, bomb-like ratio.
        CorruptInputError: not a readable zip file, or an entry whose compressed data is damaged.
        UnsupportedInputError: encrypted entries, a compression method zipfile cannot decode.
    """
    limits = limits or Limits()
    dest = Path(dest).resolve()
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir() and not is_ignored_member(i.filename)]
            paths = [_member_path(i) for i in members]
            _check_members(members, limits)
            return _extract_all(zf, members, paths, dest, limits)
    except zipfile.BadZipFile as err:
        raise CorruptInputError(f"{Path(path).name}: not a readable zip archive ({brief(err)})") from err


def _extract_all(
    zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], paths: list[PurePosixPath], dest: Path, limits: Limits
) -> list[Path]:
    """Extract checked members; on any failure remove what was written."""
    out: list[Path] = []
    budget = limits.max_total_bytes
    target = dest
    try:
        for info, rel in zip(members, paths):
            target = (dest / rel).resolve()
            if dest not in target.parents:  # belt and braces after the '..' check
                raise UnsafeInputError(f"zip entry '{info.filename}' resolves outside the extraction folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            budget -= _copy_counted(zf, info, target, budget)
            out.append(target)
    except BaseException:
        for written in [*out, target]:
            if written.is_file():
                written.unlink()
        raise
    return out

"""safe_extract_zip: what is extracted, and every unsafe archive refused with its own message."""

from __future__ import annotations

import stat
import zipfile

import pytest

from ichdemo.errors import CorruptInputError, UnsafeInputError, UnsupportedInputError
from ichdemo.io.archive import is_ignored_member, safe_extract_zip
from ichdemo.io.limits import Limits


def make_zip(path, entries, compression=zipfile.ZIP_DEFLATED):
    """entries: {name: bytes} or {ZipInfo: bytes}."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_extracts_nested_files_and_skips_junk(tmp_path):
    archive = make_zip(
        tmp_path / "a.zip",
        {
            "study/series/1.dcm": b"one",
            "study/series/2.dcm": b"two",
            "study/": b"",
            "__MACOSX/study/._1.dcm": b"fork",
            "study/.DS_Store": b"ds",
        },
    )
    dest = tmp_path / "out"
    dest.mkdir()
    files = safe_extract_zip(archive, dest)
    assert [f.relative_to(dest).as_posix() for f in files] == ["study/series/1.dcm", "study/series/2.dcm"]
    assert files[1].read_bytes() == b"two"


@pytest.mark.parametrize("name", ["__MACOSX/x", "a/.hidden", "._x.dcm", "a/__MACOSX/b"])
def test_ignored_members(name):
    assert is_ignored_member(name)


def test_regular_member_not_ignored():
    assert not is_ignored_member("study/IM0001") and not is_ignored_member("a/b.c/d.dcm")


def _refused(tmp_path, archive, match, limits=None, error=UnsafeInputError):
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(error, match=match):
        safe_extract_zip(archive, dest, limits)
    assert list(dest.rglob("*")) == []  # nothing written
    assert not (tmp_path / "x").exists() and not (tmp_path / "evil").exists()


def test_parent_escape_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"ok.dcm": b"1", "../x": b"escape"})
    _refused(tmp_path, archive, r"'\.\./x' escapes the extraction folder")


def test_backslash_parent_escape_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a\\..\\..\\x": b"escape"})
    _refused(tmp_path, archive, "escapes the extraction folder")


def test_absolute_path_refused(tmp_path):
    info = zipfile.ZipInfo("/tmp/evil")
    archive = make_zip(tmp_path / "a.zip", {info: b"abs"})
    _refused(tmp_path, archive, "absolute path")


def test_windows_drive_path_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"C:/evil": b"abs"})
    _refused(tmp_path, archive, "absolute path")


def test_symlink_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "a.zip", {info: b"/etc/passwd"})
    _refused(tmp_path, archive, "symbolic link")


def test_bomb_ratio_refused(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.dcm": bytes(8 << 20)})
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000
    _refused(tmp_path, archive, "zip bomb")


def test_total_size_limit(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {f"{i}.dcm": bytes(600) for i in range(3)}, zipfile.ZIP_STORED)
    _refused(tmp_path, archive, "expands to 1800 bytes in total, over the limit of 1000", Limits(max_total_bytes=1000))


def test_file_count_limit(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {f"{i}.dcm": b"x" for i in range(5)})
    _refused(tmp_path, archive, "5 files, over the limit of 4", Limits(max_files=4))


def test_entry_size_limit(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"big.dcm": bytes(5000)}, zipfile.ZIP_STORED)
    _refused(tmp_path, archive, "per file", Limits(max_file_bytes=4000))


def test_lying_header_is_caught_while_writing(tmp_path):
    """A member whose directory entry understates its size stops at the declared size."""
    archive = make_zip(tmp_path / "a.zip", {"a.dcm": bytes(3000)}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    # patch the central directory's uncompressed size (offset 24 in the entry) down to 10 bytes
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises((UnsafeInputError, CorruptInputError)):
        safe_extract_zip(archive, dest)
    assert list(dest.rglob("*.dcm")) == []


def test_not_a_zip(tmp_path):
    bad = tmp_path / "a.zip"
    bad.write_bytes(b"PK\x03\x04 but nothing else")
    _refused(tmp_path, bad, "not a readable zip", error=CorruptInputError)


def test_encrypted_entry_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.dcm": b"secret"})
    data = bytearray(archive.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 8] |= 0x1  # set the "encrypted" general-purpose flag
    archive.write_bytes(bytes(data))
    _refused(tmp_path, archive, "encrypted", error=UnsupportedInputError)

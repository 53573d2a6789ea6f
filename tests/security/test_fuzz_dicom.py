"""Property-based fuzzing of the DICOM reader (and the zip that DICOM series travel in): uploads are untrusted.

Valid tiny series (3 slices of 8 x 8) are damaged: bit flips, truncation, random raw values in the header fields the
loader reads, random bytes after a valid preamble or file meta group, bit flips in a zip of the series. Whatever
comes in, ``load_volume`` either returns a sane Volume (finite float32 of the shape the header declares, finite
positive spacing) or raises an ``IchdemoError`` with a one-line message; never another exception, never a hang
(per-example deadline plus a hard SIGALRM limit), never a file outside its temporary folder.

Bounded and reproducible for CI: ``derandomize=True``, no example database, a fixed number of examples.
"""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from security_helpers import Files, assert_sane, element_offsets, load_in_sandbox, set_raw_value

from ichdemo.io.dicom_write import write_dicom_series

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

# Header fields the loader interprets, by keyword; each gets random raw bytes or numbers-as-text.
FIELDS = (
    "TransferSyntaxUID", "SOPClassUID", "SOPInstanceUID", "Modality", "ImageType", "SeriesInstanceUID",
    "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "PixelSpacing", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "PixelData",
)
SPECIAL_NUMBERS = ("nan", "inf", "-inf", "1e38", "-1e38", "1e-45", "0", "-0", "-1", "65535", "4294967297", "", " ")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 300, (3, 8, 8)).astype(np.float32)
    paths = write_dicom_series(hu, (2.5, 0.5, 0.5), tmp_path_factory.mktemp("fuzz-dicom"), seed=1)
    return Files({p.name: p.read_bytes() for p in paths})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-dicom-runs")


def check(files: dict[str, bytes], root: Path) -> None:
    """Load; a returned Volume must be sane and have the size its own first file declares."""

    def inspect(volume):
        assert_sane(volume)
        assert volume.source == "dicom" and volume.dicom is not None
        assert volume.shape[0] == len(volume.dicom.sop_instance_uids) <= 3
        if volume.dicom.files:  # a folder: read what the first file declares
            first = pydicom.dcmread(volume.dicom.files[0], stop_before_pixels=True, force=True)
            assert volume.shape[1:] == (int(first.Rows), int(first.Columns))
        else:  # a zip: its CRCs guarantee the files are the originals
            assert volume.shape[1:] == (8, 8)

    volume = load_in_sandbox(Files(files), root, inspect=inspect)
    event("loaded" if volume is not None else "refused")  # --hypothesis-show-statistics: the mix is not all one


def damaged(series: dict[str, bytes], which: int, data: bytes) -> dict[str, bytes]:
    """The series with file ``which`` replaced by ``data``."""
    names = sorted(series)
    return Files({**series, names[which % len(names)]: data})


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, bit in flips:
        out[pos % len(out)] ^= 1 << bit
    return bytes(out)


FLIPS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=24)
NUMBERS_AS_TEXT = st.lists(
    st.one_of(
        st.sampled_from(SPECIAL_NUMBERS),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda v: f"{v:.6g}"),
        st.integers(-(1 << 40), 1 << 40).map(str),
    ),
    min_size=1,
    max_size=7,
).map(lambda parts: "\\".join(parts).encode("ascii"))
RAW_VALUE = st.one_of(st.binary(max_size=40), NUMBERS_AS_TEXT)


@settings(FUZZ, max_examples=150)
@given(which=st.integers(0, 2), flips=FLIPS)
def test_bit_flips(series, root, which, flips):
    name = sorted(series)[which]
    check(damaged(series, which, _flip(series[name], flips)), root)


@settings(FUZZ, max_examples=60)
@given(which=st.integers(0, 2), keep=st.floats(0, 1, exclude_max=True))
def test_truncation(series, root, which, keep):
    name = sorted(series)[which]
    data = series[name]
    check(damaged(series, which, data[: int(len(data) * keep)]), root)


@settings(FUZZ, max_examples=150)
@given(
    which=st.integers(0, 2),
    edits=st.lists(st.tuples(st.sampled_from(FIELDS), RAW_VALUE), min_size=1, max_size=4, unique_by=lambda e: e[0]),
    everywhere=st.booleans(),
)
def test_random_header_values(series, root, which, edits, everywhere):
    """Raw values straight into the file, past pydicom's validation: what a broken exporter or an attacker writes.
    ``everywhere``: the same edit in every file of the series (so it cannot be outvoted by the good slices)."""
    names = sorted(series)
    targets = names if everywhere else [names[which]]
    files = dict(series)
    for name in targets:
        data = files[name]
        tags = [pydicom.datadict.tag_for_keyword(k) for k, _ in edits]
        for tag, (_, value) in sorted(zip(tags, edits), key=lambda t: -element_offsets(data)[t[0]][0]):
            data = set_raw_value(data, element_offsets(data), tag, value)  # from the end: offsets stay valid
        files[name] = data
    check(files, root)


@settings(FUZZ, max_examples=100)
@given(tail=st.binary(min_size=0, max_size=3000), keep_meta=st.booleans())
def test_random_bytes_after_a_valid_preamble(series, root, tail, keep_meta):
    """128-byte preamble + 'DICM' (and, with ``keep_meta``, the real file meta group) + random bytes."""
    data = series[sorted(series)[0]]
    offsets = element_offsets(data)
    meta_end = max(f + s + n for tag, (f, s, n) in offsets.items() if tag >> 16 == 0x0002)
    check({"CT0001.dcm": data[: meta_end if keep_meta else 132] + tail}, root)


@settings(FUZZ, max_examples=100)
@given(flips=FLIPS)
def test_zip_bit_flips(series, root, flips):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in series.items():
            zf.writestr(f"study/{name}", data)
    check({"study.zip": _flip(buf.getvalue(), flips)}, root)


def test_the_unmodified_series_is_sane(series, root):
    """The fuzzers' starting point loads (else every example above would be a refusal and prove nothing)."""
    volume = load_in_sandbox(series, root)
    assert volume is not None and volume.shape == (3, 8, 8)
    assert_sane(volume)


def test_a_hang_is_caught(root, monkeypatch):
    """The SIGALRM guard turns a loader that never returns into a failure, not a stuck CI job."""
    import time

    import security_helpers

    def stuck(src):
        time.sleep(30)

    monkeypatch.setattr(security_helpers, "load_volume", stuck)
    with pytest.raises(security_helpers.Hang):
        load_in_sandbox({"a.dcm": b"x"}, root, seconds=0.2)


"""Property-based fuzzing of the NIfTI reader: uploads are untrusted.

A valid tiny volume (.nii and .nii.gz, 6 x 5 x 4, oblique affine) is damaged: bit flips, truncation, random values
in the header fields nibabel and the loader read (dims, datatype, pixdim, offsets, scaling, qform/sform, units,
magic), random bytes after a valid header. ``load_volume`` either returns a sane Volume (finite float32 holding the
voxels the header declares, finite positive spacing) or raises an ``IchdemoError`` with a one-line message; never
another exception, never a hang, never a file outside its temporary folder.

Bounded and reproducible for CI: ``derandomize=True``, no example database, a fixed number of examples.
"""

from __future__ import annotations

import gzip
import io
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from security_helpers import Blob, Files, assert_sane, load_in_sandbox

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SHAPE = (6, 5, 4)
INT16 = st.one_of(st.sampled_from([-1, 0, 1, 2, 3, 4, 7, 8, 255, 4096, 32767, -32768]), st.integers(-32768, 32767))
FLOAT32 = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-38, 1e38, -1e38, float("nan"), float("inf"), float("-inf")]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
# Header fields (nibabel's header_dtype) and what to put in them.
FIELDS = {
    "sizeof_hdr": st.integers(-(1 << 31), (1 << 31) - 1),
    "dim": st.lists(INT16, min_size=8, max_size=8),
    "datatype": st.one_of(st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792,
                                           2048, 2304]), INT16),
    "bitpix": INT16,
    "pixdim": st.lists(FLOAT32, min_size=8, max_size=8),
    "vox_offset": FLOAT32,
    "scl_slope": FLOAT32,
    "scl_inter": FLOAT32,
    "qform_code": INT16,
    "sform_code": INT16,
    "quatern_b": FLOAT32,
    "quatern_c": FLOAT32,
    "quatern_d": FLOAT32,
    "qoffset_x": FLOAT32,
    "srow_x": st.lists(FLOAT32, min_size=4, max_size=4),
    "srow_y": st.lists(FLOAT32, min_size=4, max_size=4),
    "srow_z": st.lists(FLOAT32, min_size=4, max_size=4),
    "xyzt_units": st.integers(0, 255),
    "dim_info": st.integers(0, 255),
    "intent_code": INT16,
    "magic": st.sampled_from([b"n+1\x00", b"ni1\x00", b"n+2\x00", b"\x00\x00\x00\x00", b"n+1 "]),
}


def _affine() -> np.ndarray:
    a = np.deg2rad(20)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([0.9, 0.8, 3])
    aff[:3, 3] = [10, -20, 5]
    return aff


@pytest.fixture(scope="module")
def nii() -> bytes:
    data = np.random.default_rng(0).normal(30, 400, SHAPE).astype(np.float32)
    img = nib.Nifti1Image(data, _affine())
    img.set_qform(_affine(), code=1)
    img.header.set_xyzt_units("mm")
    return Blob(img.to_bytes())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-nifti-runs")


def _declared_dims(raw: bytes) -> tuple[int, ...] | None:
    """The spatial dims the (possibly damaged) header declares, as nibabel reads it; None if it cannot."""
    try:
        head = gzip.decompress(raw)[:352] if raw[:2] == b"\x1f\x8b" else raw[:352]
        return tuple(int(n) for n in nib.Nifti1Header.from_fileobj(io.BytesIO(head), check=False).get_data_shape())
    except Exception:  # a header nibabel cannot parse: nothing to compare  # noqa: BLE001
        return None


def check(name: str, raw: bytes, root: Path) -> None:
    """Load; a returned Volume must be sane and hold exactly the voxels its header declares."""

    def inspect(volume):
        assert_sane(volume)
        assert volume.source == "nifti"
        dims = _declared_dims(raw)
        if dims is not None:
            spatial = (tuple(dims) + (1, 1, 1))[:3]
            assert sorted(volume.shape) == sorted(spatial), (volume.shape, dims)  # reoriented, never resampled

    volume = load_in_sandbox(Files({name: raw}), root, inspect=inspect)
    event("loaded" if volume is not None else "refused")


def _as(name: str, raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0) if name.endswith(".gz") else raw


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, bit in flips:
        out[pos % len(out)] ^= 1 << bit
    return bytes(out)


NAMES = st.sampled_from(["ct.nii", "ct.nii.gz"])
FLIPS = st.lists(st.tuples(st.integers(0, 1 << 12), st.integers(0, 7)), min_size=1, max_size=16)


@settings(FUZZ, max_examples=150)
@given(name=NAMES, flips=FLIPS, after_gzip=st.booleans())
def test_bit_flips(nii, root, name, flips, after_gzip):
    """Flips in the NIfTI bytes, or (``after_gzip``) in the compressed stream of a .nii.gz."""
    if after_gzip and name.endswith(".gz"):
        check(name, _flip(_as(name, nii), flips), root)
    else:
        check(name, _as(name, _flip(nii, flips)), root)


@settings(FUZZ, max_examples=60)
@given(name=NAMES, keep=st.floats(0, 1, exclude_max=True))
def test_truncation(nii, root, name, keep):
    raw = _as(name, nii)
    check(name, raw[: int(len(raw) * keep)], root)


@settings(FUZZ, max_examples=150)
@given(
    name=NAMES,
    edits=st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4, unique=True).flatmap(
        lambda keys: st.tuples(*(st.tuples(st.just(k), FIELDS[k]) for k in keys))
    ),
)
def test_random_header_values(nii, root, name, edits):
    """Raw values written straight into the 348-byte header, past nibabel's own checks."""
    hdr = np.frombuffer(nii[:348], nib.nifti1.header_dtype).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for key, value in edits:
            hdr[key] = value
    check(name, _as(name, hdr.tobytes() + nii[348:]), root)


@settings(FUZZ, max_examples=80)
@given(name=NAMES, tail=st.one_of(st.binary(max_size=479), st.binary(min_size=480, max_size=600)))
def test_random_bytes_after_a_valid_header(nii, root, name, tail):
    """Random voxel bytes: 480 of them fill the declared 6 x 5 x 4 float32 volume (random floats can be NaN)."""
    check(name, _as(name, nii[:352] + tail), root)


def test_the_unmodified_volume_is_sane(nii, root):
    """The fuzzers' starting point loads, from both file kinds."""
    for name in ("ct.nii", "ct.nii.gz"):
        volume = load_in_sandbox({name: _as(name, nii)}, root)
        assert volume is not None and sorted(volume.shape) == sorted(SHAPE)
        assert_sane(volume)

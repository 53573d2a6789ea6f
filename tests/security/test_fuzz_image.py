"""Property-based fuzzing of the PNG/JPEG reader (the third kind of upload): uploads are untrusted.

Bit flips and overwritten bytes in small valid PNG and JPEG slices: ``load_volume`` returns a sane Volume in HU
(under the window it estimated, recorded in ``meta["input_window"]``) or raises an ``IchdemoError``; PIL's own
ValueError/SyntaxError/EOFError never escape (fuzzing found "Truncated IHDR chunk" and "broken PNG file" before
ichdemo/io/image.py caught them).
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from security_helpers import Blob, Files, assert_sane, load_in_sandbox

from ichdemo.io.image import AIR_HU

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def images() -> dict[str, Blob]:
    grey = np.random.default_rng(0).integers(0, 256, (12, 16), dtype=np.uint8)
    out = {}
    for name, fmt in (("slice.png", "PNG"), ("slice.jpg", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, fmt)
        out[name] = Blob(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-image-runs")


def check(name: str, data: bytes, root: Path) -> None:
    def inspect(volume):
        assert_sane(volume)
        window = volume.meta["input_window"]
        lo, hi = window["centre"] - window["width"] / 2, window["centre"] + window["width"] / 2
        inside = volume.data != AIR_HU  # the black background becomes air; the rest stays inside the window
        assert not volume.prewindowed and lo <= volume.data[inside].min(initial=lo) <= volume.data.max() <= hi
        assert volume.shape[0] == 1

    volume = load_in_sandbox(Files({name: data}), root, inspect=inspect)
    event("loaded" if volume is not None else "refused")


@settings(FUZZ, max_examples=150)
@given(
    name=st.sampled_from(["slice.png", "slice.jpg"]),
    edits=st.lists(st.tuples(st.integers(0, 1 << 12), st.integers(0, 255)), min_size=1, max_size=12),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_damaged_images(images, root, name, edits, cut):
    """Random bytes overwritten (headers and chunk fields included), optionally truncated."""
    data = bytearray(images[name])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: int(len(data) * cut)]
    check(name, bytes(data), root)


def test_the_unmodified_images_are_sane(images, root):
    for name, data in images.items():
        volume = load_in_sandbox({name: bytes(data)}, root)
        assert volume is not None and volume.shape == (1, 12, 16)
        assert_sane(volume)

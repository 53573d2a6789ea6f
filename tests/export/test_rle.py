"""RLE encoders against the reference implementations (Label Studio's converter, pycocotools) and the specs."""

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from ichdemo.export import rle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _masks():
    rng = np.random.default_rng(0)
    out = [np.zeros((7, 5), np.uint8), np.ones((4, 9), np.uint8), np.eye(6, dtype=np.uint8)]
    for _ in range(12):
        h, w = rng.integers(1, 60, 2)
        out.append((rng.random((h, w)) > rng.random()).astype(np.uint8))
    big = np.zeros((300, 260), np.uint8)  # runs over 256 and over 65536 RGBA values
    big[100:180, 30:200] = 1
    out.append(big)
    return out


@pytest.mark.parametrize("mask", _masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_label_studio_rle_is_byte_identical_to_label_studio_converter(mask):
    brush = pytest.importorskip("label_studio_converter.brush")
    ours = rle.ls_mask_rle(mask)
    assert ours == list(brush.mask2rle(mask * 255))
    decoded = brush.decode_rle(ours).reshape(mask.shape[0], mask.shape[1], 4)
    np.testing.assert_array_equal(decoded[..., 3] > 0, mask > 0)


@pytest.mark.parametrize("run", [1, 2, 8, 9, 16, 17, 256, 257, 65536, 65537, 131073])
def test_label_studio_rle_run_lengths_at_every_field_boundary(run):
    values = np.concatenate([np.full(run, 9, np.uint8), np.arange(5, dtype=np.uint8)])
    enc = rle.ls_encode(values)
    np.testing.assert_array_equal(rle.ls_decode(enc), values)
    brush = pytest.importorskip("label_studio_converter.brush")
    assert enc == list(brush.encode_rle(values))


def test_label_studio_rle_header_and_run_bits_follow_the_spec():
    enc = rle.ls_encode(np.array([7, 7, 7, 200], np.uint8))
    bits = "".join(f"{b:08b}" for b in enc)
    assert int(bits[:32], 2) == 4  # number of values
    assert int(bits[32:37], 2) == 7  # word size - 1
    assert [int(bits[37 + 4 * i : 41 + 4 * i], 2) for i in range(4)] == [2, 3, 7, 15]
    run = bits[53:]
    assert run[:1] == "1" and run[1:3] == "00" and int(run[3:6], 2) == 2 and int(run[6:14], 2) == 7  # 3 x 7
    assert run[14:15] == "0" and run[15:17] == "00" and int(run[17:20], 2) == 0 and int(run[20:28], 2) == 200
    assert len(bits) % 8 == 0 and set(bits[53 + 28 :]) == {"0"}


def test_label_studio_decode_rejects_truncated_data():
    enc = rle.ls_encode(np.arange(50, dtype=np.uint8))
    with pytest.raises(ValueError, match="ends early"):
        rle.ls_decode(enc[:10])


@pytest.mark.parametrize("mask", _masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_coco_rle_matches_pycocotools(mask):
    ours = rle.coco_rle(mask)
    ref = coco_mask.encode(np.asfortranarray(mask))
    assert ours["counts"] == ref["counts"].decode("ascii")
    assert ours["size"] == list(ref["size"])
    back = coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode("ascii")})
    np.testing.assert_array_equal(back, mask)
    assert rle.bbox_xywh(mask) == pytest.approx(list(coco_mask.toBbox(ref)))


def test_coco_counts_start_with_zeros_and_are_column_major():
    mask = np.array([[1, 0], [1, 1]], np.uint8)  # column-major: 1 1 0 1
    assert rle.coco_counts(mask) == [0, 2, 1, 1]

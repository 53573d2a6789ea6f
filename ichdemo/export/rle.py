"""Run-length encodings used by annotation tools: Label Studio's brush RLE and COCO's compressed RLE.

Label Studio brush RLE (the format of ``label_studio_converter.brush.encode_rle``, which the Label Studio frontend
decodes): a bit stream, big-endian within each byte, of
    32 bits  number of values N (the flattened RGBA image, so 4 x width x height)
     5 bits  word size - 1 (7: values are 8-bit)
    4x4 bits the four run-length field widths - 1 (3, 4, 8, 16 bits -> 2, 3, 7, 15)
then, per run of equal values: 1 bit "series" flag, 2 bits index of the length field width, the length - 1 in
that many bits, and the 8-bit value. A run of one is written with the flag 0 and index 0 (a literal of one value);
runs of more than 65536 are split into 65536-long pieces. The stream is padded with 1 to 8 zero bits (a full zero
byte when it is already byte aligned, as the reference encoder does) and given as a list of byte values.

COCO compressed RLE (pycocotools ``maskApi.c`` ``rleToString``): run lengths of the mask flattened in column-major
(Fortran) order, starting with a run of zeros; each count, minus the count two places before it from the third on,
is written as little-endian 5-bit groups with a continuation bit, each group offset by 48 into printable ASCII.
"""

from __future__ import annotations

import numpy as np

_LS_WORD_BITS = 8
_LS_FIELD_BITS = (3, 4, 8, 16)
_LS_MAX_PIECE = 2**16


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and values of a 1-D array."""
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, flat.dtype)
    ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]), flat.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths.astype(np.int64), flat[ends]


def _split_long(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cut runs longer than 65536 into full 65536 pieces plus the rest.

    Returns:
        Per piece: length, value, length field index (0..3) and series flag (0 only for a run of one).
    """
    pieces = np.maximum(1, -(-lengths // _LS_MAX_PIECE))  # ceil, at least one piece
    idx = np.repeat(np.arange(lengths.size), pieces)
    first = np.cumsum(pieces) - pieces  # index of each run's first piece in the expanded arrays
    out = np.full(idx.size, _LS_MAX_PIECE, np.int64)
    last = first + pieces - 1
    out[last] = lengths - (pieces - 1) * _LS_MAX_PIECE
    field = np.select([out <= 8, out <= 16, out <= 256], [0, 1, 2], 3)
    field[np.repeat(lengths > 256, pieces)] = 3  # the reference keeps the 16-bit field for every piece of a long run
    flag = np.repeat(lengths > 1, pieces).astype(np.int64)
    return out, values[idx], field, flag


def _bits(fields: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate unsigned integers ``fields`` written in ``widths`` bits each (big-endian) into a bit array."""
    widths = widths.astype(np.int64)
    owner = np.repeat(np.arange(fields.size), widths)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(widths) - widths, widths)
    shift = widths[owner] - 1 - offset
    return ((fields.astype(np.uint64)[owner] >> shift.astype(np.uint64)) & np.uint64(1)).astype(np.uint8)


def ls_encode(values: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 1-D array of 8-bit values (see the module docstring).

    Args:
        values: any shape, flattened in C order; values must be in 0..255.

    Returns:
        The byte values, as Label Studio stores them in ``value.rle``.
    """
    flat = np.asarray(values).ravel()
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ValueError("Label Studio RLE holds 8-bit values (0..255)")
    lengths, vals, field, flag = _split_long(*_runs(flat.astype(np.int64)))
    head_fields = np.array([flat.size, _LS_WORD_BITS - 1, *(w - 1 for w in _LS_FIELD_BITS)], np.int64)
    head_widths = np.array([32, 5, 4, 4, 4, 4], np.int64)
    widths_table = np.array(_LS_FIELD_BITS, np.int64)
    # per run: flag (1), field index (2), length - 1 (3/4/8/16), value (8)
    run_fields = np.stack([flag, field, lengths - 1, vals.astype(np.int64)], axis=1)
    run_widths = np.stack(
        [np.ones_like(field), np.full_like(field, 2), widths_table[field], np.full_like(field, 8)], axis=1
    )
    bits = _bits(np.concatenate([head_fields, run_fields.ravel()]), np.concatenate([head_widths, run_widths.ravel()]))
    pad = 8 - bits.size % 8  # 1..8 zero bits, as the reference encoder pads
    bits = np.concatenate([bits, np.zeros(pad, np.uint8)])
    return np.packbits(bits).tolist()


class _BitReader:
    def __init__(self, data: bytes | list[int]):
        self.bits = np.unpackbits(np.asarray(bytearray(data), dtype=np.uint8))
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > self.bits.size:
            raise ValueError("Label Studio RLE ends early")
        chunk = self.bits[self.pos : self.pos + n]
        self.pos += n
        return int("".join("01"[b] for b in chunk), 2) if n else 0


def ls_decode(rle: bytes | list[int]) -> np.ndarray:
    """Decode Label Studio brush RLE to the flat uint8 array it encodes (the inverse of ``ls_encode``)."""
    r = _BitReader(rle)
    n = r.read(32)
    word = r.read(5) + 1
    widths = [r.read(4) + 1 for _ in range(4)]
    out = np.zeros(n, np.uint8)
    i = 0
    while i < n:
        series = r.read(1)
        j = i + 1 + r.read(widths[r.read(2)])
        if j > n:
            raise ValueError(f"Label Studio RLE run ends at {j}, past the {n} values it declares")
        if series:
            out[i:j] = r.read(word)
        else:
            for k in range(i, j):
                out[k] = r.read(word)
        i = j
    return out


def ls_mask_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 2-D binary mask, as an RGBA image with every channel 255 inside the mask.

    This is what ``label_studio_converter.brush.mask2rle(mask * 255)`` produces; Label Studio reads the alpha.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rgba = np.repeat(np.where(mask > 0, 255, 0).astype(np.uint8).ravel(), 4)
    return ls_encode(rgba)


def coco_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts of a 2-D binary mask: column-major runs, starting with zeros."""
    flat = (np.asarray(mask) > 0).ravel(order="F").astype(np.uint8)
    lengths, values = _runs(flat)
    counts = lengths.tolist()
    if values.size and values[0] == 1:
        counts.insert(0, 0)
    return counts


def coco_string(counts: list[int]) -> str:
    """COCO compressed RLE string of uncompressed ``counts`` (pycocotools ``rleToString``)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C for the signed long it uses
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE dict {"size": [h, w], "counts": str} of a 2-D binary mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": coco_string(coco_counts(mask))}


def bbox_xywh(mask: np.ndarray) -> list[float]:
    """COCO bbox [x, y, width, height] in pixels of a 2-D mask ([0, 0, 0, 0] when empty)."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]

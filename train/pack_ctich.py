"""python -m train.pack_ctich --data ../shared/data/ct-ich --out .gpu/ctich512 --size 512

A compact copy of CT-ICH for training on a remote GPU whose upload is small (the lent device takes 64 MiB in all):
every brain-window slice resized to ``size`` x ``size`` exactly as ``SliceStackDataset`` resizes it (``ResizeSpec``,
area interpolation when shrinking) and re-encoded as WebP at ``quality`` (about 40 MiB for the 2471 slices at 512 px
and quality 90, against 45 MiB for JPEG at the dataset's own quality 75), in the same layout with the same CSV, so
``--data ctich:OUT`` trains on it unchanged. Masks are left out (training uses slice labels only); evaluation and
calibration read the original dataset. The re-encoding is lossy: model cards of models trained on a pack say so.
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ichdemo.io.ctich import CSV_NAME, CTICHDataset
from ichdemo.io.image import read_grey
from ichdemo.transforms import ResizeSpec


def pack(root: Path, out: Path, size: int, quality: int, threads: int = 4) -> tuple[int, int]:
    """Write the pack; returns (slices, bytes)."""
    records = CTICHDataset(root).records
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / CSV_NAME, out / CSV_NAME)

    def one(rec) -> int:
        grey = read_grey(rec.path)[0].astype(np.float32)
        small = ResizeSpec(grey.shape[0], grey.shape[1], size).to_model(grey)
        target = (out / rec.path.relative_to(root)).with_suffix(".webp")
        target.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".webp", np.clip(np.rint(small), 0, 255).astype(np.uint8),
                               [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"WebP encoding failed for {rec.path}")
        target.write_bytes(buf.tobytes())
        return len(buf)

    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(one, records))
    return len(sizes), sum(sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ct-ich"), help="CT-ICH folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (a CT-ICH layout)")
    parser.add_argument("--size", type=int, default=512, help="side in pixels (the training input size)")
    parser.add_argument("--quality", type=int, default=90, help="WebP quality (1-100)")
    args = parser.parse_args(argv)
    n, nbytes = pack(args.data, args.out, args.size, args.quality)
    print(f"{n} slices, {nbytes / 2**20:.1f} MiB -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""python -m train.export_onnx --model runs/smoke --out runs/smoke/model.onnx [--size 256] [--opset 17]

Export a checkpoint to ONNX with outputs ``logits`` and ``heatmap`` and a dynamic batch axis (see
``ichdemo.onnx_model`` for what the heatmap output is for each model family).

The input is the normalised model input (B, 3, size, size) (``ichdemo.models.normalize_input``). After export the
file is checked with ``onnx.checker`` and run with ONNX Runtime on a batch of 2 random and 1 phantom-like images;
the script fails unless both outputs match PyTorch within ``--tolerance`` (max abs diff, default 1e-3).
"""

from __future__ import annotations

import argparse
import json
import sys

from ichdemo.errors import IchdemoError
from ichdemo.models import load_pretrained
from ichdemo.onnx_model import compare
from ichdemo.onnx_model import export_onnx as export


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.export_onnx", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--out", required=True, help="ONNX file to write (e.g. <model>/model.onnx)")
    p.add_argument("--size", type=int, help="input side in pixels (default: the checkpoint's input size)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted max abs diff vs PyTorch")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, config = load_pretrained(args.model)
        size = args.size or int(config["input_size"][-1])
        path = export(model, args.out, size, args.opset)
        diff = compare(model, path, size)
    except IchdemoError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    worst = max(diff["logits_max_abs_diff"], diff["heatmap_max_abs_diff"])
    print(json.dumps({"onnx": str(path), "size": size, **diff}, indent=2))
    if worst >= args.tolerance:
        print(f"error: ONNX output differs from PyTorch by {worst:.2e} (tolerance {args.tolerance})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

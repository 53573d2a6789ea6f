"""python -m train.export_onnx --model runs/smoke --out runs/smoke/model.onnx [--size 256] [--opset 17]

Export a checkpoint to ONNX with two outputs and a dynamic batch axis:

- ``logits`` (B, 5): the class scores (sigmoid gives the slice probabilities);
- ``heatmap`` (B, 5, h, w): the raw heatmap that ``ichdemo.cam.heatmaps(method="auto")`` returns as ``raw``.
  For ``lse_unet`` it is ReLU(f_0) at input/4. For ``gap`` with a linear head after global average pooling,
  Grad-CAM has a closed form (the gradient of a logit with respect to the last feature map is the head's weight
  row divided by h*w, constant over positions), ReLU(sum_k w_ck A_k) / (h*w), so it is exported as a forward
  computation too.

The input is the normalised model input (B, 3, size, size) (``ichdemo.models.normalize_input``). After export the
file is checked with ``onnx.checker`` and run with ONNX Runtime on a batch of 2 random and 1 phantom-like images;
the script fails unless both outputs match PyTorch within ``--tolerance`` (max abs diff, default 1e-3).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ichdemo.cam import heatmaps
from ichdemo.errors import IchdemoError, ModelError
from ichdemo.models import load_pretrained


class ExportWrapper(nn.Module):
    """(B, 3, H, W) normalised input -> (logits, heatmap), the heatmap computed in the forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.family = getattr(model, "family", None)
        if self.family == "gap":
            head = model.backbone.get_classifier()
            if not isinstance(head, nn.Linear):
                raise ModelError(f"ONNX heatmap export needs a linear head after pooling, got {type(head).__name__}")
            self.head = head
            self._features: torch.Tensor | None = None
            model.cam_layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._features = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        if self.family == "lse_unet":
            return out.logits, F.relu(out.maps[0])
        a = self._features  # (B, K, h, w)
        if a.shape[1] != self.head.in_features:
            raise ModelError(
                f"ONNX heatmap export of a gap model needs global pooling straight into the linear head; this "
                f"backbone has {a.shape[1]} feature channels but a {self.head.in_features}-input head (an extra "
                "layer between pooling and head), so Grad-CAM has no closed form: use ichdemo.cam in PyTorch"
            )
        n = a.shape[-2] * a.shape[-1]
        cam = torch.einsum("ck,bkhw->bchw", self.head.weight, a) / n
        return out.logits, F.relu(cam)


def export(model: nn.Module, path: str | Path, size: int, opset: int = 17) -> Path:
    """Write ``model`` as ONNX (outputs ``logits``, ``heatmap``; dynamic batch) and check it with onnx.checker."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model.eval().float()).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        wrapper(x)  # fails early, with a clear message, on a model the closed form does not cover
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export(wrapper, x, path, opset)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def _export(wrapper: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        wrapper, (x,), str(path), input_names=["input"], output_names=["logits", "heatmap"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "heatmap": {0: "batch"}},
        opset_version=opset, dynamo=False, do_constant_folding=True,
    )


def compare(model: nn.Module, path: str | Path, size: int, seed: int = 0) -> dict[str, float]:
    """Max abs difference between ONNX Runtime and PyTorch (``ichdemo.cam.heatmaps`` raw maps) on a batch of 3."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    x[2] = ((xx**2 + yy**2) < 0.6).float() * 1.5 - 0.5  # a bright disc: non-trivial maps
    ref = heatmaps(model.eval(), x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, heat = sess.run(["logits", "heatmap"], {"input": x.numpy()})
    return {
        "logits_max_abs_diff": float(np.abs(logits - ref.logits.numpy()).max()),
        "heatmap_max_abs_diff": float(np.abs(heat - ref.raw.numpy()).max()),
        "heatmap_scale": float(np.abs(ref.raw.numpy()).max()),
        "batch": 3,
    }


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

"""ONNX export of both model kinds, with heatmaps as outputs, and ONNX Runtime inference.

The exported graph takes the normalised model input (B, 3, size, size) (``ichdemo.models.normalize_input``) and has
two outputs with a dynamic batch axis:

- ``logits`` (B, 5): the class scores (sigmoid gives the slice probabilities);
- ``heatmap`` (B, 5, h, w): the raw heatmap that ``ichdemo.cam.heatmaps(method="auto")`` returns as ``raw``.
  For ``lse_unet`` it is ReLU(f_0) at input/4. For ``gap`` with a linear head after global average pooling,
  Grad-CAM has a closed form (the gradient of a logit with respect to the last feature map is the head's weight
  row divided by h*w, constant over positions), ReLU(sum_k w_ck A_k) / (h*w), so it is exported as a forward
  computation too.

``OnnxModel`` runs such a file and is what ``predict --runtime onnx`` uses in place of the torch model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ichdemo.cam import heatmaps, lse_result
from ichdemo.errors import ModelError

OUTPUTS = ("logits", "heatmap")


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
            self._hook = model.cam_layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._features = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        if self.family == "lse_unet":  # the same map as ichdemo.cam.lse_heatmaps
            return out.logits, lse_result(self.model, out, tuple(x.shape[-2:])).raw
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

    def release(self) -> None:
        """Remove the feature hook from the wrapped model."""
        if self.family == "gap":
            self._hook.remove()


def export_onnx(model: nn.Module, path: str | Path, size: int, opset: int = 17) -> Path:
    """Write ``model`` as ONNX (outputs ``logits``, ``heatmap``; dynamic batch) and check it with onnx.checker."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model.eval().float()).eval()
    x = torch.zeros(1, 3, size, size)
    try:
        with torch.no_grad():
            wrapper(x)  # fails early, with a clear message, on a model the closed form does not cover
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (x,), str(path), input_names=["input"], output_names=list(OUTPUTS),
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "heatmap": {0: "batch"}},
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
    finally:
        wrapper.release()
    onnx.checker.check_model(onnx.load(str(path)))
    return path


class OnnxModel:
    """An exported model on ONNX Runtime (CPU by default): ``run(x) -> {"logits": ..., "heatmap": ...}``."""

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            raise ModelError(f"cannot open ONNX model {Path(path).name}: {err}".splitlines()[0]) from None
        names = [o.name for o in self.session.get_outputs()]
        if tuple(names) != OUTPUTS:
            raise ModelError(f"{Path(path).name}: expected outputs {OUTPUTS}, found {tuple(names)}")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x (B, 3, H, W) float32 normalised input -> logits (B, 5) and heatmap (B, 5, h, w)."""
        logits, heat = self.session.run(list(OUTPUTS), {"input": np.ascontiguousarray(x, dtype=np.float32)})
        return {"logits": logits, "heatmap": heat}


def compare(model: nn.Module, path: str | Path, size: int, seed: int = 0) -> dict[str, float]:
    """Max abs difference between ONNX Runtime and PyTorch (``ichdemo.cam.heatmaps`` raw maps) on a batch of 3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    x[2] = ((xx**2 + yy**2) < 0.6).float() * 1.5 - 0.5  # a bright disc: non-trivial maps
    ref = heatmaps(model.eval(), x)
    got = OnnxModel(path).run(x.numpy())
    return {
        "logits_max_abs_diff": float(np.abs(got["logits"] - ref.logits.numpy()).max()),
        "heatmap_max_abs_diff": float(np.abs(got["heatmap"] - ref.raw.numpy()).max()),
        "heatmap_scale": float(np.abs(ref.raw.numpy()).max()),
        "batch": 3,
    }

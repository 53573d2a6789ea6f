"""Heatmaps for all five classes at the speed of inference (docs/METHOD.md: the Grad-CAM baselines, LSE-UNet).

* ``GradCAM``: for ``gap`` models on ``model.cam_layer`` (the last conv stage). ONE forward pass; the graph is
  recorded only from the hooked activation A upwards, then d logit_c / d A for every class c with
  ``torch.autograd.grad`` (never a full backward through the backbone). Channel weights = spatial mean of the
  gradient, map = ReLU(sum_l w_l A_l).
* ``lse_heatmaps``: for ``lse_unet`` models the heatmap is f_0 itself, straight from the forward pass.
  Exact claim (tested): Grad-CAM at f_0 (the layer ``model.cam_layer``) equals ``(r / n) * ReLU(f_0)`` for every
  class and every input, n = h * w, because d LSE_r(f_c) / d f_c = r * softmax(r f_c) sums to r over the
  positions, so class c's weights are (r / n) on channel c and 0 elsewhere. The map itself is ReLU of the pixel
  logits r * f_0 (+ log n when LSE is the paper's log-sum, without ``lse_mean``): the same as Grad-CAM up to scale
  with ``lse_mean``; without it Grad-CAM's ReLU(f_0) is empty on trained models (f_0 < 0 everywhere), see
  ``lse_heatmaps``.
* ``guided_backprop`` and ``integrated_gradients`` (captum): the paper's extra baselines, at input resolution.
* ``heatmaps(model, x, method="auto")`` dispatches by family.

All work on batches, on CPU or GPU, inside ``torch.autocast`` (maps are computed in float32), without leaving
torch. Models should be in eval mode (in train mode BatchNorm couples the images of a batch).

Example:
    >>> with GradCAM(model) as cam:
    ...     result = cam(x)  # result.raw (B, 5, 16, 16), result.upsampled (B, 5, 512, 512)
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ichdemo.errors import ConfigError, ModelError
from ichdemo.models.lse_unet import OUTSIDE

TINY = 1e-30
METHODS: tuple[str, ...] = ("auto", "gradcam", "lse", "guided_backprop", "integrated_gradients")
REDUCTIONS: tuple[str, ...] = ("relu_sum", "abs_max", "sum")


@dataclass
class CamResult:
    """Heatmaps of every class for a batch.

    Attributes:
        raw: (B, C, h, w) maps before any per-image rescaling (>= 0), at the method's own resolution.
        normalized: (B, C, h, w) ``raw / max over (h, w)`` per image and class, in [0, 1] (all-zero maps stay 0).
        upsampled: (B, C, H, W) ``normalized`` resized to the input (bilinear).
        logits: (B, C) the model's class logits from the same forward pass.
        probs: (B, C) ``sigmoid(logits)``.
        method: "gradcam", "lse", "guided_backprop" or "integrated_gradients".
        pixel_logits: ``lse`` only: (B, C, h, w) per-pixel logits on the scale of ``logits`` (a map constant at c
            pools to c): ``r * f_0``, plus log n without ``lse_mean``; a fixed, image-independent heatmap scale.
    """

    raw: torch.Tensor
    normalized: torch.Tensor
    upsampled: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    method: str
    pixel_logits: torch.Tensor | None = None


def make_result(raw: torch.Tensor, logits: torch.Tensor, size: tuple[int, int], method: str, **extra: Any) -> CamResult:
    """Build a ``CamResult`` from raw maps (B, C, h, w): per-map max normalisation and bilinear upsampling."""
    raw = raw.float()
    # divide by the max itself (clamped only to avoid 0 / 0): scale-invariant, so (r / n) * f0 normalises like f0
    normalized = raw / raw.amax(dim=(-2, -1), keepdim=True).clamp_min(TINY)
    if tuple(normalized.shape[-2:]) == tuple(size):
        upsampled = normalized
    else:
        upsampled = F.interpolate(normalized, size=size, mode="bilinear", align_corners=False)
    logits = logits.detach().float()
    return CamResult(raw, normalized, upsampled, logits, torch.sigmoid(logits), method, **extra)


class GradCAM:
    """Grad-CAM of every class from one forward pass, hooked on ``layer`` (default ``model.cam_layer``).

    A context manager: the forward hook lives between ``__enter__`` and ``__exit__`` (calling without ``with``
    hooks and unhooks around the call). Below the hooked layer nothing is recorded for autograd, so the memory
    and time are those of inference plus a backward through the head only.

    Args:
        model: a registered model (returns ``Output``) or any module returning logits (B, C).
        layer: module whose output (B, K, h, w) is A; default ``model.cam_layer``.
        grad_mode: "batched" (default: one vmapped ``autograd.grad`` over one-hot grad_outputs, falling back to
            "loop" if an op has no batching rule) or "loop" (one ``autograd.grad`` per class, retaining the small
            head graph). Same maps. Measured on CPU, gradient step only: rdnet_tiny 256 px B=4 0.92 vs 1.02 ms,
            resnet152 1.14 vs 1.24 ms, lse_unet_mobilenetv3_small_050 B=8 0.85 vs 1.31 ms; the forward pass
            (~100+ ms) dominates either way.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | None = None, grad_mode: str = "batched") -> None:
        if grad_mode not in ("loop", "batched"):
            raise ConfigError(f"grad_mode={grad_mode!r}; use 'loop' or 'batched'")
        layer = layer if layer is not None else getattr(model, "cam_layer", None)
        if layer is None:
            raise ModelError("GradCAM needs a layer: the model has no cam_layer")
        self.model, self.layer, self.grad_mode = model, layer, grad_mode
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._activation: torch.Tensor | None = None
        # the hook acts only inside __call__ and in the thread that called it: a plain model(x) in the `with` is
        # untouched, and so is another thread's forward through the same model (its own GradCAM hooks the layer too)
        self._caller: int | None = None

    def __enter__(self) -> GradCAM:
        if self._handle is None:
            self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ModelError(f"Grad-CAM layer must output a (B, K, h, w) tensor, got {type(output).__name__}")
        if self._caller != threading.get_ident():
            return output
        # The forward runs under no_grad; switching grad on here (it is restored when __call__'s no_grad block
        # exits) records only the head above A, and A itself becomes the leaf we differentiate against.
        torch.set_grad_enabled(True)
        self._activation = output.detach().requires_grad_(True)
        return self._activation

    def __call__(self, x: torch.Tensor) -> CamResult:
        """Maps for every class of a batch x (B, C, H, W) (normalised model input)."""
        if self._handle is None:
            with self:
                return self(x)
        with torch.inference_mode(False), torch.no_grad():
            self._caller = threading.get_ident()
            try:
                logits = _logits(self.model(x))
            finally:
                self._caller = None
            act = self._activation
            if act is None or logits.grad_fn is None:
                raise ModelError("the Grad-CAM layer was not used in the forward pass (or logits do not depend on it)")
            weights = self._channel_weights(logits, act)  # (B, C, K)
            raw = F.relu(torch.einsum("bck,bkhw->bchw", weights, act.detach().float()))
        self._activation = None
        return make_result(raw, logits, tuple(x.shape[-2:]), "gradcam")

    def _channel_weights(self, logits: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Spatial mean of d logit_c / d A for every class c: (B, C, K)."""
        n = logits.shape[1]
        if self.grad_mode == "batched":
            eye = torch.eye(n, dtype=logits.dtype, device=logits.device)
            grad_outputs = eye[:, None, :].expand(n, *logits.shape)  # (C, B, C) one-hot per class
            try:
                (grads,) = torch.autograd.grad(
                    logits, act, grad_outputs=grad_outputs, is_grads_batched=True, retain_graph=True
                )
                return grads.float().mean(dim=(-2, -1)).permute(1, 0, 2)  # (C, B, K) -> (B, C, K)
            except RuntimeError:  # an op in the head without a vmap batching rule: per-class loop below
                pass
        weights = []
        for c in range(n):
            (grad,) = torch.autograd.grad(logits[:, c].sum(), act, retain_graph=c < n - 1)
            weights.append(grad.float().mean(dim=(-2, -1)))  # (B, K)
        return torch.stack(weights, dim=1)


def gradcam(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> CamResult:
    """Grad-CAM of every class (see ``GradCAM``)."""
    with GradCAM(model, layer) as cam:
        return cam(x)


def lse_heatmaps(model: nn.Module, x: torch.Tensor) -> CamResult:
    """The ``lse_unet`` heatmaps from one forward pass, no backward: raw = ReLU(pixel logits - the model's
    ``map_floor``, 0 unless calibrated otherwise: ``ichdemo.models.lse_unet``).

    ``pixel_logits`` = ``r * f_0 (+ log n without lse_mean)``: each pixel's logit on the scale of the slice logit
    (a map that is constant c at every one of the n positions pools to exactly that value). LSE pooling lies
    between the largest pixel logit minus log n and the largest pixel logit, so a slice called positive (logit > 0)
    has positive pixels and a negative slice has none: raw is zero where the model sees no evidence. With lse_mean
    raw = r * ReLU(f_0), and Grad-CAM at f_0 is exactly ``raw / n`` (module docstring). Without lse_mean, f_0 is
    typically below zero everywhere (log n lifts the pooled value), so ReLU(f_0) (what Grad-CAM at f_0 gives) would
    be empty: the log n offset is what makes the map usable.
    """
    if getattr(model, "family", None) != "lse_unet":
        raise ModelError(f"lse heatmaps need an lse_unet model, not {getattr(model, 'family', type(model).__name__)}")
    with torch.no_grad():
        out = model(x)
    return lse_result(model, out, tuple(x.shape[-2:]))


def lse_result(model: nn.Module, out: Any, size: tuple[int, int]) -> CamResult:
    """``lse_heatmaps`` from an ``Output`` the caller already has (its ``maps`` hold the signed f_k)."""
    f0 = out.maps[0].float()  # (B, C, H/4, W/4)
    region = out.regions[0] if out.regions else None
    pixel_logits = model.lse_r * f0
    if region is None:
        if not model.lse_mean:  # + log of the cells pooled over
            pixel_logits = pixel_logits + math.log(f0.shape[-2] * f0.shape[-1])
    else:
        if not model.lse_mean:  # per image
            pixel_logits = pixel_logits + torch.log(region.sum(dim=(-2, -1), keepdim=True).float())
        pixel_logits = pixel_logits.masked_fill(~region, OUTSIDE)  # cells outside carry no evidence
    return make_result(F.relu(pixel_logits - model.map_floor), out.logits, size, "lse", pixel_logits=pixel_logits)


class _Logits(nn.Module):
    """Wraps a registered model so that captum sees a module returning logits (B, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(x)).float()


def _per_class(model: nn.Module, x: torch.Tensor, attribute: Callable, reduce: str) -> torch.Tensor:
    """Run a captum ``attribute(inputs, target)`` for every class at once on a class-expanded batch.

    Returns (B, C, H, W): the per-channel attributions reduced by ``reduce`` ("relu_sum": positive part of the
    channel sum = evidence for the class; "abs_max": max |attribution| over channels, the saliency convention;
    "sum": the signed channel sum, e.g. to check IG's completeness).
    """
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r}; use one of {REDUCTIONS}")
    with torch.no_grad():
        n = _logits(model(x[:1])).shape[1]
    b = x.shape[0]
    target = torch.arange(n, device=x.device).repeat(b)
    with torch.inference_mode(False), torch.enable_grad():
        inputs = x.detach().clone().repeat_interleave(n, dim=0).requires_grad_(True)  # row i*C + c: image i, class c
        attr = attribute(inputs, target).detach().float()
    attr = attr.view(b, n, *x.shape[1:])  # (B, C, ch, H, W)
    if reduce == "abs_max":
        return attr.abs().amax(dim=2)
    return F.relu(attr.sum(dim=2)) if reduce == "relu_sum" else attr.sum(dim=2)


def guided_backprop(model: nn.Module, x: torch.Tensor, reduce: str = "relu_sum") -> torch.Tensor:
    """Guided backpropagation maps (B, C, H, W) of every class (captum ``GuidedBackprop``; ReLU modules only).

    In-place ReLUs are switched to out-of-place for the call (captum's backward hooks need it) and restored.
    """
    from captum.attr import GuidedBackprop

    wrapper = _Logits(model)
    with _no_inplace_relu(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # captum's notice, expected
        return _per_class(model, x, lambda inp, tgt: GuidedBackprop(wrapper).attribute(inp, target=tgt), reduce)


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, steps: int = 32, internal_batch_size: int | None = None, reduce: str = "relu_sum"
) -> torch.Tensor:
    """Integrated gradients (B, C, H, W) of every class from a black reference image (captum).

    Black is intensity 0 before normalisation, i.e. ``(0 - mean) / std`` per channel of ``model.ich_cfg``
    (a zero tensor if the model has no ``ich_cfg``).
    """
    from captum.attr import IntegratedGradients

    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1")
    baseline = black_reference(model, x)
    ig = IntegratedGradients(_Logits(model))

    def attribute(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        base = baseline.expand_as(inputs)
        return ig.attribute(
            inputs, baselines=base, target=target, n_steps=steps, internal_batch_size=internal_batch_size
        )

    return _per_class(model, x, attribute, reduce)


def black_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalised image of intensity 0, shaped (1, ch, 1, 1) (broadcasts over a batch)."""
    cfg = getattr(model, "ich_cfg", None)
    if not cfg:
        return torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device)
    mean = torch.as_tensor(cfg["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(cfg["std"], dtype=x.dtype, device=x.device)
    return (-mean / std).view(1, -1, 1, 1)


def heatmaps(model: nn.Module, x: torch.Tensor, method: str = "auto", **kwargs: Any) -> CamResult:
    """Heatmaps of every class for a batch, by method.

    Args:
        model: a registered model.
        x: (B, C, H, W) normalised input.
        method: "auto" (gradcam for ``gap``, lse for ``lse_unet``), "gradcam", "lse", "guided_backprop",
            "integrated_gradients".
        **kwargs: passed to the method (``steps``, ``reduce``, ``layer``...).

    Raises:
        ConfigError: unknown method.
    """
    if method not in METHODS:
        raise ConfigError(f"heatmap method {method!r}; use one of {METHODS}")
    if method == "auto":
        method = "lse" if getattr(model, "family", None) == "lse_unet" else "gradcam"
    if method == "gradcam":
        return gradcam(model, x, **kwargs)
    if method == "lse":
        return lse_heatmaps(model, x)
    maps = (guided_backprop if method == "guided_backprop" else integrated_gradients)(model, x, **kwargs)
    with torch.no_grad():
        logits = _logits(model(x))
    return make_result(maps, logits, tuple(x.shape[-2:]), method)


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


class _no_inplace_relu:
    """Context manager: set ``inplace=False`` on every ReLU of a model, restore on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.relus = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]

    def __enter__(self) -> None:
        for m in self.relus:
            m.inplace = False

    def __exit__(self, *exc: object) -> None:
        for m in self.relus:
            m.inplace = True

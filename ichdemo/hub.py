"""Resolve a model reference to a checkpoint folder: a bundled name, a local folder, or a Hugging Face Hub repo.

References:
    ``lse_unet_lite0``                 a folder of the repository's ``checkpoints/`` (bundled; ``bundled_dir()``);
    ``/path/to/folder`` or ``./dir``   a local folder in Hugging Face layout (config.json + model.safetensors);
    ``hf://owner/repo[@revision]``     fetched with ``huggingface_hub.snapshot_download`` into the standard cache.

The Hub path is real: it honours ``HF_HUB_OFFLINE`` (cache only), ``HF_TOKEN`` and ``HF_HUB_CACHE``. The app's model
list comes from the ``ICHDEMO_MODELS`` environment variable (comma-separated references) or a YAML file named by
``ICHDEMO_MODELS_FILE`` (a list under ``models:``); by default, every bundled checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from ichdemo.errors import ModelError

CHECKPOINTS_ENV = "ICHDEMO_CHECKPOINTS"
HF_PREFIX = "hf://"
_HUB_PATTERNS = ["*.json", "*.safetensors", "README.md", "*.onnx"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: where the folder is and where it came from (for `models` and the UI)."""

    name: str
    folder: Path
    origin: str  # "bundled", "local" or "hub owner/repo@rev"


def bundled_dir() -> Path:
    """The folder of bundled checkpoints: ``checkpoints/`` of the repository, which is not packaged (47 MB).

    In order: ``$ICHDEMO_CHECKPOINTS``; ``checkpoints/`` beside the package (a checkout, ``pip install -e``); the
    ``checkpoints/`` of the checkout a ``pip install /path/to/repo`` came from (pip records it in direct_url.json).
    When none exists, the folder beside the package, so that messages name where the models were looked for.
    """
    env = os.environ.get(CHECKPOINTS_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    beside = Path(__file__).resolve().parents[1] / "checkpoints"
    if beside.is_dir():
        return beside
    source = _installed_from()
    return source / "checkpoints" if source and (source / "checkpoints").is_dir() else beside


def _installed_from() -> Path | None:
    """The local folder this package was pip-installed from, if pip recorded one (PEP 610 direct_url.json)."""
    try:
        url = json.loads(metadata.distribution("ichdemo").read_text("direct_url.json") or "{}").get("url", "")
    except (metadata.PackageNotFoundError, ValueError):
        return None
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def parse_hf_ref(ref: str) -> tuple[str, str | None]:
    """``hf://owner/repo@rev`` -> ("owner/repo", "rev" or None)."""
    body = ref[len(HF_PREFIX) :]
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ModelError(f"bad Hub reference {ref!r}; expected hf://owner/repo or hf://owner/repo@revision")
    return repo_id, revision or None


def _download(ref: str) -> ModelRef:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as err:  # pragma: no cover - huggingface_hub is a runtime requirement
        raise ModelError("loading from the Hub needs huggingface_hub: pip install huggingface_hub") from err
    repo_id, revision = parse_hf_ref(ref)
    offline = _offline()
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=offline,
            token=os.environ.get("HF_TOKEN") or None,
        )
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise ModelError(
            f"{repo_id}@{revision or 'main'} is not in the local Hugging Face cache and {why}; "
            "run once with network access (or unset HF_HUB_OFFLINE), or pass a local folder"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelError(f"Hub repo {repo_id} not found (or private: set HF_TOKEN)") from err
    except RevisionNotFoundError as err:
        raise ModelError(f"Hub repo {repo_id} has no revision {revision!r}") from err
    return ModelRef(ref, Path(folder), f"hub {repo_id}@{revision or 'main'}")


def resolve(ref: str | os.PathLike) -> ModelRef:
    """Turn a reference into a checkpoint folder that holds a config.json.

    Raises:
        ModelError: unknown name, missing folder, missing config.json, or a Hub repo that cannot be fetched.
    """
    text = str(ref)
    bundled = bundled_dir()
    if text.startswith(HF_PREFIX):
        found = _download(text)
    elif (bundled / text).is_dir() and "/" not in text and text not in (".", ".."):
        found = ModelRef(text, bundled / text, "bundled")
    elif Path(text).is_dir():
        found = ModelRef(Path(text).name, Path(text), "local")
    else:
        names = ", ".join(bundled_names()) or f"none in {bundled}; set {CHECKPOINTS_ENV}"
        raise ModelError(f"unknown model {text!r}: not a bundled name ({names}), a folder, or hf://owner/repo")
    if not (found.folder / "config.json").is_file():
        raise ModelError(f"model folder {found.folder} has no config.json (expected Hugging Face layout)")
    return found


def bundled_names() -> list[str]:
    """Names of the checkpoint folders shipped under checkpoints/ (``bundled_dir()``)."""
    bundled = bundled_dir()
    if not bundled.is_dir():
        return []
    return sorted(p.name for p in bundled.iterdir() if (p / "config.json").is_file())


DEFAULT_MODEL = "lse_unet_lite0_blood"


def default_model() -> str:
    """The model `predict` and the app use when none is named: the bundled default, else the first configured."""
    refs = configured_refs()
    if DEFAULT_MODEL in refs or (not refs and (bundled_dir() / DEFAULT_MODEL).is_dir()):
        return DEFAULT_MODEL
    if not refs:
        raise ModelError(
            f"no model available: no bundled checkpoints in {bundled_dir()} (set {CHECKPOINTS_ENV} to the repository's "
            "checkpoints/ folder) and ICHDEMO_MODELS is not set; pass --model"
        )
    return refs[0]


def configured_refs() -> list[str]:
    """The model list for the app: ICHDEMO_MODELS, else ICHDEMO_MODELS_FILE (YAML), else the bundled names."""
    env = os.environ.get("ICHDEMO_MODELS", "").strip()
    if env:
        return [r.strip() for r in env.split(",") if r.strip()]
    path = os.environ.get("ICHDEMO_MODELS_FILE", "").strip()
    if path:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        refs = data.get("models") if isinstance(data, dict) else data
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise ModelError(f"{path}: expected a YAML list of model references under 'models:'")
        return refs
    return bundled_names()

"""python -m train.push_to_hub --model runs/lse_unet --repo-id owner/ichdemo-lse-unet [--dry-run] [--private]

Upload a checkpoint folder to the Hugging Face Hub with ``huggingface_hub.upload_folder``: the Hugging Face layout
files (config.json, model*.safetensors, model.safetensors.index.json, README.md) plus, when present, model.onnx
and the training records (train_config.yaml, split.json, history.json). Resumable training state (state.pt,
best_*.pt) and stage-1 byproducts stay local. ``--dry-run`` prints what would go up, and where, without network.
The token comes from ``HF_TOKEN`` or the local Hugging Face login.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path

from ichdemo.errors import ConfigError, IchdemoError, ModelError

UPLOAD_PATTERNS: tuple[str, ...] = (
    "config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "README.md",
    "model.onnx",
    "train_config.yaml",
    "split.json",
    "history.json",
)


def files_to_upload(folder: Path) -> list[Path]:
    """The files of ``folder`` that go to the Hub, sorted.

    Raises:
        ModelError: the folder is not a checkpoint (no config.json or no weights).
    """
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a checkpoint folder (no config.json)")
    if not any(folder.glob("model*.safetensors")):
        raise ModelError(f"{folder} has no model*.safetensors weights")
    return sorted(p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat)
                                                                        for pat in UPLOAD_PATTERNS))


def check_repo_id(repo_id: str) -> str:
    """``owner/name`` with one slash and no empty part."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--repo-id must look like owner/name, got {repo_id!r}")
    return repo_id


def push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         message: str = "Upload ichdemo checkpoint", dry_run: bool = False) -> dict:
    """Upload (or, with ``dry_run``, describe) the checkpoint; returns what was (or would be) sent."""
    folder = Path(folder)
    repo_id = check_repo_id(repo_id)
    files = files_to_upload(folder)
    plan = {"repo_id": repo_id, "repo_type": "model", "revision": revision or "main", "private": private,
            "folder": str(folder), "files": [{"path": p.name, "bytes": p.stat().st_size} for p in files]}
    if dry_run:
        return plan
    try:
        from huggingface_hub import HfApi
    except ImportError as err:  # pragma: no cover - huggingface_hub is a runtime requirement
        raise ModelError("pushing needs huggingface_hub: pip install huggingface_hub") from err
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                               commit_message=message, allow_patterns=[p.name for p in files])
    plan["commit"] = str(getattr(commit, "oid", commit))
    return plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.push_to_hub", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder written by train.train (and calibrated)")
    p.add_argument("--repo-id", required=True, help="Hub repository, owner/name")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (default main)")
    p.add_argument("--message", default="Upload ichdemo checkpoint", help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded; no network")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = push(args.model, args.repo_id, args.private, args.revision, args.message, args.dry_run)
    except IchdemoError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - network/auth failures from huggingface_hub as one line
        if args.debug:
            raise
        print(f"error: upload to {args.repo_id} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"dry run: would upload {len(plan['files'])} file(s) to https://huggingface.co/{plan['repo_id']} "
              f"({plan['revision']}):", file=sys.stderr)
    print(json.dumps(plan, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

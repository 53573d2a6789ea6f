"""Fixtures shared by the security tests: a tiny untrained checkpoint, a CLI runner, a temp-folder sandbox.

The sandbox points ``tempfile`` at a folder of its own, so a test can assert that a load left nothing behind
(``load_volume`` extracts zips into a ``TemporaryDirectory``; after every call, success or failure, it must be gone).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Sandbox:
    """A folder that ``tempfile`` uses as its root while the test runs."""

    root: Path

    def leftovers(self) -> list[str]:
        """What is still in the temp root (should be nothing after any load)."""
        return sorted(p.name for p in self.root.iterdir())


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    root = tmp_path / "tmproot"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield Sandbox(root)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """An untrained lse_unet checkpoint at 64 px: plumbing only, never accuracy."""
    import torch

    from ichdemo.models import create_model
    from ichdemo.models.checkpoint import save_pretrained

    torch.manual_seed(0)
    model = create_model("lse_unet_mobilenetv3_small_050", pretrained=False)
    return str(save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny", {"input_size": [3, 64, 64]}))


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


@pytest.fixture
def cli(capsys) -> Callable[..., CliResult]:
    """Run ``python -m ichdemo ARGS`` in-process; returns exit status, stdout and stderr."""
    from ichdemo.cli import main

    def run(*args: str | os.PathLike) -> CliResult:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)

    return run

"""Fixtures of the app tests: tiny untrained checkpoints, a small phantom series, the app served on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phone-home from the test server
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
SMALL_SHAPE = (8, 96, 96)  # phantom grid: seconds to generate, still a head with lesions


def _save(tmp: Path, arch: str, name: str, extra: dict | None = None) -> str:
    import torch

    from ichdemo.models import create_model, save_pretrained

    torch.manual_seed(0)
    cfg = {"input_size": [3, 64, 64], **(extra or {})}
    return str(save_pretrained(create_model(arch), tmp / name, cfg))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Untrained tiny checkpoints (64 px input): an lse_unet, two gap baselines, and an lse_unet pair whose
    configs claim training with and without HLoss (fake provenance, for the Teach tab's comparison)."""
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "lse": _save(root, "lse_unet_mobilenetv3_small_050", "lse_tiny"),
        "gap": _save(root, "gap_mobilenetv3_small_050", "gap_tiny"),
        "gap2": _save(
            root,
            "gap_mobilenetv3_small_050",
            "gap_tiny_b",
            {"provenance": {"command": "fake, for tests", "config": {}}},
        ),
        "lse_hl": _save(
            root,
            "lse_unet_mobilenetv3_small_050",
            "lse_hloss",
            {"provenance": {"command": "fake, for tests", "config": {"hloss": True}}},
        ),
        "lse_nohl": _save(
            root,
            "lse_unet_mobilenetv3_small_050",
            "lse_no_hloss",
            {"provenance": {"command": "fake, for tests", "config": {"hloss": False}}},
        ),
    }


@pytest.fixture(scope="session")
def phantom_series(tmp_path_factory) -> tuple[list[Path], object]:
    """A small DICOM phantom series with IPH and SDH: (files in slice order, the Phantom)."""
    from ichdemo.phantom import generate_phantom, write_phantom

    p = generate_phantom(3, ("IPH", "SDH"), shape=SMALL_SHAPE)
    out = write_phantom(p, tmp_path_factory.mktemp("phantom"), "dicom")
    return [Path(f) for f in out["files"]], p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_module():
    """app.py imported from the repository root."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import app

    return app


@pytest.fixture(scope="session")
def app_url(app_module, tiny_models, tmp_path_factory):
    """The app with three tiny models (lse + two gap) served on 127.0.0.1 at a free port; closed at the end."""
    from ichdemo.catalogue import ModelPool
    from ichdemo.examples import PhantomExamples

    pool = ModelPool([tiny_models["lse"], tiny_models["gap"], tiny_models["gap2"]])
    phantoms = PhantomExamples(tmp_path_factory.mktemp("phantom-examples"), shape=SMALL_SHAPE)
    demo = app_module.build_demo(pool, phantoms)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app_module.launch_options()
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()

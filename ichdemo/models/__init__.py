"""The models of METHOD.md behind one registry: ``create_model(name, **kw)``, ``list_models()``.

Families: ``gap`` (timm backbone + global average pooling + linear head, the Grad-CAM baselines) and ``lse_unet``
(the paper's U-Net decoder with LSE pooling). Checkpoints: ``save_pretrained`` / ``load_pretrained``.
"""

from ichdemo.models import gap as _gap  # noqa: F401  (registers the gap models)
from ichdemo.models import lse_unet as _lse_unet  # noqa: F401  (registers the lse_unet models)
from ichdemo.models.checkpoint import load_pretrained, save_pretrained
from ichdemo.models.gap import GapClassifier
from ichdemo.models.losses import build_loss
from ichdemo.models.lse_unet import LseUnet, lse_pool
from ichdemo.models.registry import (
    Output,
    create_model,
    describe_model,
    is_model,
    list_models,
    normalize_input,
    register_model,
)

__all__ = [
    "GapClassifier",
    "LseUnet",
    "Output",
    "build_loss",
    "create_model",
    "describe_model",
    "is_model",
    "list_models",
    "load_pretrained",
    "lse_pool",
    "normalize_input",
    "register_model",
    "save_pretrained",
]

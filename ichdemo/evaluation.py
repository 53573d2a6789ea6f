"""Run a checkpoint over a ``SliceStackDataset`` and score its masks: what ``train.calibrate`` and ``train.evaluate``
measure with.

``predict`` runs the pipeline's own inference loop (``ichdemo.inference.run_network``) over the dataset and gives
slice probabilities and the raw heatmaps at the method's native resolution (input/4 for lse_unet, input/32 for
Grad-CAM). ``maps_to_input`` is the pipeline's ``maps_on_grid`` with the input grid as target, so a threshold
calibrated here means the same in the app. Dice is computed on the model's input grid, where the dataset's masks
live (nearest-neighbour resized).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ichdemo.data.series import MASK_ANY, SliceStackDataset
from ichdemo.inference import run_network
from ichdemo.metrics import dice_per_class, instance_dice, summarize
from ichdemo.pipeline import maps_on_grid
from ichdemo.quantify import Thresholds, algorithm1
from ichdemo.transforms import ResizeSpec


@dataclass
class Predictions:
    """Network outputs over some items of a dataset.

    Attributes:
        items: dataset indices, in order.
        probs: (N, 5) slice probabilities.
        labels: (N, 5) slice labels.
        raw: (N, 5, h, w) float32 raw heatmaps (>= 0), native resolution; None when maps were not asked for.
        masks: (N, H, W) int16 label maps on the input grid (``MASK_NONE`` where a slice has none).
        patients: patient of every item.
    """

    items: list[int]
    probs: np.ndarray
    labels: np.ndarray
    raw: np.ndarray | None
    masks: np.ndarray | None
    patients: list[str]

    def subset(self, rows: np.ndarray | list[int]) -> Predictions:
        rows = np.asarray(rows, dtype=int)
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Predictions([self.items[i] for i in rows], self.probs[rows], self.labels[rows], pick(self.raw),
                           pick(self.masks), [self.patients[i] for i in rows])


def predict(
    model: nn.Module,
    data: SliceStackDataset,
    items: list[int] | None = None,
    maps: bool = True,
    method: str = "auto",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> Predictions:
    """Probabilities (and heatmaps, and masks) of ``items`` (default: all) of ``data``.

    Args:
        model: an eval-mode model from ``create_model``/``load_pretrained``.
        data: the dataset.
        items: dataset indices.
        maps: compute heatmaps (``ichdemo.cam.heatmaps``) and collect masks too.
        method: heatmap method ("auto": f0 for lse_unet, Grad-CAM for gap).
        batch_size: images per forward pass.
        device: where to run.
    """
    items = list(range(len(data))) if items is None else list(items)
    model = model.to(device).eval()
    masks: list[np.ndarray] = []

    def batches():  # the images for the network; the masks collected on the way
        for s0 in range(0, len(items), batch_size):
            batch = [data[i] for i in items[s0 : s0 + batch_size]]
            if maps:
                masks.append(np.stack([b["mask"].numpy().astype(np.int16) for b in batch]))
            yield torch.stack([b["image"] for b in batch])

    out = run_network(model, batches(), maps=maps, method=method, device=device)
    patients = data.patients
    return Predictions(items, out.probs, data.labels[items] if items else np.zeros((0, 5), np.float32),
                       out.native if maps else None, np.concatenate(masks) if maps else None,
                       [patients[i] for i in items])


def maps_to_input(raw: np.ndarray, size: int, thresholds: Thresholds) -> np.ndarray:
    """(N, 5, h, w) raw maps -> (N, 5, size, size) uint8 on the 0..255 scale of ``thresholds.scale_mode``."""
    return maps_on_grid(raw, thresholds, ResizeSpec(size, size, size))


def label_maps(pred: Predictions, thresholds: Thresholds, size: int, gate: np.ndarray | None = None) -> np.ndarray:
    """Algorithm 1 label maps (N, size, size); ``gate`` (N, 5) replaces the class-threshold gate (e.g. the true
    labels, the paper's upper bound)."""
    maps255 = maps_to_input(pred.raw, size, thresholds)
    if gate is None:
        return algorithm1(pred.probs, maps255, thresholds.class_thresholds, thresholds.mask_thresholds)
    return algorithm1(gate.astype(np.float32), maps255, [0.5] * 5, thresholds.mask_thresholds)


def dice_scores(pred_labels: np.ndarray, masks: np.ndarray) -> dict[str, dict[str, float]]:
    """Dice of label maps against masks, pooled over all pixels.

    Returns:
        {"per_class": Dice per class (Normal and subtypes, "AVG") on slices whose mask has subtype labels only,
        "any": {"ICH": Dice of any hemorrhage on every slice}, "subtype_mean": mean Dice of the subtypes present}.
    """
    typed = ~np.any(masks == MASK_ANY, axis=(1, 2))
    out: dict[str, dict[str, float]] = {}
    if typed.any():
        per = dice_per_class(pred_labels[typed], masks[typed].clip(0, 5))
        out["per_class"] = per
        present = [k for k in range(1, 6) if np.any(masks[typed] == k)]
        names = list(per)[1:6]
        vals = [per[names[k - 1]] for k in present]
        out["subtype_mean"] = {"value": float(np.mean(vals)) if vals else float("nan"),
                               "classes": [names[k - 1] for k in present]}
    truth, guess = masks > 0, pred_labels > 0
    denom = int(truth.sum() + guess.sum())
    out["any"] = {"ICH": 2.0 * int((truth & guess).sum()) / denom if denom else float("nan")}
    return out


def instance_scores(pred_labels: np.ndarray, masks: np.ndarray, patients: list[str], min_voxels: int) -> dict:
    """Instance Dice per subtype (mean, sd, n) over scans, from the slices each patient has masks for."""
    lists: dict[str, list[float]] = {}
    for p in dict.fromkeys(patients):
        rows = [i for i, q in enumerate(patients) if q == p]
        m = masks[rows]
        if np.any(m == MASK_ANY):
            continue
        for name, values in instance_dice(pred_labels[rows], m.clip(0, 5), min_voxels=min_voxels).items():
            lists.setdefault(name, []).extend(values)
    out = {}
    for name, values in lists.items():
        mean, sd = summarize(values)
        out[name] = {"mean": mean, "sd": sd, "n": len(values)}
    return out

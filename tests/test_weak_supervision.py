"""The method works, not only runs (issue 3, "Done when"): an ``lse_unet`` with a small encoder, trained on CPU on
synthetic phantoms with SLICE LABELS ONLY, segments held-out phantom lesions with Dice >= 0.5 and beats Grad-CAM
from a ``gap`` model on the same encoder, data and budget.

Protocol (train/configs/weak_supervision.yaml): phantoms with all five subtypes, each head also present without
its lesions (so anatomy and slice position carry no label information); training sees the (S, 5) slice labels
only. Thresholds follow the paper: class thresholds by Youden and mask thresholds by grid search on the
validation phantoms (``train.calibrate``). Dice is scored on separate held-out phantoms (another seed, ordinary
series, no twins): the mean over the five subtypes of the per-subtype Dice pooled over all their pixels (Normal
left out, it is ~0.99 for any model).

Measured numbers are in the module's ``MEASURED`` note; the test prints its own.
"""

import json
import time
from pathlib import Path

import pytest
import torch

from train.calibrate import calibrate
from train.config import load_yaml, make_config
from train.evaluate import evaluate
from train.train import train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "train" / "configs" / "weak_supervision.yaml"
HELD_OUT = "phantom:12:777"
DICE_BAR = 0.5

MEASURED = """filled in from the research runs"""


def _train_and_score(tmp_path: Path, **overrides) -> tuple[dict, float]:
    cfg = make_config(load_yaml(CONFIG) | {"out": str(tmp_path / overrides.get("model", "lse_unet"))} | overrides)
    t0 = time.perf_counter()
    out = train(cfg)
    seconds = time.perf_counter() - t0
    calibrate(out, cfg.data)
    results, _ = evaluate(out, HELD_OUT, overlays=0, lopo=False)
    return results, seconds


@pytest.mark.slow
def test_lse_unet_learns_masks_from_slice_labels_and_beats_gradcam(tmp_path):
    torch.set_num_threads(1)  # one thread is far faster than two on a shared 2-core machine (OpenMP spinning)
    lse, lse_s = _train_and_score(tmp_path, model="lse_unet")
    gap, gap_s = _train_and_score(tmp_path, model="gap")
    lse_dice = lse["dice"]["calibrated"]["subtype_mean"]["value"]
    gap_dice = gap["dice"]["calibrated"]["subtype_mean"]["value"]
    summary = {
        "lse_unet": {"seconds": round(lse_s), "subtype_mean": lse_dice, "per_class": lse["dice"]["calibrated"]["per_class"],
                     "any": lse["dice"]["calibrated"]["any"], "auroc": lse["auroc"]},
        "gap_gradcam": {"seconds": round(gap_s), "subtype_mean": gap_dice,
                        "per_class": gap["dice"]["calibrated"]["per_class"], "auroc": gap["auroc"]},
    }
    print(json.dumps(summary, indent=1))
    assert lse["dice"]["calibrated"]["subtype_mean"]["classes"] == ["IPH", "IVH", "SAH", "SDH", "EDH"]
    assert lse_dice >= DICE_BAR, summary
    assert lse_dice > gap_dice, summary

"""Learning from corrections (train.finetune): a person's corrected slices, read as the app exports them, move the
model's map towards them, and the tuned model is a checkpoint the app loads with the base's thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.export.nifti import source_grid
from ichdemo.inference import load_model
from ichdemo.io import load_volume
from ichdemo.models import create_model, save_pretrained
from ichdemo.phantom import generate_phantom, write_phantom
from train import finetune as ft


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """A phantom CT folder and a draft-export folder whose report marks slices 2-5 reviewed."""
    root = tmp_path_factory.mktemp("ft")
    p = generate_phantom(3, ("IPH", "SDH"), shape=(8, 96, 96))
    write_phantom(p, root / "ct", "dicom")
    vol = load_volume(root / "ct")
    pred = root / "draft" / "prediction"
    pred.mkdir(parents=True)
    import nibabel as nib

    nib.save(source_grid(p.labels, vol)[2], pred / "labels.nii.gz")
    slices = ["draft"] * 8
    for i in range(2, 6):
        slices[i] = "edited"
    (pred / "report.json").write_text(json.dumps({"review": {"slices": slices}}))
    torch.manual_seed(0)
    cfg = {"input_size": [3, 64, 64], "thresholds": {"class_thresholds": [0.3] * 5, "mask_thresholds": [0.4] * 5}}
    ckpt = save_pretrained(create_model("lse_unet_mobilenetv3_small_050"), root / "base", cfg)
    return root, p, ckpt


def test_reads_only_the_slices_a_person_reviewed(corrected):
    root, p, _ = corrected
    c = ft.read_corrections(str(root / "ct"), str(root / "draft"))
    assert c.slices == [2, 3, 4, 5]
    for j, i in enumerate(c.slices):  # subtype k's plane is exactly the pixels labelled k
        for k in range(5):
            assert np.array_equal(c.allowed[j, k], p.labels[i] == k + 1)
    assert np.array_equal(c.classes, c.allowed.any(axis=(2, 3)).astype(np.float32))
    whole = ft.read_corrections(str(root / "ct"), str(root / "draft" / "prediction" / "labels.nii.gz"))
    assert whole.slices == list(range(8))  # a bare label file: every slice counts


def test_a_label_map_of_another_series_is_refused(corrected, tmp_path):
    root, _, _ = corrected
    other = generate_phantom(4, ("IPH",), shape=(6, 96, 96))
    write_phantom(other, tmp_path / "ct", "dicom")
    with pytest.raises(UnsupportedInputError, match="does not match"):
        ft.read_corrections(str(tmp_path / "ct"), str(root / "draft"))
    with pytest.raises(UnsupportedInputError, match="no labels.nii.gz"):
        ft.read_corrections(str(root / "ct"), str(tmp_path))


@pytest.mark.slow
def test_finetune_fits_the_corrections_and_saves_a_loadable_model(corrected, tmp_path):
    root, p, ckpt = corrected
    c = ft.read_corrections(str(root / "ct"), str(root / "draft"))
    lm = load_model(str(ckpt))
    enc_before = {k: v.clone() for k, v in lm.model.encoder.state_dict().items()}
    result = ft.finetune(lm, [c], None, steps=30, lr=3e-3)
    first, last = result.history[0], result.history[-1]
    assert last["pixel"] < 0.5 * first["pixel"], result.history  # it learns what it was shown
    assert all(torch.equal(v, lm.model.encoder.state_dict()[k]) for k, v in enc_before.items())  # frozen encoder
    out = ft.save_finetuned(lm, tmp_path / "tuned", result, [c], {"lr": 3e-3})
    tuned = load_model(str(out))
    assert tuned.cfg.thresholds == load_model(str(ckpt)).cfg.thresholds
    assert json.loads((out / "config.json").read_text())["finetune"]["corrected_slices"] == 4
    assert "fine-tuned" in (out / "README.md").read_text()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tuned.model(x).level_logits[0], lm.model(x).level_logits[0], atol=1e-5)


def test_only_lse_unet_models_and_some_corrected_slice(corrected, tmp_path):
    root, _, _ = corrected
    c = ft.read_corrections(str(root / "ct"), str(root / "draft"))
    gap = load_model(str(save_pretrained(create_model("gap_mobilenetv3_small_050"), tmp_path / "gap",
                                         {"input_size": [3, 64, 64]})))
    with pytest.raises(ConfigError, match="lse_unet"):
        ft.finetune(gap, [c])
    lm = load_model(str(corrected[2]))
    with pytest.raises(UnsupportedInputError, match="no corrected slices"):
        ft.finetune(lm, [ft.Corrected(c.volume, [], c.allowed[:0], c.classes[:0])])
    assert ft.main(["--series", str(root / "ct")]) == 2  # CLI: pairs required, a clear error, no traceback

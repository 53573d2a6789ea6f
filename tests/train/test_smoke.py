"""End to end on phantoms, as CI runs it: train -> calibrate -> evaluate (JSON, HTML, markdown) -> export ONNX.

The Dice floor is one a broken pipeline does not reach: misaligned or random heatmaps, a class gate that never
opens, or masks on the wrong grid all score near zero (measured values are in the comments).
"""

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ichdemo.cam import heatmaps
from ichdemo.data import SliceStackDataset, open_source
from ichdemo.models import load_pretrained, normalize_input
from ichdemo.onnx_model import OnnxModel
from ichdemo.quantify import Thresholds
from train import calibrate, evaluate, export_onnx, push_to_hub
from train import train as train_script

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "train" / "configs" / "smoke.yaml"
DICE_FLOOR = 0.1
"""Any-hemorrhage Dice on held-out phantoms after the smoke run, calibrated thresholds: measured 0.295 (2026-11-26,
this config on the 2-core CPU; pointing game 0.83; 0.218 and 0.80 in the paper's window with HLoss). Random or
misaligned maps score near 0."""
POINTING_FLOOR = 0.4


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    assert train_script.main(["--config", str(SMOKE), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_checkpoint_layout_and_provenance(smoke_run):
    names = {p.name for p in smoke_run.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "train_config.yaml", "split.json", "history.json",
            "state.pt"} <= names
    model, config = load_pretrained(smoke_run)
    assert config["family"] == "lse_unet" and config["input_size"] == [3, 128, 128]
    assert config["window"]["centre"] == 80.0 and config["window"]["width"] == 200.0  # subdural
    prov = config["provenance"]
    command = ["python", "-m", "train.train", "--config", str(SMOKE), "--out", str(smoke_run)]
    assert prov["command"] == shlex.join(command)
    assert prov["data"]["spec"] == "phantom:24" and prov["epochs"] == {"main": 8}
    assert prov["git_commit"] and prov["machine"]["device"] == "cpu" and prov["seconds"] > 0
    history = json.loads((smoke_run / "history.json").read_text())
    assert [h["stage"] for h in history] == ["main"] * 8
    assert all(0.0 <= h["val_auroc"]["AVG"] <= 1.0 for h in history)
    assert "Validation AUROC" in (smoke_run / "README.md").read_text()
    assert model.lse_mean is False and config["model_args"]["lse_mean"] is False
    assert not any(p.requires_grad is False for p in model.parameters())  # freezing is a training-time state only


@pytest.mark.slow
def test_calibrate_evaluate_export(smoke_run, tmp_path, capsys):
    assert calibrate.main(["--model", str(smoke_run), "--data", "phantom:24"]) == 0
    config = json.loads((smoke_run / "config.json").read_text())
    t = Thresholds.from_config(config)
    assert config["calibration"]["mask_part"] == "val"
    assert all(25 <= m <= 200 for m in t.mask_thresholds) and all(0 <= c <= 1 for c in t.class_thresholds)

    out_json, out_html, out_md = tmp_path / "e.json", tmp_path / "e.html", tmp_path / "e.md"
    assert evaluate.main(["--model", str(smoke_run), "--data", "phantom:8:777", "--json", str(out_json),
                          "--html", str(out_html), "--md", str(out_md), "--overlays", "2"]) == 0
    res = json.loads(out_json.read_text())
    print(json.dumps({k: res["dice"][k]["any"] | {"sub": res["dice"][k].get("subtype_mean")} for k in res["dice"]}))
    cal = res["dice"]["calibrated"]
    assert set(res["dice"]) == {"calibrated", "tuned_on_eval", "lopo", "true_gate"}
    assert set(cal["per_class"]) == {"Normal", "IPH", "IVH", "SAH", "SDH", "EDH", "AVG"}
    assert cal["per_class"]["Normal"] > 0.9
    assert cal["any"]["ICH"] >= DICE_FLOOR, cal
    assert res["auroc"]["AVG"] > 0.6
    html = out_html.read_text()
    assert "plotly" in html.lower() and "data:image/png;base64," in html and "<script" in html
    assert 'src="http' not in html and len(html) > 1_000_000  # self-contained: plotly.js inline, no CDN
    assert "| calibrated |" in out_md.read_text() and "Pointing game" in out_md.read_text()
    assert res["pointing"]["slices"] > 0 and res["pointing"]["hit_rate"] >= POINTING_FLOOR, res["pointing"]

    onnx_path = tmp_path / "model.onnx"
    capsys.readouterr()
    assert export_onnx.main(["--model", str(smoke_run), "--out", str(onnx_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["logits_max_abs_diff"] < 1e-3 and report["heatmap_max_abs_diff"] < 1e-3
    _check_onnx_on_phantom_lesions(smoke_run, onnx_path)
    graph = onnx.load(str(onnx_path)).graph
    assert [o.name for o in graph.output] == ["logits", "heatmap"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.slow
def test_calibrate_map_floor_gate(smoke_run, tmp_path, capsys):
    """--map-floor gate writes the logit of each class threshold as the heatmap floor, and the reloaded model has
    it; a Grad-CAM model has no pixel logits to floor and gets a clear error."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    assert calibrate.main(["--model", str(run), "--data", "phantom:6:777", "--map-floor", "gate"]) == 0
    config = json.loads((run / "config.json").read_text())
    c = np.clip(config["thresholds"]["class_thresholds"], 1e-6, 1 - 1e-6)
    assert config["calibration"]["map_floor"] == "gate"
    assert config["model_args"]["map_floor"] == pytest.approx(np.log(c / (1 - c)), abs=1e-4)
    model, _ = load_pretrained(run)
    assert model.map_floor.flatten().tolist() == pytest.approx(config["model_args"]["map_floor"])
    gap = REPO / "checkpoints" / "gap_mobilenetv2"
    assert calibrate.main(["--model", str(gap), "--data", "phantom:4", "--map-floor", "gate", "--dry-run"]) == 2
    assert "needs an lse_unet" in capsys.readouterr().err


def _check_onnx_on_phantom_lesions(run: Path, onnx_path: Path) -> None:
    """ONNX Runtime matches PyTorch on lesion slices, where the heatmaps are not all zero."""
    model, _ = load_pretrained(run)
    data = SliceStackDataset(open_source("phantom:2:777", phantom_shape="16x128x128", window="subdural").series, 128)
    items = [i for i in range(len(data)) if data[i]["labels"].any()][:4]
    x = normalize_input(torch.stack([data[i]["image"] for i in items]), model.ich_cfg)
    ref = heatmaps(model, x)
    got = OnnxModel(onnx_path).run(x.numpy())
    assert float(ref.raw.max()) > 0.01  # non-trivial maps
    np.testing.assert_allclose(got["heatmap"], ref.raw.numpy(), atol=1e-3)
    np.testing.assert_allclose(got["logits"], ref.logits.numpy(), atol=1e-3)


@pytest.mark.slow
def test_push_to_hub_dry_run(smoke_run, capsys):
    assert push_to_hub.main(["--model", str(smoke_run), "--repo-id", "someone/ichdemo-smoke", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    files = {f["path"] for f in plan["files"]}
    assert {"config.json", "model.safetensors", "README.md", "split.json"} <= files
    assert "state.pt" not in files and not any(f.startswith("best_") for f in files)
    assert plan["repo_id"] == "someone/ichdemo-smoke"

"""Bad input stops ``python -m train.train`` with one clear line before any training starts."""

import subprocess
import sys
from pathlib import Path

import pytest

from train.train import main

REPO = Path(__file__).resolve().parents[2]
CSV_HEADER = ("PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
              "No_Hemorrhage,Fracture_Yes_No\n")


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def _nothing_trained(out: Path) -> bool:
    return not (out / "state.pt").exists() and not (out / "model.safetensors").exists()


def test_missing_csv(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _run(capsys, "--data", f"ctich:{tmp_path}", "--out", str(out))
    assert code == 2
    assert err.startswith("error: ") and "hemorrhage_diagnosis.csv not found" in err and err.count("\n") == 1
    assert _nothing_trained(out)


def test_folder_without_images(tmp_path, capsys):
    (tmp_path / "hemorrhage_diagnosis.csv").write_text(CSV_HEADER + "49,1,0,0,0,0,0,1,0\n49,2,0,1,0,0,0,0,0\n")
    (tmp_path / "Patients_CT" / "049" / "brain").mkdir(parents=True)
    out = tmp_path / "run"
    code, err = _run(capsys, "--data", f"ctich:{tmp_path}", "--out", str(out))
    assert code == 2 and "no brain images found" in err
    assert _nothing_trained(out)


def test_missing_data_folder(tmp_path, capsys):
    code, err = _run(capsys, "--data", f"ctich:{tmp_path / 'absent'}", "--out", str(tmp_path / "run"))
    assert code == 2 and "does not exist" in err


def test_class_missing_from_training_split_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _run(capsys, "--data", "phantom:4", "--phantom_subtypes", "IPH,SDH", "--phantom_shape",
                     "16x128x128", "--out", str(out), "--input_size", "64")
    assert code == 2
    assert "no positive slice for IVH, SAH, EDH" in err and "training split" in err
    assert _nothing_trained(out)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--model", "unet", "model must be lse_unet or gap"), ("--input_size", "100", "multiple of 32"),
     ("--data", "mri:/x", "bad data spec"), ("--optimizer", "lbfgs", "optimizer must be"),
     ("--save-dtype", "fp8", "save_dtype must be fp32, fp16 or bf16"),
     ("--any-weight", "-1", "any_weight must be >= 0")],
)
def test_bad_options(tmp_path, capsys, flag, value, message):
    code, err = _run(capsys, flag, value, "--out", str(tmp_path / "run"))
    assert code == 2 and message in err


def test_unknown_yaml_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    code, err = _run(capsys, "--config", str(cfg))
    assert code == 2 and "unknown config option(s): learning_rate" in err


def test_cli_exit_status_and_help():
    help_ = subprocess.run([sys.executable, "-m", "train.train", "--help"], cwd=REPO, capture_output=True, text=True)
    assert help_.returncode == 0 and "--resume" in help_.stdout and "--phantom_paired" in help_.stdout
    bad = subprocess.run([sys.executable, "-m", "train.train", "--data", "phantom:x"], cwd=REPO, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: phantom:N")

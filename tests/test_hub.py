import json

import pytest

from ichdemo import hub
from ichdemo.errors import ModelError


def _fake_checkpoint(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architecture": "gap_tf_efficientnet_lite0"}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _populate_hf_cache(cache, repo_id, commit="0123456789abcdef0123456789abcdef01234567", ref="main"):
    """Lay out a Hugging Face cache entry the way huggingface_hub writes one (refs/, snapshots/<commit>/)."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / ref).write_text(commit)
    return _fake_checkpoint(repo_dir / "snapshots" / commit)


def test_local_folder(tmp_path):
    folder = _fake_checkpoint(tmp_path / "mymodel")
    found = hub.resolve(str(folder))
    assert found.folder == folder and found.origin == "local"


def test_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        hub.resolve(str(tmp_path / "empty"))


def test_unknown_name(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        hub.resolve("nope")


@pytest.mark.parametrize("bad", ["hf://justname", "hf://a/b/c", "hf:///repo"])
def test_bad_hub_reference(bad):
    with pytest.raises(ModelError, match="bad Hub reference"):
        hub.resolve(bad)


def test_offline_cache_hit(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = _populate_hf_cache(cache, "ichdemo/test-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    found = hub.resolve("hf://ichdemo/test-model")
    assert found.folder.resolve() == snap.resolve()
    assert found.origin == "hub ichdemo/test-model@main"


def test_offline_cache_miss_names_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError, match=r"ichdemo/absent@v2 is not in the local Hugging Face cache"):
        hub.resolve("hf://ichdemo/absent@v2")


def test_configured_refs_from_env_and_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("ICHDEMO_MODELS", "a, hf://o/r@x ,")
    assert hub.configured_refs() == ["a", "hf://o/r@x"]
    monkeypatch.delenv("ICHDEMO_MODELS")
    cfg = tmp_path / "models.yaml"
    cfg.write_text("models:\n  - lse_unet_lite0\n  - hf://o/r\n")
    monkeypatch.setenv("ICHDEMO_MODELS_FILE", str(cfg))
    assert hub.configured_refs() == ["lse_unet_lite0", "hf://o/r"]
    cfg.write_text("models: 3\n")
    with pytest.raises(ModelError, match="expected a YAML list"):
        hub.configured_refs()


def test_bundled_dir_from_env(tmp_path, monkeypatch):
    _fake_checkpoint(tmp_path / "ckpts" / "mine")
    monkeypatch.setenv("ICHDEMO_CHECKPOINTS", str(tmp_path / "ckpts"))
    assert hub.bundled_names() == ["mine"]
    found = hub.resolve("mine")
    assert found.folder == tmp_path / "ckpts" / "mine" and found.origin == "bundled"
    monkeypatch.setenv("ICHDEMO_CHECKPOINTS", str(tmp_path / "none"))
    with pytest.raises(ModelError, match="none in .*none; set ICHDEMO_CHECKPOINTS"):
        hub.resolve("mine")


def test_bundled_dir_of_a_checkout(monkeypatch):
    monkeypatch.delenv("ICHDEMO_CHECKPOINTS", raising=False)
    assert hub.bundled_dir().name == "checkpoints" and hub.DEFAULT_MODEL in hub.bundled_names()

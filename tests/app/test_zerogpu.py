"""On a ZeroGPU Space (the `spaces` package importable) the network call runs inside `spaces.GPU`; elsewhere as is.

The real `spaces` package only works on Hugging Face's ZeroGPU hardware, so a stand-in module with the same
decorator signature records what the app does with it. Runs in a subprocess: the decorator is chosen at import.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FAKE_SPACES = """
calls = []

def GPU(duration=60):
    def wrap(fn):
        def run(*args, **kwargs):
            calls.append(("call", duration))
            return fn(*args, **kwargs)
        run.zerogpu_duration = duration
        return run
    return wrap
"""

SCRIPT = """
import json, spaces, app
from ichdemo.catalogue import ModelPool
import webui.callbacks
webui.callbacks.run_models = lambda pool, refs, volume: {"ran": list(refs), "volume": volume}
a = app.App(ModelPool([]))
out = a._gpu_run(["m1"], "vol")
print(json.dumps({"duration": getattr(a._gpu_run, "zerogpu_duration", None), "calls": spaces.calls, "out": out}))
"""


def _run(tmp_path, with_spaces: bool) -> dict:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    paths = [str(REPO)]
    if with_spaces:
        (tmp_path / "spaces.py").write_text(FAKE_SPACES)
        paths.insert(0, str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    script = SCRIPT if with_spaces else SCRIPT.replace("spaces, ", "").replace('"calls": spaces.calls, ', "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_network_runs_inside_spaces_gpu_when_spaces_is_installed(tmp_path):
    got = _run(tmp_path, with_spaces=True)
    assert got["duration"] == 120 and got["calls"] == [["call", 120]]
    assert got["out"] == {"ran": ["m1"], "volume": "vol"}


def test_without_spaces_the_network_runs_directly(tmp_path):
    got = _run(tmp_path, with_spaces=False)
    assert got["duration"] is None and got["out"] == {"ran": ["m1"], "volume": "vol"}

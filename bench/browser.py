"""What a person waits for in the browser: the app served as `python app.py` serves it, driven by headless Chromium.

    python -m bench.browser --json docs/bench_browser.json      # then: python -m bench.run ... --md docs/BENCHMARKS.md

The series is the 29 brain-window JPEGs of CT-ICH patient 066 (a training patient; ../shared/data/ct-ich), selected
together in the upload box as a user would; without the dataset, a 29-slice phantom written as JPEGs. The app runs
its bundled models with their default selection. Figures (medians over repeats: ``--uploads`` new visitors, each in
a browser context of its own, upload the series; on the last page ``--repeats`` slice steps, threshold moves and
model switches; each from the user's action to the moment the last picture it changed has loaded in the page):

    ui_first_heatmap_s   files chosen -> the results model's heatmaps of the middle slice visible    (target <= 5 s)
    ui_first_draft_s     files chosen -> its draft (refined) visible (no target)
    ui_slice_ms          one step of the slice slider (keyboard) -> every picture of the slice shown  (<= 250 ms)
    ui_threshold_ms      a mask-threshold move (0 <-> 255, a subtype present on the slice) -> redrawn  (<= 500 ms)
    ui_model_switch_ms   another results model picked -> its sliders and pictures shown               (<= 500 ms)
    ui_model_switch_curves_ms  the same -> its probability curves redrawn (they follow the pictures; no target)
    ui_analysis_s        files chosen -> every chosen model run and shown (no target; the rest of the wait)

Needs Debian's chromium (/usr/bin/chromium) and playwright (requirements-dev.txt); never `playwright install`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CTICH = ROOT.parent / "shared" / "data" / "ct-ich" / "Patients_CT"
PATIENT = "066"
CHROMIUM = Path("/usr/bin/chromium")
TARGETS = {"ui_first_heatmap_s": 5.0, "ui_slice_ms": 250.0, "ui_threshold_ms": 500.0, "ui_model_switch_ms": 500.0}

# Every <img> that finishes loading inside these elements is stamped with performance.now(), and so is every change
# drawn in the probability curves (id "curves"); an action's time is the last picture stamp after it, once the page
# has been quiet for QUIET_MS.
WATCH = ["#overlay", "#raw-overlay", "#agreement", "#heatmaps", "#truth"]
PICTURES = [s[1:] for s in WATCH]
QUIET_MS = 600
WATCH_JS = """(sel) => {
  window.__loads = [];
  document.addEventListener('load', (e) => {
    const t = e.target;
    const hit = t.tagName === 'IMG' && sel.find((s) => t.closest(s));
    if (hit) window.__loads.push([performance.now(), t.closest(hit).id]);
  }, true);
  new MutationObserver((changes) => {
    if (changes.some((c) => c.target.closest && c.target.closest('#curves'))) {
      window.__loads.push([performance.now(), 'curves']);
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


def series_files(folder: Path) -> list[Path]:
    """The 29 CT-ICH JPEGs of the benchmark patient, or a 29-slice phantom written as 40/120 JPEGs."""
    src = CTICH / PATIENT / "brain"
    files = (
        sorted((f for f in src.glob("*.jpg") if "HGE" not in f.name), key=lambda f: int(f.stem)) if src.is_dir() else []
    )
    if files:
        return files
    import cv2

    from ichdemo.io.window import hu_to_grey
    from ichdemo.phantom import generate_phantom

    p = generate_phantom(7, ("IPH", "SDH"), shape=(29, 512, 512))
    out = []
    for i, hu in enumerate(p.hu):
        path = folder / f"{i + 1}.jpg"
        cv2.imwrite(str(path), hu_to_grey(hu, (40, 120)))
        out.append(path)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited: see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    while time.time() < deadline and "models warm" not in log.read_text():  # a visitor comes after start-up
        time.sleep(0.5)
    if time.time() < deadline:
        return proc
    proc.kill()
    raise RuntimeError("app.py did not start in 180 s")


def settle(page, t0: float, timeout_s: float = 120.0) -> float:
    """Seconds from ``t0`` (page clock, ms) to the last picture loaded after it, once the page (curves included)
    is quiet."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        stamps = page.evaluate("window.__loads")
        now = page.evaluate("performance.now()")
        loads = [t for t, el in stamps if t > t0 and el in PICTURES]
        if loads and now - max(t for t, _ in stamps) > QUIET_MS:
            return (max(loads) - t0) / 1000
        page.wait_for_timeout(50)
    raise TimeoutError("no picture changed after the action")


def first_load(page, t0: float, target: str, timeout_s: float = 120.0) -> float:
    """Seconds from ``t0`` to the first picture loaded in ``target`` (an element id) after it."""
    page.wait_for_function(
        "([t0, id]) => window.__loads.some(([t, el]) => t > t0 && el === id)",
        arg=[t0, target],
        timeout=timeout_s * 1000,
    )
    return (min(t for t, el in page.evaluate("window.__loads") if t > t0 and el == target) - t0) / 1000


def upload(page, files: list[Path]) -> tuple[float, float, float]:
    """A new visitor's upload of the series: seconds to (first heatmap, first draft, every model shown)."""
    page.wait_for_selector("#upload")
    page.evaluate(WATCH_JS, WATCH)
    t0 = page.evaluate("performance.now()")
    page.set_input_files("#upload input[type=file]", [str(f) for f in files])
    first = first_load(page, t0, "heatmaps")
    draft = first_load(page, t0, "overlay")
    page.wait_for_function(  # "Ran 3 of 3 model(s)." (not "Ran 1 of 3 model(s); drawing its drafts...")
        "/Ran (\\d+) of \\1 model\\(s\\)\\./.test(document.querySelector('#status').innerText)", timeout=600_000
    )
    return first, draft, settle(page, t0)


def measure(url: str, files: list[Path], repeats: int, uploads: int, shots: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        waits = []
        for k in range(uploads):  # each a new visitor (own browser context: no review of an earlier one to reopen)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(300_000)
            page.goto(url)
            waits.append(upload(page, files))
            if k < uploads - 1:
                context.close()
        first, draft, analysis = (statistics.median(w) for w in zip(*waits))
        info = page.inner_text("#series-info")
        if shots:
            page.screenshot(path=str(shots / "bench_analyzed.png"), full_page=True)

        def timed(action) -> tuple[float, float | None]:
            """ms from ``action`` to its last picture loaded, and to the curves' last change (None: unchanged)."""
            page.wait_for_timeout(QUIET_MS)
            t = page.evaluate("performance.now()")
            action()
            pictures = settle(page, t) * 1000
            curves = [when for when, el in page.evaluate("window.__loads") if when > t and el == "curves"]
            return pictures, max(curves) - t if curves else None

        rng = page.locator("#slice input[type=range]")
        slice_ms = []
        for k in range(repeats):
            rng.focus()
            slice_ms.append(timed(lambda k=k: rng.press("ArrowRight" if k % 2 == 0 else "ArrowLeft"))[0])
        row = page.inner_text("#heatmaps").split(" · ")  # the first model's caption: "IPH p=0.36%" ...
        probs = {t.split(" p=")[0]: float(t.split(" p=")[1].split("%")[0].strip("<")) for t in row if " p=" in t}
        cls = max(probs, key=probs.get)  # the subtype the model sees most on this slice, made present
        page.locator(f"#cls-{cls} input[type=range]").focus()
        page.locator(f"#cls-{cls} input[type=range]").press("Home")
        page.wait_for_timeout(3000)
        msk = page.locator(f"#mask-{cls} input[type=range]")
        threshold_ms = []
        for k in range(repeats):  # a present subtype's mask threshold 0 paints it wherever it leads, 255 nowhere
            msk.focus()
            threshold_ms.append(timed(lambda k=k: msk.press("Home" if k % 2 == 0 else "End"))[0])
        switch_ms, curves_ms = [], []
        run = [t.split(" · ")[0].strip() for t in page.locator("#models label").all_inner_texts()
               if "·" in t]  # the radio lists every model; switch among those that ran (the checked ones)
        checked = page.eval_on_selector_all("#models input", "els => els.map(e => e.checked)")
        names = [n for n, c in zip(run, checked) if c]
        for k in range(repeats):
            pick = page.locator("#results-model label", has_text=names[(k + 1) % len(names)]).first
            pictures, curves = timed(lambda pick=pick: pick.click())
            switch_ms.append(pictures)
            curves_ms.append(curves)
        if shots:
            page.screenshot(path=str(shots / "bench_after.png"), full_page=True)
        browser.close()
    return {
        "series": info.splitlines()[0] if info else "",
        "ui_first_heatmap_s": round(first, 2),
        "ui_first_draft_s": round(draft, 2),
        "ui_analysis_s": round(analysis, 2),
        "ui_slice_ms": round(statistics.median(slice_ms), 1),
        "ui_threshold_ms": round(statistics.median(threshold_ms), 1),
        "ui_model_switch_ms": round(statistics.median(switch_ms), 1),
        "ui_model_switch_curves_ms": round(statistics.median(c for c in curves_ms if c is not None), 1),
        "samples": {
            "first_heatmap_s": [w[0] for w in waits],
            "first_draft_s": [w[1] for w in waits],
            "analysis_s": [w[2] for w in waits],
            "slice_ms": slice_ms,
            "threshold_ms": threshold_ms,
            "model_switch_ms": switch_ms,
            "model_switch_curves_ms": curves_ms,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the figures")
    p.add_argument("--repeats", type=int, default=7, help="slice steps, threshold moves and model switches")
    p.add_argument("--uploads", type=int, default=3, help="new visitors uploading the series")
    p.add_argument("--url", help="an app already running (default: start python app.py on a free port)")
    p.add_argument("--screenshots", type=Path, help="folder for screenshots of the benchmarked page")
    args = p.parse_args(argv)
    if not CHROMIUM.exists():
        print("Debian chromium is missing: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        files = series_files(Path(tmp))
        proc = None
        url = args.url
        if not url:
            port = _free_port()
            proc = start_app(port, Path(tmp) / "app.log")
            url = f"http://127.0.0.1:{port}/"
        try:
            result = measure(url, files, args.repeats, args.uploads, args.screenshots)
        finally:
            if proc:
                proc.terminate()
                proc.wait(30)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU threads",
        "source": f"CT-ICH patient {PATIENT}, {len(files)} JPEGs" if CTICH.is_dir() else "phantom, 29 JPEGs",
        **result,
        "targets": TARGETS,
        "met": {k: bool(result[k] <= v) for k, v in TARGETS.items()},
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

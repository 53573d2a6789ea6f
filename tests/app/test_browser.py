"""A real browser on the app: headless Debian Chromium driven by Playwright (never `playwright install`).

Screenshots go to the test's tmp dir (printed with -s); look at them when changing the layout.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is missing: apt-get install chromium")


@pytest.fixture(scope="module")
def page(app_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        pg.set_default_timeout(120_000)  # generous: CI machines may be busy
        pg.goto(app_url)
        pg.wait_for_selector("#upload")
        yield pg
        browser.close()


def _shot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print("screenshot:", path)
    return path


def _image_bytes(page, selector: str) -> bytes:
    src = page.get_attribute(selector, "src")
    return page.request.get(src).body()


def test_upload_slider_overlay_download(page, phantom_series, tmp_path):
    assert "Research use only" in page.inner_text("body")
    assert "UNTRAINED" in page.inner_text("body")
    page.set_input_files("#upload input[type=file]", [str(f) for f in phantom_series[0]])
    page.wait_for_function("document.querySelectorAll('#heatmaps img').length >= 15")  # 3 models x 5 subtypes
    page.wait_for_function(
        "document.querySelector('#volumes') && document.querySelector('#volumes').innerText.includes('total')"
    )
    _shot(page, tmp_path, "1_analyzed")
    assert "8 slice(s)" in page.inner_text("#series-info")
    # the slice slider: one step with the keyboard shows another slice
    src = page.get_attribute("#overlay img", "src")
    page.locator("#slice input[type=range]").focus()
    page.locator("#slice input[type=range]").press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#overlay img').src != {src!r}")
    assert page.input_value("#slice input[type=number]") == "5"

    # the paper's raw Algorithm 1 beside the refined draft: thresholds move it pixel by pixel (the refined draft of
    # these untrained models may stay empty, as the CT shows no blood where they point)
    before_src = page.get_attribute("#raw-overlay img", "src")
    before = _image_bytes(page, "#raw-overlay img")

    # move the class threshold slider of every subtype to 0 and the IVH mask threshold to 0 with the keyboard
    for c in ("IPH", "IVH", "SAH", "SDH", "EDH"):
        rng = page.locator(f"#cls-{c} input[type=range]")
        rng.focus()
        rng.press("Home")
    page.locator("#mask-IVH input[type=range]").focus()
    page.locator("#mask-IVH input[type=range]").press("Home")
    page.wait_for_function(f"document.querySelector('#raw-overlay img').src != {before_src!r}")
    page.wait_for_function("document.querySelector('#mask-IVH input[type=number]').value == '0'")
    page.wait_for_timeout(1500)  # let the last (always_last) render land
    after = _image_bytes(page, "#raw-overlay img")
    assert after != before
    assert page.input_value("#cls-IPH input[type=number]") == "0"
    _shot(page, tmp_path, "2_thresholds")

    page.click("#formats label:has-text('nifti')")
    page.click("#export")
    page.wait_for_selector("#export-file a")
    with page.expect_download() as info:
        page.click("#export-file a")
    download = info.value
    target = tmp_path / download.suggested_filename
    download.save_as(str(target))
    assert target.name.startswith("ichdemo-draft-")
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
        assert "DRAFT.txt" in names and "prediction/labels.nii.gz" in names
        assert "class thresholds (IPH,IVH,SAH,SDH,EDH): 0, 0, 0, 0, 0" in zf.read("DRAFT.txt").decode()
    _shot(page, tmp_path, "3_exported")


def test_phantom_button_and_teach_tab(page, tmp_path):
    first = page.get_attribute("#heatmaps img", "src")
    page.click("#phantom-4")  # SDH phantom, one click
    page.wait_for_function("document.querySelector('#series-info').innerText.includes('SDH')")
    page.wait_for_function(f"document.querySelector('#heatmaps img').src != {first!r}")  # the new series' maps
    assert page.locator("#heatmaps img").count() == 15
    page.click("button[role=tab]:has-text('Teach')")
    page.click("#teach")
    page.wait_for_function("document.querySelectorAll('#teach-maps img').length >= 4")
    captions = page.inner_text("#teach-maps")
    assert "Grad-CAM native 2x2 cells" in captions and "LSE-UNet map native 16x16" in captions
    _shot(page, tmp_path, "4_teach")

"""A real browser on the app: headless Debian Chromium driven by Playwright (never `playwright install`).

Screenshots go to the test's tmp dir (printed with -s); look at them when changing the layout.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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


DONE = "(t => t.includes('Ran') && !t.includes('still running') && !t.includes('drawing'))" \
    "(document.querySelector('#status').innerText)"
"""The status line once every chosen model has run and its view is drawn."""

PROGRESS_JS = """() => {
  window.__progress = [];
  window.__status = [];
  new MutationObserver(() => {
    const el = document.querySelector('#status');
    const bar = el && el.querySelector('.progress-text, .progress-level, .eta-bar, .meta-text');
    if (bar) window.__progress.push(el.innerText);
    if (el) window.__status.push([el.innerText, document.querySelectorAll('#heatmaps img').length]);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_upload_slider_overlay_download(page, phantom_series, tmp_path):
    assert "Research use only" in page.inner_text("body")
    assert "UNTRAINED" in page.inner_text("body")
    page.evaluate(PROGRESS_JS)
    page.set_input_files("#upload input[type=file]", [str(f) for f in phantom_series[0]])
    page.wait_for_function(DONE)
    page.wait_for_function("document.querySelectorAll('#heatmaps img').length >= 3")  # one strip per model
    page.wait_for_function(
        "document.querySelector('#volumes') && document.querySelector('#volumes').innerText.includes('total')"
    )
    _shot(page, tmp_path, "1_analyzed")
    page.locator("#heatmaps").scroll_into_view_if_needed()  # the strips load lazily, when on screen
    page.wait_for_function("[...document.querySelectorAll('#heatmaps img')].every(i => i.complete && i.naturalWidth)")
    page.locator("#heatmaps").screenshot(path=str(tmp_path / "1b_heatmaps.png"))
    assert any("model 1 of 3" in t for t in page.evaluate("window.__progress")), "no progress bar seen"
    # the results model's heatmaps of the slice on screen came before the series had run (a first look)
    early = [n for t, n in page.evaluate("window.__status") if "Heatmaps of slice 4 shown; analysing" in t]
    assert early and max(early) >= 1, "no heatmaps shown before the series had run"
    assert "8 slice(s)" in page.inner_text("#series-info")
    captions = page.inner_text("#heatmaps")  # labelled rows, full captions
    assert "lse_tiny (lse_unet, native 16x16)" in captions and "gap_tiny (gap, native 2x2)" in captions
    assert "EDH p=" in captions and "…" not in captions
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
    assert page.input_value("#cls-IPH input[type=number]") == "50"  # class thresholds in percent

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

    # "Reset to calibrated" puts the calibrated values back on the sliders and redraws with them
    moved = page.get_attribute("#raw-overlay img", "src")
    page.click("#reset")
    page.wait_for_function("document.querySelector('#cls-IPH input[type=number]').value == '50'")
    page.wait_for_function("document.querySelector('#mask-IVH input[type=number]').value == '125'")
    page.wait_for_function(f"document.querySelector('#raw-overlay img').src != {moved!r}")
    assert page.locator("#cls-IPH button[aria-label*='eset']").count() == 0  # no per-slider reset to a build default


def test_several_images_are_one_series_and_a_new_upload_replaces_it(page, phantom_series, tmp_path):
    """Three JPEG slices selected together are one stack; the next upload replaces them; clearing clears."""
    jpgs = sorted((REPO / "examples" / "ctich").glob("ctich_07*.jpg"))[:3]
    page.set_input_files("#upload input[type=file]", [str(f) for f in jpgs])
    page.wait_for_function("document.querySelector('#series-info').innerText.includes('3 image(s)')")
    page.wait_for_function("document.querySelector('#slice').innerText.includes('Slice (0..2)')")
    page.wait_for_function(DONE)
    _shot(page, tmp_path, "5_three_jpegs")
    page.set_input_files("#upload input[type=file]", [str(f) for f in phantom_series[0]])  # the box adds them...
    page.wait_for_function("document.querySelector('#series-info').innerText.includes('8 slice(s)')")
    page.wait_for_function("document.querySelector('#slice').innerText.includes('Slice (0..7)')")
    page.wait_for_function(DONE)
    page.wait_for_function("document.querySelectorAll('#upload tbody tr').length == 8")  # ...the series replaces
    page.click("#upload button[aria-label='Clear']")
    page.wait_for_function("document.querySelector('#series-info').innerText.includes('No series loaded')")
    page.wait_for_function("!document.querySelector('#overlay img')")
    assert page.locator("#heatmaps img").count() == 0
    _shot(page, tmp_path, "6_cleared")


def test_example_shows_the_truth_beside_the_draft_without_moving_the_page(page, tmp_path):
    example = page.get_by_text("SDH (CT-ICH 081/18), expert mask")
    where = "el => [el.getBoundingClientRect().left + scrollX, el.getBoundingClientRect().top + scrollY]"
    example.scroll_into_view_if_needed()
    before = example.evaluate(where)
    example.click()
    page.wait_for_function(DONE)
    page.wait_for_selector("#truth img")
    label = page.inner_text("#truth")
    assert "Truth: expert mask (CT-ICH)" in label and ("draft Dice" in label or "no hemorrhage" in label), label
    after = example.evaluate(where)
    assert abs(after[0] - before[0]) < 2 and abs(after[1] - before[1]) < 2, (before, after)  # nothing moved
    assert "1 slice(s)" in page.inner_text("#series-info") and "two neighbours" in page.inner_text("#series-info")
    _shot(page, tmp_path, "7_truth")
    toasts = [t.inner_text() for t in page.locator(".toast-body").all()]
    assert not any("Error" in t for t in toasts), toasts  # clear, upload, example: no step tripped over another


def test_phantom_button_and_teach_tab(page, tmp_path):
    first = page.get_attribute("#heatmaps img", "src") if page.locator("#heatmaps img").count() else None
    page.click("#phantom-4")  # SDH phantom, one click
    page.wait_for_function("document.querySelector('#series-info').innerText.includes('SDH')")
    page.wait_for_function(DONE)
    page.wait_for_function(f"(e => e && e.src != {first!r})(document.querySelector('#heatmaps img'))")  # new maps
    page.wait_for_function("document.querySelectorAll('#heatmaps img').length == 3")
    page.wait_for_selector("#truth img")  # the phantom's truth, in subtype colours
    assert "Truth: phantom" in page.inner_text("#truth")
    _open_corrections(page)
    page.click("#edit-no-hemorrhage")  # a person's review of this slice: counted, and undone
    page.wait_for_function("document.querySelector('#legend').innerText.includes('Reviewed 1 of')")
    page.click("#edit-undo")
    page.wait_for_function("document.querySelector('#legend').innerText.includes('Reviewed 0 of')")
    page.click("button[role=tab]:has-text('Teach')")
    page.click("#teach")
    page.wait_for_function("document.querySelectorAll('#teach-maps img').length >= 4")
    captions = page.inner_text("#teach-maps")
    assert "Grad-CAM native 2x2 cells" in captions and "LSE-UNet map native 16x16" in captions
    _shot(page, tmp_path, "4_teach")


def _wait_text(page, selector: str, text: str, timeout_s: float = 120) -> None:
    """Poll from Python: a page.wait_for_function started right after a reload never saw the text that the app's
    load event writes there (it did appear: a Python poll sees it within a second)."""
    end = time.monotonic() + timeout_s
    while text not in (seen := page.inner_text(selector)):
        assert time.monotonic() < end, f"{text!r} not in {selector}: {seen[-300:]!r}"
        page.wait_for_timeout(250)


def _open_corrections(page) -> None:
    """Open the corrections accordion (closed at first: visitors see the heatmaps right under the draft). Opening it
    sends the draft picture to the editor with its strokes cleared, a server round trip (quiet: no progress shown);
    a stroke drawn before it returns is wiped, which on a machine busy with the suite's trainings took seconds."""
    if not page.locator("#edit-apply").is_visible():
        page.locator("#corrections > button, #corrections .label-wrap").first.click()
        page.wait_for_timeout(3000)
    page.wait_for_selector("#edit-apply", state="visible")


def _slider_value(page) -> int:
    return int(page.input_value("#slice input[type=number]"))


def _stroke(page, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Drag the mouse on the editor from ``start`` to ``end``, screen pixels from the canvas centre (where the
    slice's centre is drawn)."""
    canvas = page.locator("#editor canvas").first
    canvas.scroll_into_view_if_needed()  # the mouse moves in the viewport only
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + start[0], cy + start[1], steps=5)
    page.mouse.down()
    page.mouse.move(cx + end[0], cy + end[1], steps=20)
    page.mouse.up()


def _legend_has(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#legend').innerText.includes({text!r})")


def _go_to(page, index: int) -> None:
    page.wait_for_function(f"document.querySelector('#slice input[type=number]').value == '{index}'")


def test_brush_keys_reload_and_export_of_a_review(page, tmp_path):
    """Paint on one slice, paint and erase on the next, mark a third with keys (no hemorrhage, undo, accept);
    a reload reopens the series with those edits (ichdemo.review); the exported NIfTI and DICOM SEG hold them and
    the report says per slice what a person did; closing the series drops the review."""
    page.click("button[role=tab]:has-text('Analyze')")  # the test before ends on the Teach tab
    page.click("#phantom-2")  # IVH phantom
    page.wait_for_function("document.querySelector('#series-info').innerText.includes('IVH')")
    page.wait_for_function(DONE)
    _open_corrections(page)
    page.click("#edit-subtype input[value='SDH']")
    first = _slider_value(page)
    _stroke(page, (0, 0), (80, 0))
    _shot(page, tmp_path, "8_stroke")
    page.click("#edit-apply")
    _legend_has(page, "edited 1")
    assert "SDH" in page.inner_text("#volumes")
    page.click("#series-info")  # focus away from the buttons: keys go to the page
    page.keyboard.press("ArrowRight")
    _go_to(page, first + 1)
    _stroke(page, (-80, 0), (80, 0))
    page.keyboard.press("p")  # apply
    _legend_has(page, "edited 2")
    page.keyboard.press("e")  # erase mode: a vertical stroke cuts the painted band in two
    page.wait_for_function("document.querySelector('#edit-mode input[value=\"Erase\"]').checked")
    _stroke(page, (0, -60), (0, 60))
    page.click("#edit-apply")
    page.wait_for_function("document.querySelector('#edit-mode input[value=\"Erase\"]').checked")
    page.wait_for_timeout(1500)
    page.click("#series-info")
    page.keyboard.press("b")
    page.keyboard.press("ArrowRight")
    _go_to(page, first + 2)
    page.keyboard.press("h")  # no hemorrhage on this slice
    _legend_has(page, "Reviewed 3 of")
    page.keyboard.press("z")  # undo it
    _legend_has(page, "Reviewed 2 of")
    page.keyboard.press("a")  # accept the draft as it is
    _legend_has(page, "accepted 1")
    page.keyboard.press("n")  # the next slice still a draft
    _go_to(page, first + 3)

    page.reload()
    page.wait_for_selector("#series-info")
    _wait_text(page, "#series-info", "review in progress was reopened")
    page.wait_for_function(DONE)
    _legend_has(page, "Reviewed 3 of")
    assert "SDH" in page.inner_text("#volumes")
    _shot(page, tmp_path, "9_reopened")

    for fmt in ("nifti", "dicom-seg"):
        page.click(f"#formats label:has-text('{fmt}')")
    page.click("#export")
    page.wait_for_selector("#export-file a")
    with page.expect_download() as info:
        page.click("#export-file a")
    target = tmp_path / "review.zip"
    info.value.save_as(str(target))
    with zipfile.ZipFile(target) as zf:
        zf.extractall(tmp_path / "review")
    import json

    import highdicom as hd
    import nibabel as nib
    import numpy as np

    report = json.loads((tmp_path / "review" / "prediction" / "report.json").read_text())
    slices = report["review"]["slices"]
    assert slices[first : first + 3] == ["edited", "edited", "reviewed"], slices
    assert slices.count("draft") == len(slices) - 3
    labels = np.asarray(nib.load(tmp_path / "review" / "prediction" / "labels.nii.gz").dataobj).transpose(2, 1, 0)
    h, w = labels.shape[1:]
    sdh = labels == 4
    near = np.zeros((h, w), bool)  # the strokes' neighbourhood: the untrained models may draft SDH elsewhere
    near[h // 2 - 15 : h // 2 + 15, w // 2 - 30 : w // 2 + 30] = True
    band = sdh[first] & near
    full = np.nonzero(band.sum(axis=1) >= 15)[0]  # the stroke's rows (the draft adds at most a few pixels here)
    assert len(full) >= 6 and abs(full.mean() - h / 2) < 4 and np.ptp(full) < 14, full  # a flat band at the centre
    stroke = band[full]  # from the centre to the right (the brush's radius a little left of it)
    assert stroke[:, : w // 2 - 12].sum() < 0.1 * stroke.sum() and stroke[:, w // 2 + 10 :].any()
    cut = sdh[first + 1] & near
    assert cut[:, : w // 2 - 8].any() and cut[:, w // 2 + 8 :].any()  # painted both sides of the centre...
    assert not cut[:, w // 2 - 1 : w // 2 + 1].any()  # ...and erased down the middle
    seg = hd.seg.segread(next((tmp_path / "review" / "formats" / "dicom-seg").glob("*.dcm")))
    numbers = {d.SegmentLabel: int(d.SegmentNumber) for d in seg.SegmentSequence}
    uids = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[numbers["SDH"]], skip_overlap_checks=True
    )
    assert int(pixels.sum()) == int(sdh.sum())  # the SEG's SDH voxels are the painted ones

    page.click("#close-series")  # closing drops the review: the next reload starts empty
    page.wait_for_function("document.querySelector('#series-info').innerText.includes('No series loaded')")
    page.reload()
    page.wait_for_selector("#upload")
    page.wait_for_timeout(1500)
    assert "No series loaded" in page.inner_text("#series-info")

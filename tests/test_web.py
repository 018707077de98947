"""The draw-a-digit page at ``/`` in a real headless Chromium, against the real server process.

Needs Debian's ``chromium`` (or ``DIGITS_CHROMIUM`` pointing at a Chromium binary) and the
``playwright`` Python package; the browser Playwright would download is not used. A missing
browser fails these tests instead of skipping them.
"""

import base64
import itertools
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, Request, expect, sync_playwright

from tests.conftest import ROOT, LiveServer, png_bytes, stroke_digit_one

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DIGITS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODELS = ("inception", "resnet", "ensemble")
WAIT_MS = 60_000  # CPU inference on a small, busy machine
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which(CHROMIUM) or CHROMIUM
    if not Path(executable).is_file():
        pytest.fail(
            f"Chromium not found at {CHROMIUM!r}: install Debian's package (apt-get install chromium) "
            "or set DIGITS_CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, live_server: LiveServer) -> Iterator[Page]:
    """A fresh desktop-sized tab on ``/``; uncaught script errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto("/")
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def draw_one(page: Page) -> None:
    """A vertical stroke down the middle of the canvas, as a person draws a 1."""
    box = page.locator("#canvas").bounding_box()
    assert box is not None
    x = box["x"] + box["width"] / 2
    top, bottom = box["y"] + box["height"] * 0.15, box["y"] + box["height"] * 0.85
    page.mouse.move(x, top)
    page.mouse.down()
    for step in range(1, 13):
        page.mouse.move(x, top + (bottom - top) * step / 12)
    page.mouse.up()


def wait_for_predictions(page: Page) -> None:
    for model in MODELS:
        expect(page.locator(f'#results [data-model="{model}"]')).to_have_attribute("data-state", "done", timeout=WAIT_MS)


def bright_pixels(page: Page, selector: str) -> int:
    """How many pixels of a 28x28 canvas are brighter than mid-grey."""
    return int(
        page.evaluate(
            """(selector) => {
                const data = document.querySelector(selector).getContext("2d").getImageData(0, 0, 28, 28).data;
                let count = 0;
                for (let i = 0; i < data.length; i += 4) if (data[i] > 127) count++;
                return count;
            }""",
            selector,
        )
    )


def write_digit_files(directory: Path) -> list[Path]:
    """Two uploads of a 1: MNIST-sized white on black, and a larger dark-on-light photo-like one."""
    small = directory / "one-28px.png"
    small.write_bytes(png_bytes(stroke_digit_one()))
    large = directory / "one-112px-on-paper.png"
    large.write_bytes(png_bytes(255 - stroke_digit_one(112, thickness=12)))
    return [small, large]


def test_page_is_self_contained_and_labelled(page: Page, live_server: LiveServer) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.reload()
    page.wait_for_load_state("networkidle")

    assert requests, "the page made no requests at all"
    foreign = [url for url in requests if not url.startswith((live_server.url, "data:", "blob:"))]
    assert not foreign, f"the page loads resources from elsewhere: {foreign}"
    expect(page).to_have_title("Digit recogniser")
    assert page.locator('meta[name="viewport"]').count() == 1
    assert page.locator("#canvas").evaluate("c => getComputedStyle(c).touchAction") == "none"
    for button in ("#clear", "#predict"):
        assert page.locator(button).evaluate("b => b.tagName") == "BUTTON"
    file_input = page.locator("#file-input")
    assert file_input.get_attribute("type") == "file"
    assert file_input.get_attribute("multiple") is not None
    assert file_input.get_attribute("accept") == "image/*"
    assert page.locator('label[for="file-input"]').count() == 1
    assert page.locator("#error").get_attribute("role") == "alert"
    expect(page.locator("#error")).to_be_hidden()
    for model in MODELS:
        expect(page.locator(f'#results [data-model="{model}"] .bar')).to_have_count(10)


def test_drawing_and_uploads_predict_with_every_model(page: Page, tmp_path: Path) -> None:
    posts: list[Request] = []
    page.on("request", lambda request: posts.append(request) if "/predict" in request.url else None)

    draw_one(page)  # no click: the page predicts on its own shortly after the stroke ends
    wait_for_predictions(page)

    sent = sorted(request.url.split("?", 1)[1] for request in posts)
    assert sent == sorted(f"model={model}&include_input=true" for model in MODELS)
    for request in posts:
        assert request.method == "POST"
        assert (request.header_value("content-type") or "").startswith("multipart/form-data")  # parts named files, or no 200
    for model in MODELS:
        card = page.locator(f'#results [data-model="{model}"]')
        expect(card.locator(".digit")).to_have_text(re.compile(r"^[0-9]$"))
        assert card.locator(".digit").inner_text() == card.get_attribute("data-label")
        expect(card.locator(".confidence")).to_have_text(re.compile(r"^\d{1,3}(\.\d+)?% sure$"))
        expect(card.locator(".latency")).to_have_text(re.compile(r"^\d+ ms$"))
        bars = card.locator(".bar")
        expect(bars).to_have_count(10)
        probabilities = [float(bars.nth(i).get_attribute("data-probability") or "nan") for i in range(10)]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
        assert int(np.argmax(probabilities)) == int(card.get_attribute("data-label") or -1)
        expect(card.locator(".bar.top")).to_have_count(1)
    assert page.locator("#seen").get_attribute("data-drawn") == "true"
    assert 10 <= bright_pixels(page, "#seen") <= 200, "the 28x28 preview does not show a thin stroke"
    expect(page.locator("#error")).to_be_hidden()

    files = write_digit_files(tmp_path)
    page.set_input_files("#file-input", [str(path) for path in files])
    rows = page.locator("#uploads .upload-row")
    expect(rows).to_have_count(len(files))
    for index, path in enumerate(files):
        row = rows.nth(index)
        expect(row).to_have_attribute("data-state", "done", timeout=WAIT_MS)
        expect(row.locator(".file")).to_have_text(path.name)
        expect(row.locator(".digit")).to_have_text(re.compile(r"^[0-9]$"))
        expect(row.locator(".confidence")).to_have_text(re.compile(r"^\d{1,3}(\.\d+)?%$"))
        assert row.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
        assert bright_pixels(page, f"#uploads .upload-row:nth-child({index + 1}) canvas") > 0
    expect(page.locator("#error")).to_be_hidden()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-page.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("DIGITS_UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
        shutil.copyfile(shot, DOCS / "web-page.png")
    assert Image.open(shot).size[0] == 1280


def test_drawn_one_is_read_as_one(page: Page) -> None:
    draw_one(page)
    wait_for_predictions(page)
    card = page.locator('#results [data-model="ensemble"]')
    expect(card.locator(".digit")).to_have_text("1")
    assert card.get_attribute("data-label") == "1"
    assert card.get_attribute("data-digit-like") == "yes"


def draw_grid(page: Page) -> None:
    """A noughts-and-crosses grid: four long strokes, no digit."""
    box = page.locator("#canvas").bounding_box()
    assert box is not None
    for start, end in (((0.35, 0.1), (0.35, 0.9)), ((0.65, 0.1), (0.65, 0.9)), ((0.1, 0.35), (0.9, 0.35)), ((0.1, 0.65), (0.9, 0.65))):
        page.mouse.move(box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
        page.mouse.down()
        for step in range(1, 13):
            x = start[0] + (end[0] - start[0]) * step / 12
            y = start[1] + (end[1] - start[1]) * step / 12
            page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * y)
        page.mouse.up()


def test_a_drawing_that_is_no_digit_is_called_so(page: Page) -> None:
    draw_grid(page)
    wait_for_predictions(page)
    card = page.locator('#results [data-model="ensemble"]')
    expect(card).to_have_attribute("data-digit-like", "no")
    expect(card.locator(".confidence")).to_have_text("does not look like a digit")
    expect(page.locator("#status")).to_contain_text("does not look like a handwritten digit")


def test_drop_zone_predicts_dropped_images(page: Page, tmp_path: Path) -> None:
    files = write_digit_files(tmp_path)
    payload = [[path.name, base64.b64encode(path.read_bytes()).decode()] for path in files]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, data] of files) {
                const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name, { type: "image/png" }));
            }
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event("#drop-zone", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).to_have_class(re.compile(r"\bover\b"))
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).not_to_have_class(re.compile(r"\bover\b"))
    rows = page.locator("#uploads .upload-row")
    expect(rows).to_have_count(len(files))
    for index, path in enumerate(files):
        expect(rows.nth(index)).to_have_attribute("data-state", "done", timeout=WAIT_MS)
        expect(rows.nth(index).locator(".file")).to_have_text(path.name)
        expect(rows.nth(index).locator(".digit")).to_have_text(re.compile(r"^[0-9]$"))


def test_an_upload_that_is_no_image_shows_the_servers_message(page: Page, tmp_path: Path) -> None:
    good, _ = write_digit_files(tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    page.set_input_files("#file-input", [str(good), str(bad)])
    error = page.get_by_role("alert")
    expect(error).to_be_visible(timeout=WAIT_MS)
    expect(error).to_contain_text("image 1 ('notes.png') is not a supported image")
    expect(page.locator('#uploads .upload-row[data-state="error"]')).to_have_count(2)


def test_clear_then_predict_answers_the_blank_canvas(page: Page) -> None:
    """A blank image is an answer, not an error: every model says it does not look like a digit."""
    draw_one(page)
    wait_for_predictions(page)
    page.click("#clear")
    for model in MODELS:
        expect(page.locator(f'#results [data-model="{model}"] .digit')).to_have_text("\u2013")
    assert bright_pixels(page, "#seen") == 0
    expect(page.locator("#error")).to_be_hidden()

    with page.expect_response(lambda response: "/predict" in response.url) as answer:
        page.click("#predict")
    assert answer.value.status == 200
    (prediction,) = answer.value.json()["predictions"]
    assert prediction["is_digit"] is False and prediction["digit_score"] == 0
    wait_for_predictions(page)
    for model in MODELS:
        card = page.locator(f'#results [data-model="{model}"]')
        expect(card).to_have_attribute("data-digit-like", "no")
        expect(card.locator(".confidence")).to_have_text("does not look like a digit")
    expect(page.locator("#error")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-blank.png"))


def test_phone_viewport_has_no_horizontal_scrolling(browser: Browser, live_server: LiveServer, tmp_path: Path) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True, base_url=live_server.url
    )
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto("/")
        draw_one(page)
        wait_for_predictions(page)
        page.set_input_files("#file-input", [str(path) for path in write_digit_files(tmp_path)])
        expect(page.locator('#uploads .upload-row[data-state="done"]')).to_have_count(2, timeout=WAIT_MS)

        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px viewport"
        canvas = page.locator("#canvas").bounding_box()
        assert canvas is not None
        assert canvas["x"] >= 0
        assert canvas["x"] + canvas["width"] <= 390
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page-phone.png"), full_page=True)

        page.click('label[for="mode-number"]')  # the wide canvas of a number fits the phone too
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"in number mode the page is {width[0]} px wide in a {width[1]} px viewport"
        wide = page.locator("#canvas").bounding_box()
        assert wide is not None and wide["x"] >= 0 and wide["x"] + wide["width"] <= 390 and wide["width"] > 2.5 * wide["height"]
    finally:
        context.close()


def draw_path(page: Page, points: list[tuple[float, float]]) -> None:
    """One stroke through ``points`` (fractions of the canvas's width and height)."""
    box = page.locator("#canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * points[0][0], box["y"] + box["height"] * points[0][1])
    page.mouse.down()
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        for step in range(1, 7):
            x, y = x0 + (x1 - x0) * step / 6, y0 + (y1 - y0) * step / 6
            page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * y)
    page.mouse.up()


def draw_number(page: Page) -> None:
    """1, 0 and 7 side by side on the wide canvas."""
    draw_path(page, [(0.15, 0.2), (0.15, 0.8)])
    ring = [(0.4 + 0.08 * np.sin(t), 0.5 - 0.3 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 25)]
    draw_path(page, [(float(x), float(y)) for x, y in ring])
    draw_path(page, [(0.62, 0.22), (0.8, 0.22), (0.7, 0.8)])


def test_number_mode_reads_a_drawn_number_and_shows_each_digits_box(page: Page) -> None:
    posts: list[Request] = []
    page.on("request", lambda request: posts.append(request) if "/read" in request.url else None)
    page.click('label[for="mode-number"]')
    expect(page.locator("#results")).to_be_hidden()
    expect(page.locator("#reading")).to_be_visible()
    canvas = page.locator("#canvas")
    assert canvas.evaluate("c => [c.width, c.height]") == [840, 280]
    shape = canvas.bounding_box()
    assert shape is not None and shape["width"] == pytest.approx(3 * shape["height"], rel=0.02)

    draw_number(page)  # no click: read shortly after the last stroke, as a digit is predicted
    expect(page.locator("#reading")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    expect(page.locator("#reading .number")).to_have_text("107")
    assert page.locator("#reading").get_attribute("data-text") == "107"
    expect(page.locator("#reading .confidence")).to_have_text(re.compile(r"^\d{1,3}(\.\d+)?% sure$"))
    expect(page.locator("#status")).to_contain_text("reads 107")
    assert [request.url.split("?", 1)[1] for request in posts][-1] == "model=ensemble"
    assert (posts[-1].header_value("content-type") or "").startswith("multipart/form-data")

    boxes = page.locator("#boxes .box")
    expect(boxes).to_have_count(3)
    expect(page.locator("#reading-digits li")).to_have_count(3)
    centres = []
    for index, label in enumerate("107"):
        box = boxes.nth(index)
        assert box.get_attribute("data-label") == label and box.get_attribute("data-digit") == "yes"
        expect(box.locator("span")).to_have_text(label)
        drawn = box.bounding_box()
        assert drawn is not None and drawn["height"] > 0.4 * shape["height"]
        centres.append((drawn["x"] + drawn["width"] / 2 - shape["x"]) / shape["width"])
    assert centres == [pytest.approx(x, abs=0.05) for x in (0.15, 0.4, 0.71)]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-number.png"), full_page=True)

    page.click("#clear")
    expect(boxes).to_have_count(0)
    expect(page.locator("#reading .number")).to_have_text("\u2013")
    with page.expect_response(lambda response: "/read" in response.url) as answer:
        page.click("#predict")
    assert answer.value.status == 200 and answer.value.json()["readings"][0]["text"] == ""
    expect(page.locator("#reading .confidence")).to_have_text("no digits found")
    expect(page.locator("#status")).to_have_text("No digit found in the drawing.")

    page.click('label[for="mode-digit"]')
    assert canvas.evaluate("c => [c.width, c.height]") == [280, 280]
    expect(page.locator("#reading")).to_be_hidden()
    expect(page.locator("#results")).to_be_visible()

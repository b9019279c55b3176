"""The web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The API (uvicorn) and the page (Flask) run on 127.0.0.1 in this process; the browser loads the
page, uploads an image, sees result thumbnails, clicks one for "more like this", uses the
controls, paste and drop, and sees clear messages for a bad file and for an API that is down.
Screenshots go to test-artifacts/ at the repository root (web.png is the main one).

Chromium is never downloaded (`playwright install` is not used); without the Debian package
these tests are skipped with the command that installs it.
"""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefinder.api import Settings, create_app
from imagefinder.api.testing import ServerThread, start_asgi, start_wsgi
from imagefinder.web import create_app as create_web_app

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium: apt-get install -y chromium chromium-driver")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Path, Path]:
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("web-sample")
    images, query = write_sample(root / "images")
    build_index([str(images)], root / "index", embedder=embedder, workers=4)
    return root / "index", query


@pytest.fixture(scope="module")
def api(sample: tuple[Path, Path]) -> Iterator[ServerThread]:
    server = start_asgi(create_app(sample[0], Settings(cors_origins=())))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def web(api: ServerThread) -> Iterator[ServerThread]:
    server = start_wsgi(create_web_app(api.url))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def result_names(page) -> list[str]:
    return page.locator("#grid .card .name").all_inner_texts()


def wait_for_results(page, title_prefix: str) -> None:
    page.wait_for_function(
        "prefix => document.querySelector('#results-title').textContent.startsWith(prefix)"
        " && document.querySelectorAll('#grid .card .rank').length > 0"
        " && !document.querySelector('#grid .skeleton')", arg=title_prefix)


def wait_for_thumbnails(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('#grid .card img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")


# --- the main journey ---------------------------------------------------------------------------


def test_upload_then_click_a_result_for_more_like_this(page, web: ServerThread, sample) -> None:
    _index, query = sample
    page.goto(web.url)
    page.wait_for_selector("#status[data-state='ok']")
    assert page.inner_text("#status-text") == "45 images · efficientnet-lite0"
    page.wait_for_selector("#grid .card img")  # the start grid: pictures from the collection

    page.set_input_files("#file", str(query))
    wait_for_results(page, "Most similar")
    wait_for_thumbnails(page)
    names = result_names(page)
    assert len(names) == 10
    assert all(n.startswith("coffee_") for n in names[:5]), names
    assert page.locator("#grid .card .rank").first.inner_text() == "#1"
    assert page.is_visible("#query-img") and "query_coffee.jpg" in page.inner_text("#query-label")
    assert not page.is_visible("#error")
    first_score = float(page.locator("#grid .card .value").first.inner_text())
    assert 0.5 < first_score <= 1.0

    # click the 5th result: "more like this" with that image
    fifth = page.locator("#grid .card").nth(4)
    clicked_id, clicked_name = fifth.get_attribute("data-id"), fifth.locator(".name").inner_text()
    fifth.locator(".thumb").click()
    wait_for_results(page, "More like")
    wait_for_thumbnails(page)
    assert page.url.endswith(f"#more={clicked_id}")
    assert clicked_name in page.inner_text("#results-title")
    new_ids = page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)")
    assert clicked_id not in new_ids, "the query image itself is left out of its own results"
    assert len(new_ids) == 10
    assert all(n.startswith("coffee_") for n in result_names(page)[:3])
    path = screenshot(page, "web.png")
    assert path.stat().st_size > 10_000

    # Back returns to the upload's results
    page.go_back()
    wait_for_results(page, "Most similar")


def test_k_and_metric_controls_rerun_the_search(page, web: ServerThread, sample) -> None:
    page.goto(f"{web.url}/#more=18")
    wait_for_results(page, "More like")
    assert len(result_names(page)) == 10
    page.select_option("#k", "5")
    page.wait_for_function("document.querySelectorAll('#grid .card .rank').length === 5")
    page.click("text=Euclidean")
    page.wait_for_function("document.querySelector('#results-meta').textContent.includes('Euclidean')")
    wait_for_results(page, "More like")
    assert len(result_names(page)) == 5
    page.click("text=Vote")
    page.wait_for_function("document.querySelector('#results-meta').textContent.includes('vote')")


def test_paste_and_drop_an_image(page, web: ServerThread, sample) -> None:
    _index, query = sample
    page.goto(web.url)
    page.wait_for_selector("#status[data-state='ok']")
    data = list(query.read_bytes())
    # a clipboard paste, as Ctrl+V with an image on the clipboard produces it
    page.evaluate("""bytes => {
        const file = new File([new Uint8Array(bytes)], 'image.png', {type: 'image/jpeg'});
        const dt = new DataTransfer();
        dt.items.add(file);
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true}));
    }""", data)
    wait_for_results(page, "Most similar")
    assert page.inner_text("#query-label") == "Pasted image"
    assert result_names(page)[0].startswith("coffee_")
    # drag and drop a file onto the page
    page.evaluate("""bytes => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'dropped.jpg', {type: 'image/jpeg'}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", data)
    page.wait_for_function("document.querySelector('#query-label').textContent === 'dropped.jpg'")
    wait_for_results(page, "Most similar")


# --- errors ---------------------------------------------------------------------------------------


def test_a_bad_file_shows_a_clear_message(page, web: ServerThread, tmp_path: Path) -> None:
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not really a photo")
    page.goto(web.url)
    page.wait_for_selector("#status[data-state='ok']")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error-title").lower()
    assert "not a supported image" in page.inner_text("#error-text")
    page.click("#error-close")
    assert not page.is_visible("#error")


def test_a_bad_url_shows_a_clear_message(page, web: ServerThread) -> None:
    page.goto(web.url)
    page.wait_for_selector("#status[data-state='ok']")
    page.fill("#url", "http://127.0.0.1:1/private.jpg")
    page.click("#url-form button")
    page.wait_for_selector("#error:not([hidden])")
    assert "loopback" in page.inner_text("#error-text")


def test_api_down_is_explained(browser, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    web = start_wsgi(create_web_app(dead))
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(web.url)
        page.wait_for_selector("#status[data-state='down']")
        assert page.inner_text("#status-text") == "API unavailable"
        page.wait_for_selector("#error:not([hidden])")
        assert "not available" in page.inner_text("#error-title")
        assert "not reachable" in page.inner_text("#error-text") and dead in page.inner_text("#error-text")
        screenshot(page, "web-api-down.png", full_page=False)
    finally:
        context.close()
        web.stop()


# --- phone ----------------------------------------------------------------------------------------


def test_phone_width_layout_has_no_sideways_scrolling(browser, web: ServerThread, sample) -> None:
    _index, query = sample
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(web.url)
        page.wait_for_selector("#status[data-state='ok']")
        page.set_input_files("#file", str(query))
        wait_for_results(page, "Most similar")
        wait_for_thumbnails(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        columns = page.evaluate("getComputedStyle(document.querySelector('#grid')).gridTemplateColumns.split(' ').length")
        assert columns == 2
        assert page.is_visible("text=Tap to choose a photo") is False  # query shown instead of the prompt
        screenshot(page, "web-phone.png", full_page=False)
    finally:
        context.close()


def test_static_assets_are_local(web: ServerThread) -> None:
    import httpx

    html = httpx.get(web.url, trust_env=False).text
    page_body = html.split("<footer>")[0]  # the footer links to the API's docs, which is fine
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page_body), "no CDN or remote assets"
    for asset in ("style.css", "app.js", "favicon.svg"):
        assert httpx.get(f"{web.url}/static/{asset}", trust_env=False).status_code == 200


def teardown_module() -> None:
    # keep test-artifacts/ but not an empty one from a skipped run
    if ARTIFACTS.exists() and not any(ARTIFACTS.iterdir()):
        shutil.rmtree(ARTIFACTS, ignore_errors=True)

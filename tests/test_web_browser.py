"""The web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The API (uvicorn) and the page (Flask) run on 127.0.0.1 in this process; the browser loads the
page, uploads an image, sees result thumbnails, clicks one for "more like this", uses the
controls, paste and drop, and sees clear messages for a bad file and for an API that is down.
Screenshots go to test-artifacts/ at the repository root (web.png is the main one).

Chromium is never downloaded (`playwright install` is not used); without the Debian package
these tests are skipped with the command that installs it.
"""

from __future__ import annotations

import csv
import functools
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image, ImageOps

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


FAR = ("rocket", "hubble")  # the subjects whose `place` column is "far" (10 of the 45 images)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Path, Path]:
    """The built-in sample photos (9 subjects x 5 edits), listed in a CSV with `year` and `place` columns."""
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("web-sample")
    images, query = write_sample(root / "images")
    listing = root / "photos.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "year", "place"])
        for i, path in enumerate(sorted(images.glob("*.jpg"))):
            writer.writerow([str(path), 2000 + i, "far" if path.name.startswith(FAR) else "near"])
    build_index([str(listing)], root / "index", embedder=embedder, workers=4)
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
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


def result_names(page) -> list[str]:
    return page.locator("#grid .card .name").all_inner_texts()


@contextmanager
def phone_page(browser) -> Iterator:
    """A page in a fresh phone-sized context (375x740, touch, 2x pixels), closed afterwards."""
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
    finally:
        context.close()


def search_from_the_page(page, url: str, query: Path) -> None:
    """Open the page, wait until it is ready, upload `query` and wait for its results."""
    page.goto(url)
    page.wait_for_selector("#status[data-state='ok']")
    page.set_input_files("#file", str(query))
    wait_for_results(page, "Most similar")


def wait_for_results(page, title_prefix: str) -> None:
    page.wait_for_function(
        "prefix => document.querySelector('#results-title').textContent.startsWith(prefix)"
        " && document.querySelectorAll('#grid .card .rank').length > 0"
        " && !document.querySelector('#grid .skeleton')", arg=title_prefix)


def wait_for_thumbnails(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('#grid .card img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")


def wait_for_visible_thumbnails(page) -> None:
    """The grid's pictures in view have loaded (those below load lazily, as they are scrolled to)."""
    page.wait_for_function("() => [...document.querySelectorAll('#grid .card img')]"
                           ".filter(img => img.getBoundingClientRect().top < innerHeight)"
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
    with phone_page(browser) as page:
        search_from_the_page(page, web.url, query)
        wait_for_thumbnails(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        columns = page.evaluate("getComputedStyle(document.querySelector('#grid')).gridTemplateColumns.split(' ').length")
        assert columns == 2
        assert page.is_visible("text=Tap to choose a photo") is False  # query shown instead of the prompt
        screenshot(page, "web-phone.png", full_page=False)


def test_static_assets_are_local(web: ServerThread) -> None:
    import httpx

    html = httpx.get(web.url, trust_env=False).text
    page_body = html.split("<footer>")[0]  # the footer links to the API's docs, which is fine
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page_body), "no CDN or remote assets"
    for asset in ("style.css", "app.js", "favicon.svg"):
        assert httpx.get(f"{web.url}/static/{asset}", trust_env=False).status_code == 200


# --- the collection: browse, add, delete, token ---------------------------------------------------


def card_ids(page) -> list[int]:
    return [int(i) for i in page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def wait_for_browse(page, count: int) -> None:
    page.wait_for_function(
        "n => !document.querySelector('#grid .skeleton') && document.querySelectorAll('#grid .card').length === n"
        " && !document.querySelector('#grid .card .rank') && document.querySelector('#results-meta').textContent",
        arg=count)


def listed(api: ServerThread) -> dict:
    return httpx.get(f"{api.url}/images", params={"limit": 500}, trust_env=False, timeout=30).json()


@pytest.fixture(scope="module")
def new_images(sample, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two real photos the index does not hold yet, and a 'photo' that is text."""
    _index, query = sample
    root = tmp_path_factory.mktemp("to-add")
    first = root / "added_query.jpg"
    shutil.copy(query, first)
    second = root / "added_mirrored.png"
    with Image.open(min((query.parent / "images").glob("hubble_*.jpg"))) as im:
        ImageOps.mirror(im.convert("RGB")).save(second)
    broken = root / "broken.jpg"
    broken.write_text("this is a text file with a .jpg name")
    with Image.open(min((query.parent / "images").glob("rocket_*.jpg"))) as im:
        ImageOps.flip(im.convert("RGB")).save(root / "fresh_flipped.jpg", quality=90)  # added by URL
    return first, second, broken


@pytest.fixture(scope="module")
def image_server(new_images) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the new images (for adding and searching by URL)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(new_images[0].parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def writable(sample, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[ServerThread, ServerThread]]:
    """(API, page) on a copy of the sample index that the test may change; the API's settings from
    the test's `api_settings` mark (a token, read-only), private URLs allowed for the local image server."""
    index = tmp_path / "index"
    shutil.copytree(sample[0], index)
    mark = request.node.get_closest_marker("api_settings")
    settings = Settings(cors_origins=(), allow_private_urls=True, **(mark.kwargs if mark else {}))
    api_server = start_asgi(create_app(index, settings))
    web_server = start_wsgi(create_web_app(api_server.url))
    try:
        yield api_server, web_server
    finally:
        web_server.stop()
        api_server.stop()


def test_browse_pages_the_collection_newest_first_with_filters(page, web: ServerThread, sample) -> None:
    page.goto(web.url)
    wait_for_browse(page, 24)
    assert page.inner_text("#results-title") == "The collection"
    assert page.inner_text("#results-meta").startswith("45 images")
    assert card_ids(page) == list(range(44, 20, -1)), "the newest (highest id) first"
    assert page.inner_text("#page-info") == "1–24 of 45"
    assert page.is_disabled("#newer") and not page.is_disabled("#older")
    # the API names a local file by its name only (never a server path): the name is the source
    assert page.locator("#grid .card .source").count() == 0
    assert page.locator(".segmented input[value='fusion']").count() == 0, "no Fusion for a single model"
    assert page.locator(".segmented input").count() == 3
    wait_for_visible_thumbnails(page)
    screenshot(page, "web-browse.png")

    page.click("#older")
    wait_for_browse(page, 21)
    assert card_ids(page) == list(range(20, -1, -1))
    assert page.inner_text("#page-info") == "25–45 of 45"
    assert page.is_disabled("#older") and not page.is_disabled("#newer")
    page.click("#newer")
    wait_for_browse(page, 24)
    assert card_ids(page)[0] == 44

    # source prefix: one subject's folder prefix
    page.fill("#filter-prefix", str(sample[1].parent / "images" / "coffee_"))
    page.click("#filter-form button[type=submit]")
    wait_for_browse(page, 5)
    assert all(n.startswith("coffee_") for n in result_names(page))
    assert page.inner_text("#results-meta").startswith("5 images match")
    assert not page.is_visible("#pager")
    # metadata: the CSV's place column, combined with the prefix (all must hold), then alone
    page.fill("#filter-where", "place=far")
    page.click("#filter-form button[type=submit]")
    page.wait_for_function("document.querySelector('#grid .empty')")
    page.fill("#filter-prefix", "")
    page.fill("#filter-where", "place=far; year>=2000")
    page.click("#filter-form button[type=submit]")
    page.wait_for_function("document.querySelector('#results-meta').textContent.startsWith('10 images match')")
    wait_for_browse(page, 10)
    assert sorted({n.split("_")[0] for n in result_names(page)}) == sorted(FAR)
    # a malformed condition: the API's explanation, shown as it is
    page.fill("#filter-where", "year")
    page.click("#filter-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert "year" in page.inner_text("#error-text")
    page.click("#filter-clear")
    wait_for_browse(page, 24)
    assert not page.is_visible("#error")

    # click a picture of the collection: more like it
    clicked = page.locator("#grid .card").nth(3)
    clicked_id = clicked.get_attribute("data-id")
    clicked.locator(".thumb").click()
    wait_for_results(page, "More like")
    assert page.url.endswith(f"#more={clicked_id}")
    assert not page.is_visible("#collection")
    page.click("#browse-back")
    wait_for_browse(page, 24)
    assert page.is_visible("#collection")


def test_add_several_files_with_one_failing_then_urls_then_delete(page, writable, new_images, image_server) -> None:
    api_server, web_server = writable
    first, second, broken = new_images
    page.goto(web_server.url)
    wait_for_browse(page, 24)
    page.click("#add-open")
    assert page.is_visible("#add")
    page.evaluate("""() => {  // every status each line shows, to see the progress it went through
        window.seen = [];
        new MutationObserver(() => document.querySelectorAll('#add-list .st')
            .forEach(st => window.seen.push(st.textContent)))
            .observe(document.querySelector('#add-list'), {subtree: true, childList: true, characterData: true});
    }""")
    page.set_input_files("#add-files", [str(first), str(broken), str(second)])
    page.wait_for_function("document.querySelector('#add-summary').textContent.startsWith('Done')")
    rows = page.locator("#add-list li")
    assert rows.count() == 3
    states = rows.evaluate_all("rows => rows.map(r => [r.dataset.state, r.textContent])")
    assert [st for st, _ in states] == ["added", "failed", "added"], states
    assert "broken.jpg" in states[1][1] and "not a supported image" in states[1][1], states[1]
    assert page.inner_text("#add-summary") == "Done: 2 added, 1 failed."
    seen = page.evaluate("window.seen")
    assert "waiting" in seen and any(re.fullmatch(r"uploading… \d+%|adding…", t) for t in seen), seen
    page.wait_for_function("document.querySelector('#results-meta').textContent.startsWith('47 images')")
    wait_for_browse(page, 24)
    assert page.inner_text("#results-meta").startswith("47 images")
    assert result_names(page)[:2] == ["added_mirrored.png", "added_query.jpg"], "new images come first"
    # the source is on the card itself, not only in a tooltip
    sources = page.locator("#grid .card .source")
    assert sources.first.is_visible() and sources.all_inner_texts()[:2] == ["uploaded", "uploaded"]
    assert listed(api_server)["total"] == 47
    wait_for_visible_thumbnails(page)
    screenshot(page, "web-add.png")

    # URLs, one per line: a new image, one already there, one that is not there
    fresh = f"{image_server}/fresh_flipped.jpg"
    page.fill("#add-urls", f"{fresh}\n{image_server}/added_query.jpg\n{image_server}/missing.jpg")
    page.click("#add-url-form button")
    page.wait_for_function("document.querySelectorAll('#add-list li').length === 6"
                           " && document.querySelector('#add-summary').textContent.startsWith('Done')")
    url_rows = rows.evaluate_all("rows => rows.slice(3).map(r => [r.dataset.state, r.textContent])")
    assert url_rows[0][0] == "added", url_rows
    assert url_rows[1][0] == "known" and "already in the collection" in url_rows[1][1], url_rows
    assert url_rows[2][0] == "failed" and "404" in url_rows[2][1], url_rows
    assert page.inner_text("#add-summary") == "Done: 1 added, 1 already there, 1 failed."
    page.wait_for_function("document.querySelector('#results-meta').textContent.startsWith('48 images')")
    wait_for_browse(page, 24)
    assert page.locator("#grid .card .source").first.inner_text() == fresh, "the URL it came from, on the card"

    # delete from the grid: cancelling the confirmation changes nothing, accepting deletes
    newest = card_ids(page)[0]
    page.once("dialog", lambda d: d.dismiss())
    page.locator("#grid .card").first.locator(".delete").click()
    page.wait_for_timeout(300)
    assert listed(api_server)["total"] == 48 and card_ids(page)[0] == newest
    messages: list[str] = []

    def accept(dialog) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.locator("#grid .card").first.locator(".delete").click()
    page.wait_for_selector("#notice:not([hidden])")
    assert "fresh_flipped.jpg" in messages[0] and f"#{newest}" in messages[0]
    assert page.inner_text("#notice") == f"Deleted “fresh_flipped.jpg” (image #{newest})."
    page.wait_for_function("document.querySelector('#results-meta').textContent.startsWith('47 images')")
    assert newest not in card_ids(page)
    assert newest not in [i["id"] for i in listed(api_server)["images"]]

    # delete from a search result
    page.locator("#grid .card").nth(5).locator(".thumb").click()
    wait_for_results(page, "More like")
    victim = card_ids(page)[0]
    page.once("dialog", lambda d: d.accept())
    page.locator("#grid .card").first.locator(".delete").click()
    page.wait_for_function(f"document.querySelector('#notice').textContent.includes('#{victim}')")
    assert victim not in card_ids(page)
    assert listed(api_server)["total"] == 46


def test_add_a_chosen_folder_sends_only_its_images(page, writable, new_images, tmp_path: Path) -> None:
    api_server, web_server = writable
    folder = tmp_path / "holiday"
    (folder / "day2").mkdir(parents=True)
    shutil.copy(new_images[1], folder / "beach.png")
    shutil.copy(new_images[0].parent / "fresh_flipped.jpg", folder / "day2" / "rocket.jpg")
    (folder / "notes.txt").write_text("not a picture")
    page.goto(web_server.url)
    wait_for_browse(page, 24)
    page.click("#add-open")
    page.set_input_files("#add-folder", str(folder))
    page.wait_for_function("document.querySelector('#add-summary').textContent.startsWith('Done')")
    assert page.inner_text("#add-summary") == "Done: 2 added, 1 non-image file(s) skipped."
    names = sorted(page.locator("#add-list li .n").all_inner_texts())
    assert names == ["holiday/beach.png", "holiday/day2/rocket.jpg"]
    assert listed(api_server)["total"] == 47
    # files dropped on the add area are added, not searched with
    page.evaluate("""bytes => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'dropped-to-add.jpg', {type: 'image/jpeg'}));
        document.querySelector('#add-drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", list((new_images[0].parent / "fresh_flipped.jpg").read_bytes()))
    page.wait_for_function("document.querySelectorAll('#add-list li').length === 3"
                           " && document.querySelector('#add-summary').textContent.startsWith('Done')")
    assert page.inner_text("#add-list li:last-child").startswith("dropped-to-add.jpg")
    assert "already in the collection" in page.inner_text("#add-list li:last-child")
    assert page.inner_text("#results-title") == "The collection", "no search was started"


def test_add_a_dropped_folder(page, writable, new_images, tmp_path: Path) -> None:
    """A folder dragged from the desktop: the drop is made by Chromium itself (DevTools' drag input with
    real paths), so the page gets the directory entries a real drop gives, and walks them."""
    api_server, web_server = writable
    folder = tmp_path / "trip"
    (folder / "inner").mkdir(parents=True)
    shutil.copy(new_images[1], folder / "a.png")
    shutil.copy(new_images[0].parent / "fresh_flipped.jpg", folder / "inner" / "b.jpg")
    (folder / "inner" / "readme.md").write_text("not a picture")
    page.goto(web_server.url)
    wait_for_browse(page, 24)
    page.click("#add-open")
    box = page.locator("#add-drop").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    data = {"items": [], "files": [str(folder)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})
    page.wait_for_function("document.querySelector('#add-summary').textContent.startsWith('Done')")
    assert page.inner_text("#add-summary") == "Done: 2 added, 1 non-image file(s) skipped."
    assert sorted(page.locator("#add-list li .n").all_inner_texts()) == ["trip/a.png", "trip/inner/b.jpg"]
    assert listed(api_server)["total"] == 47
    assert page.inner_text("#results-title") == "The collection", "no search was started"


@pytest.mark.api_settings(api_token="s3cret-token-for-the-page")
def test_token_is_asked_once_when_adding_and_kept_in_the_tab(page, writable, new_images) -> None:
    api_server, web_server = writable
    page.goto(web_server.url)
    wait_for_browse(page, 24)
    assert page.evaluate("document.body.dataset.writes") == "token"
    assert not page.is_visible("#token-dialog"), "no question before the user wants to change something"
    page.click("#add-open")
    page.set_input_files("#add-files", [str(new_images[0])])
    page.wait_for_selector("#token-dialog[open]")
    page.fill("#token-input", "a-wrong-token")
    page.click("#token-ok")
    page.wait_for_function("document.querySelector('#token-dialog').open"
                           " && document.querySelector('#token-why').textContent.includes('not accepted')")
    screenshot(page, "web-token.png", full_page=False)
    assert listed(api_server)["total"] == 45
    page.fill("#token-input", "s3cret-token-for-the-page")
    page.click("#token-ok")
    page.wait_for_function("document.querySelector('#add-summary').textContent.startsWith('Done')")
    assert page.inner_text("#add-summary") == "Done: 1 added."
    assert listed(api_server)["total"] == 46
    assert page.evaluate("sessionStorage.getItem('imagefinder.api-token')") == "s3cret-token-for-the-page"
    assert page.evaluate("localStorage.length") == 0, "the token is never kept on disk"
    assert page.is_visible("#token-kept")
    # the next write uses the kept token: no second question
    page.wait_for_function("document.querySelector('#results-meta').textContent.startsWith('46 images')")
    wait_for_browse(page, 24)
    page.once("dialog", lambda d: d.accept())
    page.locator("#grid .card").first.locator(".delete").click()
    page.wait_for_selector("#notice:not([hidden])")
    assert not page.evaluate("document.querySelector('#token-dialog').open")
    assert listed(api_server)["total"] == 45
    # the token is forgotten on request
    page.click("#token-forget")
    assert page.evaluate("sessionStorage.length") == 0 and not page.is_visible("#token-kept")
    # cancelling the question sends nothing and says so
    page.reload()
    wait_for_browse(page, 24)
    page.click("#add-open")
    page.set_input_files("#add-files", [str(new_images[1])])
    page.wait_for_selector("#token-dialog[open]")
    page.click("#token-cancel")
    page.wait_for_function("document.querySelector('#add-summary').textContent.startsWith('Done')")
    assert "No API token was given" in page.inner_text("#add-list")
    assert listed(api_server)["total"] == 45


@pytest.mark.api_settings(read_only=True)
def test_read_only_server_hides_add_and_delete(page, writable) -> None:
    _api, web_server = writable
    page.goto(web_server.url)
    wait_for_browse(page, 24)
    assert page.evaluate("document.body.dataset.writes") == "read-only"
    assert not page.is_visible("#add-open")
    assert page.locator("#grid .card .delete").count() == 24
    assert not page.locator("#grid .card .delete").first.is_visible()


def test_url_and_id_searches_are_shareable_links(page, writable, image_server) -> None:
    _api, web_server = writable
    url = f"{image_server}/added_query.jpg"
    page.goto(f"{web_server.url}/?{urlencode({'url': url})}")
    wait_for_results(page, "Most similar")
    assert page.inner_text("#query-label") == url and page.input_value("#url") == url
    assert result_names(page)[0].startswith("coffee_")
    # k and the measure travel in the link too
    page.goto(f"{web_server.url}/?{urlencode({'url': url, 'k': 5, 'metric': 'euclidean'})}")
    wait_for_results(page, "Most similar")
    assert len(result_names(page)) == 5 and page.is_checked("input[value='euclidean']")
    assert "Euclidean" in page.inner_text("#results-meta")
    page.select_option("#k", "20")
    page.wait_for_function("document.querySelectorAll('#grid .card .rank').length === 20")
    assert page.url == f"{web_server.url}/?{urlencode({'url': url, 'k': 20, 'metric': 'euclidean'})}"
    page.goto(f"{web_server.url}/?id=18")
    wait_for_results(page, "More like")
    assert page.url.endswith("#more=18")
    # a URL typed in the box becomes the page's address, to copy and share
    page.goto(web_server.url)
    wait_for_browse(page, 24)
    page.fill("#url", url)
    page.click("#url-form button")
    wait_for_results(page, "Most similar")
    assert page.url == f"{web_server.url}/?{urlencode({'url': url})}"
    page.go_back()
    wait_for_browse(page, 24)


def test_phone_browse_add_and_a_long_error(browser, writable, new_images) -> None:
    _api, web_server = writable
    with phone_page(browser) as page:
        page.goto(web_server.url)
        wait_for_browse(page, 24)
        wait_for_visible_thumbnails(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        screenshot(page, "web-browse-phone.png", full_page=False)
        page.click("#add-open")
        page.set_input_files("#add-files", [str(new_images[1]), str(new_images[2])])
        page.wait_for_function("document.querySelector('#add-summary').textContent.startsWith('Done')")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.locator("#add").scroll_into_view_if_needed()
        screenshot(page, "web-add-phone.png", full_page=False)
        # a long unbroken word in an error message (the API quotes the bad condition) wraps inside the width
        assert not page.is_visible("#filter-where"), "on a phone the filters start folded"
        page.click("#filter-box summary")
        page.fill("#filter-where", "nooperatorinthiscondition" * 12)
        page.click("#filter-form button[type=submit]")
        page.wait_for_selector("#error:not([hidden])")
        assert "nooperatorinthiscondition" * 3 in page.inner_text("#error-text")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.locator("#error").scroll_into_view_if_needed()
        screenshot(page, "web-error-phone.png", full_page=False)


def teardown_module() -> None:
    # keep test-artifacts/ but not an empty one from a skipped run
    if ARTIFACTS.exists() and not any(ARTIFACTS.iterdir()):
        shutil.rmtree(ARTIFACTS, ignore_errors=True)


# --- region search and match confidence ---------------------------------------------------------


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600x300 PNG: the sample's cat on the left half, its rocket on the right (lossless, so the
    page's region and a crop made here are the same pixels)."""
    from imagefinder.sample import photos

    shots = dict(photos())
    im = Image.new("RGB", (600, 300))
    im.paste(shots["cat"].resize((300, 300)), (0, 0))
    im.paste(shots["rocket"].resize((300, 300)), (300, 0))
    path = tmp_path_factory.mktemp("region") / "cat_and_rocket.png"
    im.save(path)
    return path


def api_search(api: ServerThread, image: Image.Image, k: int = 10) -> list[dict]:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    r = httpx.post(f"{api.url}/search", params={"k": k},
                   files={"file": ("crop.png", buf.getvalue(), "image/png")}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def drag_box(page, fractions: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Mouse down / move / up over the query picture, from and to these fractions of its shown size."""
    rect = page.locator("#query-img").bounding_box()
    assert rect is not None
    x0, y0 = rect["x"] + fractions[0] * rect["width"], rect["y"] + fractions[1] * rect["height"]
    x1, y1 = rect["x"] + fractions[2] * rect["width"], rect["y"] + fractions[3] * rect["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    return (x0 - rect["x"], y0 - rect["y"], x1 - rect["x"], y1 - rect["y"]), rect


def shown_region(page) -> list[int]:
    """The box the page says it searched ("Region WxH px at (X0, Y0)"), as x0, y0, x1, y1.
    (Chromium hands Playwright no body for a multipart upload, so it is read from the page; the
    results then prove the API got it, by equalling a search with the cropped picture.)"""
    page.wait_for_selector("#region-text", state="visible")
    found = re.fullmatch(r"Region (\d+)×(\d+) px at \((\d+), (\d+)\)", page.inner_text("#region-text"))
    assert found, page.inner_text("#region-text")
    w, h, x0, y0 = (int(v) for v in found.groups())
    return [x0, y0, x0 + w, y0 + h]


def test_drag_a_box_searches_that_region_as_the_cropped_image_would(page, web: ServerThread, api: ServerThread,
                                                                    two_subjects: Path) -> None:
    search_from_the_page(page, web.url, two_subjects)
    whole = card_ids(page)
    assert not page.is_visible("#box") and not page.is_visible("#box-clear")

    shown, rect = drag_box(page, (0.56, 0.08, 0.95, 0.92))  # the rocket half
    box = shown_region(page)
    # the box is in the image's own pixels (600x300), scaled from the picture's shown size
    scale = 600 / rect["width"]
    expected = [round(v * s) for v, s in zip(shown, (scale, 300 / rect["height"]) * 2)]
    assert all(abs(a - b) <= 1 for a, b in zip(box, expected)), (box, expected)
    assert rect["width"] < 600, "the preview is shown smaller than the image: the scaling is exercised"
    wait_for_results(page, "Most similar images (selected region)")
    wait_for_thumbnails(page)
    region = card_ids(page)
    assert page.is_visible("#box") and page.is_visible("#box-clear")
    assert "Region" in page.inner_text("#region-text")

    # the same results as searching the cropped picture through the API
    crop = api_search(api, Image.open(two_subjects).crop(tuple(box)))
    assert region == [r["id"] for r in crop]
    page_scores = [float(v) for v in page.locator("#grid .card .value").all_inner_texts()]
    assert page_scores == pytest.approx([r["score"] for r in crop], abs=1e-3)
    assert all(n.startswith("rocket_") for n in result_names(page)[:5]), result_names(page)
    assert region != whole
    screenshot(page, "web-region.png")

    # the shown box sits where it was dragged
    shown_box = page.locator("#box").bounding_box()
    assert abs(shown_box["x"] - rect["x"] - shown[0]) <= 2 and abs(shown_box["width"] - (shown[2] - shown[0])) <= 2

    # k kept the region; clearing it searches the whole image again
    page.click("#box-clear")
    page.wait_for_function("!document.querySelector('#results-title').textContent.includes('region')")
    wait_for_results(page, "Most similar")
    assert card_ids(page) == whole
    assert not page.is_visible("#box")

    # Escape clears a box too; a tiny drag is refused with a message, not sent
    drag_box(page, (0.05, 0.1, 0.45, 0.9))  # the cat half
    wait_for_results(page, "Most similar images (selected region)")
    assert all(n.startswith("cat_") for n in result_names(page)[:3]), result_names(page)
    page.keyboard.press("Escape")
    page.wait_for_function("!document.querySelector('#results-title').textContent.includes('region')")
    wait_for_results(page, "Most similar")
    assert card_ids(page) == whole


def test_a_region_of_an_indexed_image_for_more_like_this(page, web: ServerThread, api: ServerThread, sample) -> None:
    page.goto(f"{web.url}/#more=18")
    wait_for_results(page, "More like")
    drag_box(page, (0.1, 0.1, 0.7, 0.6))
    box = shown_region(page)
    wait_for_results(page, "More like")
    page.wait_for_function("document.querySelector('#results-title').textContent.includes('region')")
    original = Image.open(__import__("io").BytesIO(httpx.get(f"{api.url}/images/18").content))
    w, h = ImageOps.exif_transpose(original).size
    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    assert abs(box[2] - box[0] - 0.6 * w) <= 0.02 * w + 1
    expected = [r["id"] for r in api_search(api, ImageOps.exif_transpose(original).convert("RGB").crop(tuple(box)), 11)]
    assert card_ids(page) == [i for i in expected if i != 18][:10]


def test_match_strength_and_no_close_match(page, web: ServerThread, sample, tmp_path: Path) -> None:
    import numpy as np

    _index, query = sample
    search_from_the_page(page, web.url, query)
    labels = page.locator("#grid .card .match").all_inner_texts()
    assert labels[0] == "strong match" and set(labels) <= {"strong match", "weak match"}, labels
    assert not page.is_visible("#no-match")
    assert page.locator("#grid .card .bar").count() == 10  # cosine: a similarity bar

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(noise)
    page.set_input_files("#file", str(noise))
    wait_for_results(page, "Most similar")
    page.wait_for_selector("#no-match", state="visible")
    assert page.locator("#grid .card .match").all_inner_texts() == ["weak match"] * 10
    assert "No close match" in page.inner_text("#no-match")
    wait_for_thumbnails(page)
    screenshot(page, "web-no-match.png")

    page.click("text=Euclidean")
    page.wait_for_function("document.querySelector('#results-meta').textContent.includes('Euclidean')")
    wait_for_results(page, "Most similar")
    assert page.locator("#grid .card .bar").count() == 0, "a distance is not drawn as a similarity bar"
    assert page.locator("#grid .card .what").first.inner_text() == "distance"
    values = [float(v) for v in page.locator("#grid .card .value").all_inner_texts()]
    assert values == sorted(values) and values[0] > 1, "distances, lowest (closest) first"
    page.click("text=Vote")
    page.wait_for_function("document.querySelector('#results-meta').textContent.includes('vote')")
    wait_for_results(page, "Most similar")
    assert page.locator("#grid .card .bar").count() == 0, "a rank-fusion score is not a similarity bar"
    assert page.locator("#grid .card .what").first.inner_text() == "rank score"


def test_phone_region_drag_and_no_close_match(browser, web: ServerThread, two_subjects: Path) -> None:
    with phone_page(browser) as page:
        search_from_the_page(page, web.url, two_subjects)
        drag_box(page, (0.56, 0.08, 0.95, 0.92))
        wait_for_results(page, "Most similar images (selected region)")
        wait_for_visible_thumbnails(page)
        assert all(n.startswith("rocket_") for n in result_names(page)[:3]), result_names(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        screenshot(page, "web-region-phone.png", full_page=False)


def test_why_this_match_draws_the_shared_points(page, web: ServerThread, api: ServerThread, two_subjects: Path) -> None:
    search_from_the_page(page, web.url, two_subjects)
    drag_box(page, (0.52, 0.02, 0.98, 0.98))
    wait_for_results(page, "Most similar images (selected region)")
    box = shown_region(page)
    first = page.locator("#grid .card").first
    result_id, name = int(first.get_attribute("data-id")), first.locator(".name").inner_text()
    assert name.startswith("rocket_")
    first.locator(".why").click()
    page.wait_for_selector("#why-canvas[data-lines]")
    # what the page drew is the API's answer for the same query region and result
    with two_subjects.open("rb") as f:
        answer = httpx.post(f"{api.url}/search/matches", data={"result_id": str(result_id), "box": ",".join(map(str, box))},
                            files={"file": ("q.png", f.read(), "image/png")}, timeout=120).json()
    assert answer["verified"]
    assert int(page.get_attribute("#why-canvas", "data-points")) == len(answer["pairs"]) > 0
    assert int(page.get_attribute("#why-canvas", "data-lines")) == min(80, len(answer["pairs"]))
    assert page.get_attribute("#why-dialog", "data-verified") == "true"
    assert f"{answer['inliers']} points" in page.inner_text("#why-text")
    # lines in colour were drawn over the pictures (not a blank canvas)
    coloured = page.evaluate("""() => { const c = document.querySelector('#why-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) n++; return n / (c.width * c.height); }""")
    assert coloured > 0.5
    screenshot(page, "web-why.png", full_page=False)

    # a result that is not the same thing: the dialog says it is not verified
    page.click("#why-dialog .close")
    weak = page.locator("#grid .card:has(.match[data-match='weak'])").last
    weak.locator(".why").click()
    page.wait_for_selector("#why-dialog[data-verified='false'] #why-canvas[data-lines]")
    assert page.inner_text("#why-text").startswith("Not verified")


def test_phone_why_this_match(browser, web: ServerThread, sample) -> None:
    with phone_page(browser) as page:
        page.goto(f"{web.url}/#more=18")
        wait_for_results(page, "More like")
        page.locator("#grid .card").first.locator(".why").click()
        page.wait_for_selector("#why-canvas[data-lines]")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        canvas = page.locator("#why-canvas").bounding_box()
        assert canvas["width"] <= 375 and canvas["height"] > canvas["width"], "stacked: query above, result below"
        screenshot(page, "web-why-phone.png", full_page=False)


# --- duplicates review --------------------------------------------------------------------------


def test_duplicates_keep_one_remove_the_others(page, writable) -> None:
    api_server, web_server = writable
    report = httpx.get(f"{api_server.url}/duplicates", trust_env=False, timeout=120).json()
    group = next(g for g in report["groups"] if g["tier"] == "near" and len(g["ids"]) >= 4)
    pixels = {i["id"]: (i["width"] or 0) * (i["height"] or 0) for i in group["images"]}
    largest = max(group["ids"], key=lambda i: (pixels[i], -i))
    total = listed(api_server)["total"]

    page.goto(web_server.url)
    page.wait_for_function(f"document.querySelector('#results-meta').textContent.startsWith('{total} images')")
    page.click("#dups-open")
    page.wait_for_selector("#dups-list .dup-group")
    rows = page.locator("#dups-list .dup-group")
    assert rows.count() == len(report["groups"])
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.tier + ':' + r.dataset.ids)") == [
        f"{g['tier']}:{','.join(map(str, g['ids']))}" for g in report["groups"]]
    row = page.locator(f"#dups-list .dup-group[data-ids='{','.join(map(str, group['ids']))}']")
    assert "Edited copies" in row.inner_text() and f"{group['score']:.3f}" in row.inner_text()
    # the largest picture is kept by default; choose another one instead
    assert int(row.locator("input[type=radio]:checked").get_attribute("value")) == largest
    keep = next(i for i in group["ids"] if i != largest)
    row.locator(f".dup-item[data-id='{keep}']").click()
    assert int(row.locator("input[type=radio]:checked").get_attribute("value")) == keep
    page.wait_for_function("() => [...document.querySelectorAll('#dups-list img')]"
                           ".filter(img => img.getBoundingClientRect().top < innerHeight)"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    screenshot(page, "web-duplicates.png", full_page=False)

    messages: list[str] = []

    def accept(dialog) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.locator(".remove").click()
    page.wait_for_function("document.querySelector('#notice').textContent.startsWith('Kept')")
    others = [i for i in group["ids"] if i != keep]
    assert f"#{keep}" in messages[0] and all(f"#{i}" in messages[0] for i in others)
    assert page.inner_text("#notice").endswith(f"(image #{keep}); removed {len(others)} others.")
    left = {i["id"] for i in listed(api_server)["images"]}
    assert keep in left and not left & set(others)
    # the grid and the groups refresh
    page.wait_for_function(f"document.querySelector('#results-meta').textContent"
                           f".startsWith('{total - len(others)} images')")
    page.wait_for_function("ids => ids.every(i => !document.querySelector(`#dups-list .dup-item[data-id='${i}']`))",
                           arg=others)
    assert not set(others) & set(card_ids(page))


def test_phone_duplicates_review(browser, writable) -> None:
    """The duplicates view on a phone: groups listed, the page never wider than the screen."""
    api_server, web_server = writable
    report = httpx.get(f"{api_server.url}/duplicates", trust_env=False, timeout=120).json()
    with phone_page(browser) as page:
        page.goto(web_server.url)
        page.wait_for_selector("#status[data-state='ok']")
        page.click("#dups-open")
        page.wait_for_selector("#dups-list .dup-group")
        assert page.locator("#dups-list .dup-group").count() == len(report["groups"])
        page.locator("#dups-list .dup-group").first.scroll_into_view_if_needed()
        page.wait_for_function("() => [...document.querySelectorAll('#dups-list img')]"
                               ".filter(img => img.getBoundingClientRect().top < innerHeight)"
                               ".every(img => img.complete && img.naturalWidth > 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        screenshot(page, "web-duplicates-phone.png", full_page=False)

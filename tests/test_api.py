"""The REST API over a real socket: uvicorn on 127.0.0.1 (a free port), driven with httpx.

Covers every endpoint, every error path (413/415/422/404 with a readable `detail`), the
add -> search finds it -> delete -> search does not cycle, and a restart (a second server
process started with the seed command `cd api && uvicorn app:app`) that keeps the changes.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from PIL import Image, ImageDraw

from imagefinder.api import Settings, create_app
from imagefinder.api.testing import ServerThread, free_port, start_asgi
from imagefinder.search import METRICS
from imagefinder.serve import stop_children, wait_ready

REPO = Path(__file__).resolve().parents[1]
MAX_UPLOAD = 2 * 1024 * 1024
MAX_PIXELS = 4_000_000


# --- fixtures ---------------------------------------------------------------------------------


@dataclass
class Sample:
    index: Path
    images: Path
    query: Path  # an edited coffee photo that is not in the index


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, embedder) -> Sample:
    """The built-in sample collection (9 photos x 5 edits) indexed with the session's model."""
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("api-sample")
    images, query = write_sample(root / "images")
    build_index([str(images)], root / "index", embedder=embedder, workers=4)
    return Sample(root / "index", images, query)


def _settings(**changes) -> Settings:
    base = {"max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS, "cors_origins": ("http://127.0.0.1:5000",)}
    return Settings(**{**base, **changes})


@pytest.fixture(scope="module")
def api(sample: Sample) -> Iterator[ServerThread]:
    """A read-only server (no test adds or deletes here): private URLs refused, as by default."""
    server = start_asgi(create_app(sample.index, _settings()))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(api: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60, trust_env=False) as c:
        yield c


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (320, 240), seed: int = 0) -> bytes:
    """A synthetic picture unlike anything in the sample: stripes, a disc and a box."""
    img = Image.new("RGB", size, (20 + 40 * seed % 200, 90, 160))
    draw = ImageDraw.Draw(img)
    w, h = size
    for x in range(0, w, 24):
        draw.rectangle([x, 0, x + 11, h], fill=(240, 200 - 20 * seed % 150, 40))
    draw.ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(30, 160, 90 + 30 * seed % 150))
    draw.rectangle([w // 8, h // 8, w // 3, h // 3], outline=(255, 255, 255), width=6)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The status, a JSON {"detail": "<sentence>"} body, the expected words, no paths or tracebacks."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"], body
    detail = body["detail"]
    for word in words:
        assert word.lower() in detail.lower(), detail
    for leak in ("Traceback", "File \"", "/tmp/", "site-packages", str(REPO)):
        assert leak not in detail, detail
    return detail


def names(results: list[dict]) -> list[str]:
    return [Path(r["source"]).name for r in results]


# --- service endpoints ------------------------------------------------------------------------


def test_health_reports_ok_with_the_model_loaded(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["images"] == 45 and body["model_loaded"] is True


def test_stats_reports_counts_model_index_type_dims_and_clusters(client: httpx.Client) -> None:
    stats = client.get("/stats").json()
    assert stats["images"] == 45 and stats["items"] == 45 and stats["failed"] == 0
    assert stats["model"] == "efficientnet-lite0"
    assert stats["index_type"] == "Flat" and stats["dims"] == 1280
    assert stats["clusters"] >= 1
    assert stats["max_upload_bytes"] == MAX_UPLOAD and stats["metrics"] == list(METRICS)
    assert {"cosine", "euclidean", "vote"} <= set(stats["metrics"])


def test_openapi_schema_and_offline_docs_are_served(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/search", "/images", "/images/{image_id}", "/images/{image_id}/thumbnail", "/stats",
            "/health"} <= set(schema["paths"])
    assert set(schema["paths"]["/search"]["post"]["requestBody"]["content"]) == {
        "application/json", "multipart/form-data"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn." not in docs.text, "the docs page must work offline"


def test_unknown_endpoint_and_wrong_method_say_what_exists(client: httpx.Client) -> None:
    assert_error(client.get("/nope"), 404, "no such endpoint", "/docs")
    assert_error(client.put("/search"), 405, "not allowed")


def test_cors_lets_the_configured_page_origin_call_the_api(client: httpx.Client) -> None:
    preflight = client.options("/search", headers={"Origin": "http://127.0.0.1:5000",
                                                   "Access-Control-Request-Method": "POST"})
    assert preflight.headers.get("access-control-allow-origin") == "http://127.0.0.1:5000"
    other = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# --- search ----------------------------------------------------------------------------------


def test_search_by_upload_ranks_the_edited_copies_first(client: httpx.Client, sample: Sample) -> None:
    r = client.post("/search", files={"file": ("query.jpg", sample.query.read_bytes(), "image/jpeg")},
                    data={"k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 5 and body["metric"] == "cosine" and body["indexed"] == 45
    assert body["query"] == {"type": "upload", "filename": "query.jpg", "width": 240, "height": 240,
                             "id": None, "url": None, "path": None}
    results = body["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert all(n.startswith("coffee_") for n in names(results)), names(results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1.0001
    first = results[0]
    # relative to the request's URL (so right behind a proxy too): resolved like a link
    assert first["thumbnail_url"] == f"images/{first['id']}/thumbnail"
    assert urljoin(str(r.url), first["image_url"]) == f"{client.base_url}/images/{first['id']}".replace("//images", "/images")
    assert first["width"] > 0 and first["height"] > 0


@pytest.mark.parametrize("metric", METRICS)  # the engine's list: a new metric is served and tested here too
def test_every_metric_finds_the_same_photo(client: httpx.Client, sample: Sample, metric: str) -> None:
    r = client.post(f"/search?k=3&metric={metric}", files={"file": ("q.jpg", sample.query.read_bytes())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metric"] == metric and len(body["results"]) == 3
    assert all(n.startswith("coffee_") for n in names(body["results"]))
    scores = [x["score"] for x in body["results"]]
    assert scores == (sorted(scores) if metric == "euclidean" else sorted(scores, reverse=True))


def test_k_and_metric_may_come_from_query_json_or_form(client: httpx.Client, sample: Sample) -> None:
    coffee = client.post("/search", json={"id": 18, "k": 2, "metric": "vote"}).json()
    assert coffee["k"] == 2 and coffee["metric"] == "vote" and len(coffee["results"]) == 2
    by_query = client.post("/search?k=4&metric=euclidean", json={"id": 18}).json()
    assert by_query["k"] == 4 and by_query["metric"] == "euclidean"
    by_form = client.post("/search", files={"file": ("q.jpg", sample.query.read_bytes())},
                          data={"k": "7", "metric": "vote"}).json()
    assert by_form["k"] == 7 and by_form["metric"] == "vote"
    default = client.post("/search", json={"id": 18}).json()
    assert default["k"] == 10 and len(default["results"]) == 10


def test_more_like_this_by_id(client: httpx.Client) -> None:
    info = client.get("/images/18/info").json()
    assert Path(info["source"]).name == "coffee_original.jpg"
    body = client.post("/search", json={"id": 18, "k": 5}).json()
    assert body["query"]["type"] == "id" and body["query"]["id"] == 18
    results = body["results"]
    assert results[0]["id"] == 18 and results[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert all(n.startswith("coffee_") for n in names(results))


def test_search_by_url_is_refused_for_private_hosts_by_default(client: httpx.Client, http_server) -> None:
    url = http_server.route("/api-default/coffee.jpg", b"\xff\xd8\xff" + b"0" * 100)
    assert_error(client.post("/search", json={"url": url}), 422, "loopback", "IMAGEFINDER_ALLOW_PRIVATE_URLS")
    assert http_server.count("/api-default/coffee.jpg") == 0, "the refused URL must never be contacted"


def test_search_by_url_with_private_urls_allowed(sample: Sample, http_server) -> None:
    url = http_server.route("/allowed/query.jpg", sample.query.read_bytes(), "image/jpeg")
    server = start_asgi(create_app(sample.index, _settings(allow_private_urls=True, max_upload_bytes=100_000)))
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as c:
            r = c.post("/search", json={"url": url, "k": 3})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["query"]["type"] == "url" and body["query"]["url"] == url
            assert all(n.startswith("coffee_") for n in names(body["results"]))
            missing = http_server.url("/allowed/missing.jpg")
            assert_error(c.post("/search", json={"url": missing}), 422, "cannot use the URL", "404")
            html = http_server.route("/allowed/page.html", b"<html>hello</html>", "text/html")
            assert_error(c.post("/search", json={"url": html}), 415, "not a supported image")
            # the byte cap itself is tested in test_ssrf.py; here: it is told to the client as a 413
            from imagefinder.api import service
            from imagefinder.net.errors import FetchTooLarge

            def too_large(url: str, **kwargs) -> None:
                raise FetchTooLarge(f"the image is too large: more than {kwargs['max_bytes']} bytes")

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(service, "safe_fetch", too_large)
                assert_error(c.post("/search", json={"url": "https://example.com/huge.jpg"}), 413,
                             "too large", "100000 bytes")
    finally:
        server.stop()


def test_concurrent_searches_all_succeed_with_identical_answers(client: httpx.Client, sample: Sample) -> None:
    data = sample.query.read_bytes()

    def one(i: int) -> list[int]:
        if i % 2:
            r = client.post("/search?k=5", files={"file": ("q.jpg", data)})
        else:
            r = client.post("/search", json={"id": 18, "k": 5})
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["results"]]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(32)))
    assert len({tuple(a) for a in answers[1::2]}) == 1 and len({tuple(a) for a in answers[::2]}) == 1


# --- images ------------------------------------------------------------------------------------


def test_original_and_thumbnail(client: httpx.Client, sample: Sample) -> None:
    original = client.get("/images/18")
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    assert original.content == (sample.images / "coffee_original.jpg").read_bytes()
    thumb = client.get("/images/18/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    assert "max-age" in thumb.headers.get("cache-control", "")


@pytest.mark.parametrize("path", ["/images/4500", "/images/4500/thumbnail", "/images/4500/info"])
def test_unknown_image_is_404(client: httpx.Client, path: str) -> None:
    assert_error(client.get(path), 404, "no indexed image with id 4500")


def test_unknown_id_search_and_delete_are_404(client: httpx.Client) -> None:
    assert_error(client.post("/search", json={"id": 4500}), 404, "4500")
    assert_error(client.delete("/images/4500"), 404, "4500")


# --- errors: 413 / 415 / 422 -------------------------------------------------------------------


def test_upload_over_the_size_cap_is_413(client: httpx.Client) -> None:
    big = b"\xff\xd8\xff" + os.urandom(MAX_UPLOAD + 1000)
    assert_error(client.post("/search", files={"file": ("big.jpg", big)}), 413, "too large", "2.0 MB")
    assert_error(client.post("/images", files={"file": ("big.jpg", big)}), 413, "too large")


def test_chunked_upload_is_capped_while_streaming(client: httpx.Client) -> None:
    sent = 0

    def body() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        nonlocal sent
        for _ in range(64):
            sent += 256 * 1024
            yield b"\xff" * (256 * 1024)

    r = client.post("/search", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert_error(r, 413, "too large")


def test_too_many_pixels_is_413(client: httpx.Client) -> None:
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 1000
    assert_error(client.post("/search", files={"file": ("bomb.png", bomb)}), 413, "pixels", "resize")
    real = image_bytes("JPEG", size=(2400, 2000))  # 4.8 MP > the 4 MP cap of this server
    assert_error(client.post("/search", files={"file": ("big.jpg", real)}), 413, "2400x2000")


@pytest.mark.parametrize("data", [b"hello, I am text", b"%PDF-1.7\n...", b"<svg xmlns='http://www.w3.org/2000/svg'/>"])
def test_not_an_image_is_415_whatever_its_name(client: httpx.Client, data: bytes) -> None:
    r = client.post("/search", files={"file": ("photo.jpg", data, "image/jpeg")})
    assert_error(r, 415, "not a supported image", "first bytes")


def test_wrong_request_content_type_is_415(client: httpx.Client) -> None:
    r = client.post("/search", content=b"url=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 415, "multipart/form-data", "application/json")
    assert_error(client.post("/images", content=image_bytes(), headers={"Content-Type": "image/png"}), 415)


def test_broken_images_are_422(client: httpx.Client) -> None:
    truncated = image_bytes("JPEG")[:300]
    assert_error(client.post("/search", files={"file": ("t.jpg", truncated)}), 422, "cannot read")
    assert_error(client.post("/search", files={"file": ("e.jpg", b"")}), 422, "empty")


@pytest.mark.parametrize("payload, words", [
    ({}, ["exactly one of 'url'", "'id'"]),
    ({"url": "https://example.com/a.jpg", "id": 3}, ["exactly one"]),
    ({"id": "three"}, ["id"]),
    ({"id": -1}, ["id", "greater than or equal to 0"]),
    ({"id": 3, "k": 0}, ["k"]),
    ({"id": 3, "k": 1000}, ["k"]),
    ({"id": 3, "metric": "manhattan"}, ["metric"]),
    ({"id": 3, "colour": "red"}, ["colour"]),
])
def test_invalid_json_queries_are_422(client: httpx.Client, payload: dict, words: list[str]) -> None:
    assert_error(client.post("/search", json=payload), 422, *words)


def test_invalid_query_parameters_and_form_fields_are_422(client: httpx.Client, sample: Sample) -> None:
    assert_error(client.post("/search?k=0", json={"id": 1}), 422, "query parameter k")
    assert_error(client.post("/search?metric=l1", json={"id": 1}), 422, "metric")
    q = sample.query.read_bytes()
    assert_error(client.post("/search", files={"file": ("q.jpg", q)}, data={"k": "many"}), 422, "k must be")
    assert_error(client.post("/search", files={"file": ("q.jpg", q)}, data={"metric": "l1"}), 422, "metric must")
    assert_error(client.post("/search", files={"other": ("q.jpg", q)}), 422, "'file' field")
    assert_error(client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}), 422,
                 "invalid request")
    assert_error(client.get("/images/abc"), 422, "image_id")


@pytest.mark.parametrize("url, words", [
    ("file:///etc/passwd", ["scheme 'file'"]),
    ("ftp://example.com/a.jpg", ["scheme 'ftp'"]),
    ("not a url", ["http"]),
    ("http://169.254.169.254/latest/meta-data/", ["link-local"]),
    ("http://10.1.2.3/a.jpg", ["private"]),
])
def test_unusable_urls_are_422(client: httpx.Client, url: str, words: list[str]) -> None:
    assert_error(client.post("/search", json={"url": url}), 422, "cannot use the URL", *words)
    assert_error(client.post("/images", json={"url": url}), 422, "cannot use the URL", *words)


# --- add, delete, persistence ------------------------------------------------------------------


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    state = wait_ready(f"{url}/health", proc, timeout, interval=0.2)
    if state == "exited":
        raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
    if state == "timeout":
        raise AssertionError(f"{url} did not become healthy in {timeout} s")


def _ids(client: httpx.Client, data: bytes, k: int = 5) -> list[int]:
    r = client.post("/search", files={"file": ("q.png", data)}, params={"k": k})
    assert r.status_code == 200, r.text
    return [x["id"] for x in r.json()["results"]]


def test_add_search_delete_and_restart(sample: Sample, tmp_path: Path) -> None:
    index = tmp_path / "index"
    shutil.copytree(sample.index, index)
    keep, drop = image_bytes(seed=1), image_bytes("JPEG", seed=2)
    server = start_asgi(create_app(index, _settings()))
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as c:
            added = c.post("/images", files={"file": ("keep me.png", keep, "image/png")})
            assert added.status_code == 201, added.text
            (kept,) = added.json()["images"]
            assert kept["created"] is True and kept["id"] == 45 and kept["width"] == 320
            assert kept["source"].startswith("uploads/") and kept["meta"] == {"filename": "keep me.png"}
            dropped = c.post("/images", files={"file": ("drop.jpg", drop)}).json()["images"][0]
            assert dropped["id"] == 46

            # visible to the next search, first with (near) identical features
            hits = c.post("/search", files={"file": ("q.png", keep)}, params={"k": 3}).json()["results"]
            assert hits[0]["id"] == kept["id"] and hits[0]["score"] > 0.99
            assert hits[0]["meta"] == {"filename": "keep me.png"}
            assert dropped["id"] in _ids(c, drop)
            assert c.get(f"/images/{kept['id']}").content == keep
            assert c.get(f"/images/{kept['id']}/thumbnail").status_code == 200
            assert c.get("/stats").json()["images"] == 47

            # adding the same bytes again is not a new image
            again = c.post("/images", files={"file": ("copy.png", keep)})
            assert again.status_code == 200 and again.json()["images"][0] == {**kept, "created": False}

            removed = c.delete(f"/images/{dropped['id']}")
            assert removed.status_code == 200 and removed.json() == {"id": dropped["id"], "removed": True}
            assert dropped["id"] not in _ids(c, drop, k=47)
            assert_error(c.get(f"/images/{dropped['id']}"), 404)
            assert_error(c.get(f"/images/{dropped['id']}/thumbnail"), 404)
            assert_error(c.post("/search", json={"id": dropped["id"]}), 404)
            assert_error(c.delete(f"/images/{dropped['id']}"), 404)
            assert c.get("/stats").json()["images"] == 46
    finally:
        server.stop()

    # restart: a new process, started with the seed's own command, on the same directory
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "IMAGEFINDER_INDEX": str(index)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app:app", "--fd", str(sock.fileno()),
                             "--log-level", "warning"], cwd=REPO / "api", env=env, pass_fds=[sock.fileno()],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sock.close()
    try:
        _wait_healthy(url, proc)
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            assert c.get("/stats").json()["images"] == 46
            assert _ids(c, keep, k=1) == [kept["id"]]
            assert dropped["id"] not in _ids(c, drop, k=46)
            assert_error(c.get(f"/images/{dropped['id']}"), 404)
            assert c.get(f"/images/{kept['id']}").content == keep
    finally:
        stop_children([proc], grace_s=15)


def test_add_by_url_records_its_origin(sample: Sample, tmp_path: Path, http_server) -> None:
    index = tmp_path / "index"
    shutil.copytree(sample.index, index)
    url = http_server.route("/add/new.png", image_bytes(seed=3), "image/png")
    server = start_asgi(create_app(index, _settings(allow_private_urls=True)))
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as c:
            r = c.post("/images", json={"url": url})
            assert r.status_code == 201, r.text
            image = r.json()["images"][0]
            assert image["meta"] == {"origin": url} and image["created"] is True
            assert _ids(c, image_bytes(seed=3), k=1) == [image["id"]]
            # several files in one request
            many = c.post("/images", files=[("file", ("a.png", image_bytes(seed=4))),
                                             ("file", ("b.png", image_bytes(seed=5)))])
            assert many.status_code == 201 and [i["created"] for i in many.json()["images"]] == [True, True]
            assert_error(c.post("/images", files={"file": ("x.txt", b"plain text")}), 415, "'x.txt'")
            assert_error(c.post("/images", json={"id": 3}), 422, "url")
    finally:
        server.stop()


# --- one command for both servers ---------------------------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serve_runs_api_and_web_and_ctrl_c_stops_both(sample: Sample, tmp_path: Path) -> None:
    import signal

    index = tmp_path / "index"
    shutil.copytree(sample.index, index)
    api_port, web_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imagefinder.serve", "--index", str(index),
                             "--api-port", str(api_port), "--web-port", str(web_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (_listening(api_port) and _listening(web_port)):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "API and web page did not both start within 90 s"
            time.sleep(0.2)
        stats = httpx.get(f"http://127.0.0.1:{web_port}/api/stats", timeout=30, trust_env=False)
        assert stats.status_code == 200 and stats.json()["images"] == 45
        page = httpx.get(f"http://127.0.0.1:{web_port}/", timeout=30, trust_env=False)
        assert page.status_code == 200 and "ImageFinder" in page.text
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
        assert not _listening(api_port) and not _listening(web_port), "both servers stop with the runner"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- settings and the default index ----------------------------------------------------------------


def test_settings_from_environment() -> None:
    from imagefinder.api import SettingsError

    s = Settings.from_env({"IMAGEFINDER_INDEX": "/data/idx", "IMAGEFINDER_MAX_UPLOAD_BYTES": "1000000",
                           "IMAGEFINDER_ALLOW_PRIVATE_URLS": "yes", "IMAGEFINDER_CORS_ORIGINS": "http://a, http://b"})
    assert s.index_dir == Path("/data/idx") and s.max_upload_bytes == 1_000_000 and s.allow_private_urls
    assert s.cors_origins == ("http://a", "http://b")
    default = Settings.from_env({})
    assert default.index_dir is None and default.max_upload_bytes == 20 * 1024 * 1024
    assert default.allow_private_urls is False
    with pytest.raises(SettingsError, match="IMAGEFINDER_ALLOW_PRIVATE_URLS"):
        Settings.from_env({"IMAGEFINDER_ALLOW_PRIVATE_URLS": "maybe"})
    with pytest.raises(SettingsError, match="IMAGEFINDER_MAX_UPLOAD_BYTES"):
        Settings.from_env({"IMAGEFINDER_MAX_UPLOAD_BYTES": "lots"})


def test_without_an_index_the_sample_is_built_and_served(imagefinder_cache: Path) -> None:
    # conftest points the user cache at a session temp dir, so this builds there, once
    server = start_asgi(create_app(settings=Settings(preload_model=False)))
    try:
        stats = httpx.get(f"{server.url}/stats", timeout=60, trust_env=False).json()
        assert stats["images"] == 45
        assert (imagefinder_cache / "sample" / "index" / "manifest.json").is_file()
    finally:
        server.stop()


def test_a_relative_index_path_works_for_uploads(sample: Sample, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(sample.index, tmp_path / "rel-index")
    monkeypatch.chdir(tmp_path)
    server = start_asgi(create_app("rel-index", _settings(preload_model=False)))
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as c:
            image = c.post("/images", files={"file": ("r.png", image_bytes(seed=6))}).json()["images"][0]
            assert image["source"].startswith("uploads/") and image["created"] is True
            assert _ids(c, image_bytes(seed=6), k=1) == [image["id"]]
            assert c.delete(f"/images/{image['id']}").status_code == 200
            assert not list((tmp_path / "rel-index" / "uploads").glob("*.png")), "the deleted upload's file is gone"
    finally:
        server.stop()

"""Tests for imagefinder.ingest.download (and the net layer under it) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from imagefinder.ingest.decode import sniff_image_type
from imagefinder.ingest.download import DownloadConfig, Downloader, FetchResult, cache_path, fetch
from imagefinder.ingest.sources import Item
from imagefinder.net import policy, retry
from imagefinder.pipeline import failure_reasons
from imagefinder.runners.local import LocalRunner, completion_map

BIG_BODY_SIZE = 50_000
SMALL_MAX_BYTES = 10_000
HTML = b"<!doctype html><html><body>Not an image</body></html>"


def _image_bytes(fmt: str, **save_args: object) -> bytes:
    """Encode a small real image with Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 90)).save(buf, format=fmt, **save_args)
    return buf.getvalue()


JPEG = _image_bytes("JPEG")
PNG = _image_bytes("PNG")
GIF = _image_bytes("GIF")
BIG_JPEG_LIKE = JPEG[:3] + b"\x00" * (BIG_BODY_SIZE - 3)


# --- server ----------------------------------------------------------------


class _State:
    """Per-path request counts and seen User-Agents, shared with handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.user_agents: dict[str, str] = {}

    def record(self, path: str, user_agent: str) -> int:
        with self.lock:
            self.counts[path] += 1
            self.user_agents[path] = user_agent
            return self.counts[path]

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts[path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State  # set on a subclass by the fixture

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest output quiet."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        nth = self.state.record(url.path, self.headers.get("User-Agent", ""))
        # The client hanging up early (timeout, size cap) is expected here.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(url.path, parse_qs(url.query), nth)

    def _route(self, path: str, query: dict[str, list[str]], nth: int) -> None:
        if path == "/img.jpg":
            self._send(200, JPEG, "image/jpeg")
        elif path == "/img.png":
            self._send(200, PNG, "image/png")
        elif path == "/octet":
            self._send(200, PNG, "application/octet-stream")
        elif path == "/no-type":
            self._send(200, GIF, None)
        elif path == "/delay":
            time.sleep(int(query["ms"][0]) / 1000)
            self._send(200, JPEG, "image/jpeg")
        elif path == "/missing":
            self._send(404, b"nope", "text/plain")
        elif path.startswith("/flaky/"):
            if nth == 1:
                self._send(500, b"oops", "text/plain")
            else:
                self._send(200, JPEG, "image/jpeg")
        elif path.startswith("/ratelimit/"):
            if nth == 1:
                self._send(429, b"slow down", "text/plain", {"Retry-After": "0"})
            else:
                self._send(200, PNG, "image/png")
        elif path.startswith("/ratelimit-long/"):
            self._send(429, b"slow down", "text/plain", {"Retry-After": "100"})
        elif path.startswith("/always500/"):
            self._send(500, b"oops", "text/plain")
        elif path.startswith("/slow/"):
            time.sleep(2)
            self._send(200, JPEG, "image/jpeg")
        elif path.startswith("/stall-body/"):  # answers, sends a little, then goes silent
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            self.wfile.write(JPEG[:64])
            self.wfile.flush()
            time.sleep(2)
        elif path == "/html":
            self._send(200, HTML, "text/html; charset=utf-8")
        elif path == "/fake.jpg":
            self._send(200, HTML, "image/jpeg")
        elif path == "/big-length":
            self._send(200, BIG_JPEG_LIKE, "image/jpeg")
        elif path == "/big-stream":
            self._send_chunked(BIG_JPEG_LIKE, "image/jpeg")
        elif path == "/redirect":
            self._send(302, b"", None, {"Location": "/img.jpg"})
        elif path == "/redirect-loop":
            self._send(302, b"", None, {"Location": "/redirect-loop"})
        else:
            self._send(404, b"unknown route", "text/plain")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_chunked(self, body: bytes, content_type: str, chunk: int = 4096) -> None:
        """Stream without Content-Length, so only the running byte count can stop it."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), chunk):
            part = body[start : start + chunk]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class _Server:
    def __init__(self, base: str, state: _State) -> None:
        self.base = base
        self.state = state

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield _Server(f"http://{host}:{port}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def refused_url() -> str:
    """A URL on a port that was just free, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/img.jpg"


@pytest.fixture()
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record back-off delays instead of waiting them out."""
    delays: list[float] = []
    monkeypatch.setattr(retry, "_sleep", delays.append)
    return delays


@pytest.fixture()
def config(tmp_path: Path) -> DownloadConfig:
    return DownloadConfig(cache_dir=tmp_path / "cache", timeout=5.0, workers=4)


def _unique(prefix: str, request: pytest.FixtureRequest) -> str:
    return f"{prefix}{request.node.name}"


def _cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.iterdir()) if cache_dir.exists() else []


# --- pure helpers ----------------------------------------------------------


def test_cache_path_is_sha256_of_url(tmp_path: Path) -> None:
    url = "https://example.com/a.jpg?x=1"
    expected = tmp_path / hashlib.sha256(url.encode()).hexdigest()
    assert cache_path(url, tmp_path) == expected
    assert cache_path(url + "2", tmp_path) != expected


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (JPEG, "jpeg"),
        (PNG, "png"),
        (GIF, "gif"),
        (_image_bytes("WEBP"), "webp"),
        (_image_bytes("BMP"), "bmp"),
        (_image_bytes("TIFF"), "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (HTML, None),
        (b"", None),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"\xff\xd8", None),
    ],
    ids=["jpeg", "png", "gif", "webp", "bmp", "tiff-le", "tiff-be"]
    + ["html", "empty", "riff-wave", "truncated-jpeg"],
)
def test_sniff_image_type(data: bytes, kind: str | None) -> None:
    assert sniff_image_type(data[:16]) == kind


def test_fetch_result_ok() -> None:
    assert FetchResult("u", Path("p"), None).ok
    assert not FetchResult("u", None, "HTTP 404 Not Found").ok


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://example.com/a.jpg", "unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("example.com/a.jpg", "unsupported URL scheme ''"),
        ("http:///a.jpg", "invalid URL: no host"),
    ],
)
def test_bad_urls_refused_without_network(
    url: str, error: str, config: DownloadConfig
) -> None:
    def no_network(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"network used for {request.url}")

    with httpx.Client(transport=httpx.MockTransport(no_network)) as client:
        result = fetch(url, config, client)
    assert result == FetchResult(url, None, error)


# --- success paths ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/img.jpg", JPEG),
        ("/img.png", PNG),
        ("/octet", PNG),
        ("/no-type", GIF),
        ("/redirect", JPEG),
    ],
    ids=["jpeg", "png", "octet-stream", "no-content-type", "redirect"],
)
def test_success_writes_identical_bytes(
    server: _Server, config: DownloadConfig, path: str, body: bytes
) -> None:
    url = server.url(path)
    result = fetch(url, config)
    assert result.ok, result.error
    assert result.from_cache is False
    assert result.path == cache_path(url, config.cache_dir)
    assert result.path.read_bytes() == body
    assert _cache_files(config.cache_dir) == [result.path]  # no temp leftovers


def test_user_agent_is_sent(server: _Server, config: DownloadConfig) -> None:
    assert fetch(server.url("/img.png"), config).ok
    assert server.state.user_agents["/img.png"] == config.user_agent


def test_caller_supplied_client_is_used(
    server: _Server, config: DownloadConfig
) -> None:
    seen: list[str] = []
    with httpx.Client(
        event_hooks={"request": [lambda r: seen.append(str(r.url))]}
    ) as client:
        result = fetch(server.url("/img.jpg"), config, client)
    assert result.ok
    assert seen == [server.url("/img.jpg")]


def test_second_run_is_served_from_cache_with_zero_requests(
    server: _Server, config: DownloadConfig
) -> None:
    urls = [server.url(p) for p in ("/img.jpg", "/img.png", "/redirect", "/octet")]
    with Downloader(config) as downloader:
        first = [downloader.fetch(url) for url in urls]
        assert all(r.ok and not r.from_cache for r in first), first
        before = server.state.total()
        second = [downloader.fetch(url) for url in urls]
    assert server.state.total() == before
    assert [r.url for r in second] == urls
    assert all(r.ok and r.from_cache for r in second)
    assert [r.path for r in second] == [r.path for r in first]


def test_cache_hit_needs_no_server(refused_url: str, config: DownloadConfig) -> None:
    path = cache_path(refused_url, config.cache_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(JPEG)
    result = fetch(refused_url, config)
    assert result == FetchResult(refused_url, path, None, from_cache=True)


# --- retries ---------------------------------------------------------------


def test_500_then_success_is_retried(
    server: _Server,
    config: DownloadConfig,
    sleeps: list[float],
    request: pytest.FixtureRequest,
) -> None:
    path = _unique("/flaky/", request)
    result = fetch(server.url(path), config)
    assert result.ok, result.error
    assert result.path is not None and result.path.read_bytes() == JPEG
    assert server.state.count(path) == 2
    assert sleeps == [0.5]


def test_429_honours_retry_after(
    server: _Server,
    config: DownloadConfig,
    sleeps: list[float],
    request: pytest.FixtureRequest,
) -> None:
    path = _unique("/ratelimit/", request)
    result = fetch(server.url(path), config)
    assert result.ok, result.error
    assert result.path is not None and result.path.read_bytes() == PNG
    assert server.state.count(path) == 2
    assert sleeps == [0.0]


def test_a_retry_after_beyond_the_cap_fails_at_once(
    server: _Server, tmp_path: Path, sleeps: list[float], request: pytest.FixtureRequest
) -> None:
    # A server asking for 100 s (or 3600) is answered by recording the failure now: waiting the
    # 30 s cap and asking again only held a worker (and, in input order, the whole run) for nothing.
    path = _unique("/ratelimit-long/", request)
    config = DownloadConfig(cache_dir=tmp_path, retries=3)
    result = fetch(server.url(path), config)
    assert result.error == "HTTP 429 Too Many Requests: Retry-After 100s, longer than the 30s a fetch waits"
    assert sleeps == []
    assert server.state.count(path) == 1


def test_always_500_backs_off_exponentially_then_fails(
    server: _Server, tmp_path: Path, sleeps: list[float], request: pytest.FixtureRequest
) -> None:
    path = _unique("/always500/", request)
    config = DownloadConfig(cache_dir=tmp_path, retries=6)
    result = fetch(server.url(path), config)
    assert result == FetchResult(
        server.url(path), None, "HTTP 500 Internal Server Error"
    )
    assert server.state.count(path) == 7
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_404_is_not_retried_and_not_cached(
    server: _Server, config: DownloadConfig, sleeps: list[float]
) -> None:
    url = server.url("/missing")
    before = server.state.count("/missing")
    first = fetch(url, config)
    second = fetch(url, config)
    assert first.error == second.error == "HTTP 404 Not Found"
    assert first.path is None and not first.ok
    assert (
        server.state.count("/missing") == before + 2
    )  # one request each, re-run retries
    assert sleeps == []
    assert _cache_files(config.cache_dir) == []


def test_connection_refused(
    refused_url: str, config: DownloadConfig, sleeps: list[float]
) -> None:
    result = fetch(refused_url, config)
    assert result.error is not None
    assert result.error.startswith("connection failed: "), result.error
    assert len(sleeps) == config.retries  # transport errors are retried


def test_slow_server_times_out_within_wall_clock_cap(
    server: _Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = _unique("/slow/", request)
    config = DownloadConfig(cache_dir=tmp_path, timeout=0.5)
    started = time.monotonic()
    result = fetch(server.url(path), config)
    elapsed = time.monotonic() - started
    assert result.error == "timeout after 0.5s"
    assert elapsed < 3 * config.timeout + 0.5  # per-URL cap of 3x timeout (+ slack)
    assert 1 <= server.state.count(path) <= 3  # retried, but the cap stopped it
    assert _cache_files(tmp_path) == []


def test_a_body_that_stalls_is_not_retried(
    server: _Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # A peer slow to answer is tried again (above); one that answered and then went silent for a
    # whole timeout is given up at once instead of holding a worker until the deadline.
    path = _unique("/stall-body/", request)
    config = DownloadConfig(cache_dir=tmp_path, timeout=0.5)
    result = fetch(server.url(path), config)
    assert result.error == "timeout after 0.5s"
    assert server.state.count(path) == 1
    assert _cache_files(tmp_path) == []


def test_redirect_loop_stops(
    server: _Server, config: DownloadConfig, sleeps: list[float]
) -> None:
    before = server.state.count("/redirect-loop")
    result = fetch(server.url("/redirect-loop"), config)
    assert result.error == "too many redirects (more than 5)"
    assert server.state.count("/redirect-loop") - before == 6  # first hop + 5 redirects
    assert sleeps == []


# --- content checks --------------------------------------------------------


def test_html_content_type_rejected(server: _Server, config: DownloadConfig) -> None:
    result = fetch(server.url("/html"), config)
    assert result.error == "not an image: content-type text/html"
    assert _cache_files(config.cache_dir) == []


def test_html_disguised_as_jpeg_caught_by_magic_bytes(
    server: _Server, config: DownloadConfig
) -> None:
    result = fetch(server.url("/fake.jpg"), config)
    assert result.error == "not an image: unrecognised file signature"
    assert _cache_files(config.cache_dir) == []


@pytest.mark.parametrize(
    ("path", "error"),
    [
        (
            "/big-length",
            (
                f"too large: Content-Length {BIG_BODY_SIZE} "
                f"exceeds {SMALL_MAX_BYTES} bytes"
            ),
        ),
        ("/big-stream", f"too large: more than {SMALL_MAX_BYTES} bytes"),
    ],
    ids=["content-length", "chunked"],
)
def test_oversize_body_refused(
    server: _Server, tmp_path: Path, path: str, error: str
) -> None:
    config = DownloadConfig(cache_dir=tmp_path / "cache", max_bytes=SMALL_MAX_BYTES)
    result = fetch(server.url(path), config)
    assert result.error == error
    assert _cache_files(config.cache_dir) == []  # temp file removed too


def test_size_cap_allows_body_exactly_at_limit(server: _Server, tmp_path: Path) -> None:
    config = DownloadConfig(cache_dir=tmp_path, max_bytes=BIG_BODY_SIZE)
    for path in ("/big-length", "/big-stream"):
        result = fetch(server.url(path), config)
        assert result.ok, result.error
        assert result.path is not None and result.path.read_bytes() == BIG_JPEG_LIKE


# --- a crawl: the downloader under the local runner --------------------------------------


def test_crawl_numbers_items_in_input_order_and_reports_each_failure(
    server: _Server, config: DownloadConfig, refused_url: str, sleeps: list[float], embedder
) -> None:
    # Early URLs are slowest, so completion order is not input order: they are handed back as
    # they finish, and their ids (the index's row order) are still their input positions.
    urls = [server.url(f"/delay?ms={ms}") for ms in (300, 200, 100)] + [
        server.url("/missing"),
        server.url("/img.png"),
        server.url("/html"),
        server.url("/fake.jpg"),
        refused_url,
        "ftp://example.com/x.jpg",
        server.url("/redirect"),
    ]
    seen: list = []
    raw = LocalRunner(workers=4).run([Item(u) for u in urls], 0, embedder, config, 4, seen.append, False)
    records = sorted((x.record for x in seen), key=lambda r: r.id)
    assert [r.id for r in records] == list(range(len(urls))), "every item handed back once, numbered by input"
    assert [r.source for r in records] == urls
    assert [r.status == "ok" for r in records] == [True, True, True, False, True, False, False, False, False, True]
    assert failure_reasons(r.error for r in records if r.status == "failed") == {
        "HTTP 404 Not Found": 1,
        "not an image": 2,
        "connection failed": 1,
        "unsupported URL scheme 'ftp'": 1,
    }
    assert (raw[[i for i, r in enumerate(records) if r.status == "ok"]] != 0).any(axis=1).all()
    for record in records:
        if record.status == "ok":
            assert record.cached_path == str(cache_path(record.source, config.cache_dir))


def test_crawl_bounds_in_flight_work() -> None:
    pulled = 0

    def stream(n: int) -> Iterator[int]:
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield i

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = completion_map(lambda i: (time.sleep(0.002), i)[1], stream(40), pool, ahead=4)
        first = next(results)
        assert pulled <= 4, "no more than `ahead` items are taken from the stream before the first result"
        rest = list(results)
    assert sorted([first, *rest]) == list(range(40))  # every result once, in completion order


def test_downloader_fetch_single(server: _Server, config: DownloadConfig) -> None:
    with Downloader(config) as downloader:
        result = downloader.fetch(server.url("/img.jpg"))
        again = downloader.fetch(server.url("/img.jpg"))
    assert result.ok and not result.from_cache
    assert again.ok and again.from_cache


def test_downloader_rejects_zero_workers(tmp_path: Path) -> None:
    # Refuse up front rather than build a pool that can never run anything.
    with pytest.raises(ValueError, match="workers"):
        Downloader(DownloadConfig(cache_dir=tmp_path, workers=0))


def test_a_checked_crawl_connects_to_the_vetted_address(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With allow_private off, the host is resolved once and the request goes to that address
    (as the API's fetch does): `crawl.test` exists only in this fake resolver, so a second,
    real lookup by the HTTP client would fail."""
    lookups: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(policy, "resolve_host", resolve)
    config = DownloadConfig(cache_dir=tmp_path, allow_private=False, allowed_private=("127.0.0.1",))
    url = server.url("/img.jpg").replace("127.0.0.1", "crawl.test")
    result = fetch(url, config)
    assert result.ok, result.error
    assert lookups == ["crawl.test"]
    refused = fetch(url, DownloadConfig(cache_dir=tmp_path / "other", allow_private=False))
    assert refused.error == (
        "refused: private address: 'crawl.test' resolves to 127.0.0.1, a loopback address (allow_private is off)"
    )

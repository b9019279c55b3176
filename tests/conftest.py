"""Shared fixtures: the UKBench subset, one session-wide model cache, a small index, a real HTTP server.

Everything expensive (the one-off ONNX export of efficientnet-lite0, loading the model, embedding
the 40-image UKBench subset) happens once per session; tests share the results read-only.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

UKBENCH = Path(__file__).resolve().parents[2] / "shared/data/ukbench1000"
SMALL_GROUPS = 10  # the session index holds the first 10 UKBench groups = 40 images
REPO = Path(__file__).resolve().parents[1]


# --- model / download cache ------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def imagefinder_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point $IMAGEFINDER_CACHE at a session temp dir so no test reads or writes ~/.cache.

    Set in os.environ (not monkeypatch, which is function-scoped) so that CLI subprocesses
    inherit it too; the previous value is restored at the end of the session. The ONNX export
    of the model lands here on first use (a few seconds, once per session).
    """
    cache = tmp_path_factory.mktemp("imagefinder-cache")
    old = os.environ.get("IMAGEFINDER_CACHE")
    os.environ["IMAGEFINDER_CACHE"] = str(cache)
    try:
        yield cache
    finally:
        if old is None:
            os.environ.pop("IMAGEFINDER_CACHE", None)
        else:
            os.environ["IMAGEFINDER_CACHE"] = old


@pytest.fixture(scope="session")
def embedder(imagefinder_cache: Path):
    """The default backbone, exported and loaded once, shared by every in-process build."""
    from imagefinder.embed import Embedder

    return Embedder("efficientnet-lite0")


# --- UKBench -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ukbench_dir() -> Path:
    if not (UKBENCH / "images").is_dir() or not (UKBENCH / "groundtruth.csv").is_file():
        pytest.skip(f"UKBench benchmark data not found at {UKBENCH} (needs images/ and groundtruth.csv)")
    return UKBENCH


def ukbench_image(ukbench_dir: Path, n: int) -> Path:
    return ukbench_dir / "images" / f"ukbench{n:05d}.jpg"


@pytest.fixture(scope="session")
def ukbench_groups(ukbench_dir: Path) -> dict[str, int]:
    """filename -> group id, read from the benchmark's own groundtruth.csv."""
    with open(ukbench_dir / "groundtruth.csv", newline="") as f:
        return {row["filename"]: int(row["group_id"]) for row in csv.DictReader(f)}


@dataclass
class BuiltIndex:
    path: Path
    sources: list[str]  # absolute image paths, in id order
    groups: list[int]  # group of each id
    report: object


@pytest.fixture(scope="session")
def small_index(
    ukbench_dir: Path, ukbench_groups: dict[str, int], embedder, tmp_path_factory: pytest.TempPathFactory
) -> BuiltIndex:
    """The first 40 UKBench images (10 groups of 4) indexed with the default model."""
    from imagefinder import build_index

    images = tmp_path_factory.mktemp("ukbench40")
    for n in range(4 * SMALL_GROUPS):
        shutil.copyfile(ukbench_image(ukbench_dir, n), images / f"ukbench{n:05d}.jpg")
    out = tmp_path_factory.mktemp("small-index-parent") / "index"
    report = build_index([str(images)], out, embedder=embedder, workers=4)
    sources = [str((images / f"ukbench{n:05d}.jpg").resolve()) for n in range(4 * SMALL_GROUPS)]
    groups = [ukbench_groups[Path(s).name] for s in sources]
    return BuiltIndex(out, sources, groups, report)


# --- a real HTTP server -----------------------------------------------------------------------


@dataclass
class Route:
    body: bytes = b""
    content_type: str | None = "application/octet-stream"
    status: int = 200
    delay: float = 0.0  # seconds to sleep before answering (a slow server)
    headers: dict[str, str] = field(default_factory=dict)


class HTTPTestServer:
    """Routing table + per-path request counter, shared with the server's handler threads."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.base = ""

    def route(self, path: str, body: bytes = b"", content_type: str | None = "image/jpeg", status: int = 200,
              delay: float = 0.0, headers: dict[str, str] | None = None) -> str:
        """Register `path` and return its full URL."""
        assert path.startswith("/")
        with self.lock:
            self.routes[path] = Route(body, content_type, status, delay, dict(headers or {}))
        return self.url(path)

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts[path]

    def lookup(self, path: str) -> Route | None:
        with self.lock:
            self.counts[path] += 1
            return self.routes.get(path)


def _handler_for(server: HTTPTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            route = server.lookup(path)
            if route is None:
                route = Route(b"unknown route", "text/plain", 404)
            if route.delay:
                time.sleep(route.delay)
            # The client hanging up early (timeout, size cap) is expected here.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(route.status)
                if route.content_type is not None:
                    self.send_header("Content-Type", route.content_type)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

    return Handler


@pytest.fixture(scope="session")
def http_server() -> Iterator[HTTPTestServer]:
    server = HTTPTestServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(server))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    server.base = f"http://{host}:{port}"
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def rows_by_source(index: Path) -> dict[str, dict]:
    """Every row of an index's id table (failed ones included), by source."""
    from imagefinder.index import Store

    store = Store(index)
    try:
        rows = store.records(list(range(store.manifest.counts.items)))
    finally:
        store.close()
    return {row["source"]: row for row in rows.values()}


# --- running the CLI ----------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300):
    """`python -m imagefinder.cli ARGS` in a subprocess (inherits $IMAGEFINDER_CACHE)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "imagefinder.cli", *map(str, args)], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="session")
def cli():
    """Run the CLI in a subprocess: cli("search", DIR, QUERY, "--json") -> CompletedProcess."""
    return run_cli

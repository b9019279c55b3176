"""Hardening, round two (issue 14, items 1, 3, 7, 8): what one request may cost the server.

All against the real API on 127.0.0.1: a server *process* (`python -m imagefinder.api`) where
its own memory or its process lifetime is what is measured, else uvicorn in a thread.

* Decode memory: ten 7999x7999 1-bit PNGs (~8 KB each) in one POST /images, then 8 such
  requests at once; the server's peak RSS (VmHWM) stays within 1 GB and 2 GB.
* Slow peers: 45 URL searches against a server trickling 1 byte / 2 s leave /health answering;
  slow clients (headers, body) are cut off by the server.
* A served index refuses `imagefinder index --out` into it (CLI subprocess); once the server
  has gone, the rebuild works.
* Orphan uploads are swept at start-up; no DNS answers, server paths or Host headers in answers;
  images are served with nosniff; the pixel limit quoted by a 413 is the one /stats reports.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from imagefinder.api import Settings, create_app
from imagefinder.api.testing import free_port, start_asgi
from imagefinder.serve import wait_ready

GB = 1024 ** 3
BOMB_SIDE = 7999  # 64.0 M pixels: just under the default 64 M limit
BOMBS_PER_REQUEST = 10
CONCURRENT = 8
SLOW_FETCHES = 45
REQUEST_TIMEOUT = 300.0  # only there to turn a hang into a failure


# --- helpers ---------------------------------------------------------------------------------


def _copy_index(small_index, dest: Path) -> Path:
    shutil.copytree(small_index.path, dest)
    return dest


@contextmanager
def api_process(index: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m imagefinder.api --index INDEX` on a free 127.0.0.1 port, stopped (SIGTERM) afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imagefinder.api", "--index", str(index), "--port", str(port),
                             "--log-level", "warning", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        state = wait_ready(f"{url}/health", proc, timeout=120)
        assert state == "ready", proc.stderr.read() if proc.poll() is not None else f"API {state}"
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def bomb_png(variant: int) -> bytes:
    """A 7999x7999 1-bit PNG of a few KB (a different line per variant, so each is a new image)."""
    img = Image.new("1", (BOMB_SIDE, BOMB_SIDE))
    ImageDraw.Draw(img).line((variant * 97 % BOMB_SIDE, 0, BOMB_SIDE - 1, BOMB_SIDE - 1), fill=1, width=9)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data (a header-only bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bombs() -> list[bytes]:
    return [bomb_png(n) for n in range(BOMBS_PER_REQUEST)]


def _files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"bomb{n}.png", data, "image/png")) for n, data in enumerate(images)]


# --- item 1: decode memory -------------------------------------------------------------------


def test_decode_memory_is_bounded_for_one_request_and_for_eight_at_once(
        small_index, bombs: list[bytes], tmp_path: Path) -> None:
    assert max(len(b) for b in bombs) < 64 * 1024  # tiny bodies, huge images: the finding
    index = _copy_index(small_index, tmp_path / "idx")
    with api_process(index) as (url, proc), httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        start = peak_rss(proc.pid)
        r = client.post("/images", files=_files(bombs))
        assert r.status_code == 201, r.text
        assert len({i["id"] for i in r.json()["images"]}) == BOMBS_PER_REQUEST
        assert all(i["width"] == BOMB_SIDE == i["height"] for i in r.json()["images"])
        single = peak_rss(proc.pid)
        print(f"\npeak RSS: {start / 2**20:.0f} MB at start, {single / 2**20:.0f} MB after one request of "
              f"{BOMBS_PER_REQUEST} {BOMB_SIDE}x{BOMB_SIDE} 1-bit PNGs")
        assert single <= 1 * GB, f"one request took the server to {single / 2**20:.0f} MB"

        # 8 at once (the same images: each request still checks, i.e. decodes, all ten of them)
        with ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(pool.map(lambda _: client.post("/images", files=_files(bombs)), range(CONCURRENT)))
        assert [a.status_code for a in answers] == [200] * CONCURRENT, [a.text for a in answers if a.status_code != 200]
        many = peak_rss(proc.pid)
        print(f"peak RSS after {CONCURRENT} such requests at once: {many / 2**20:.0f} MB")
        assert many <= 2 * GB, f"{CONCURRENT} requests took the server to {many / 2**20:.0f} MB"
        # one search of a single bomb, the "8.6 KB file" case, stays in the same budget
        r = client.post("/search", files={"file": ("q.png", bombs[0], "image/png")}, params={"k": 1})
        assert r.status_code == 200, r.text
        assert r.json()["query"]["width"] == BOMB_SIDE
        assert peak_rss(proc.pid) <= 2 * GB


def test_an_upload_is_decoded_once(small_index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's decode is what gets embedded: `add` does not open the file again."""
    from imagefinder.api import uploads
    from imagefinder.ingest import stages

    calls: Counter[str] = Counter()
    for module in (uploads, stages):
        original = module.open_image

        def counted(*args, _original=original, _name=module.__name__, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, "open_image", counted)
    index = _copy_index(small_index, tmp_path / "idx")
    img = Image.new("RGB", (640, 480), (200, 30, 30))
    ImageDraw.Draw(img).ellipse((100, 100, 400, 300), fill=(10, 200, 10))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    server = start_asgi(create_app(index, Settings(cors_origins=())))
    try:
        r = httpx.post(f"{server.url}/images", files={"file": ("e.png", buf.getvalue(), "image/png")}, timeout=120)
        assert r.status_code == 201, r.text
        found = httpx.post(f"{server.url}/search", files={"file": ("q.png", buf.getvalue())}, timeout=120)
        assert found.json()["results"][0]["id"] == r.json()["images"][0]["id"]
    finally:
        server.stop()
    assert calls == {"imagefinder.api.uploads": 2}, calls  # the add's check and the search's; none in `add`


def test_the_413_of_a_header_only_bomb_quotes_the_limit_stats_reports(small_index, tmp_path: Path) -> None:
    index = _copy_index(small_index, tmp_path / "idx")
    server = start_asgi(create_app(index, Settings(cors_origins=())))
    try:
        limit = httpx.get(f"{server.url}/stats").json()["max_pixels"]
        # 81 M pixels (over our limit) and 400 M (so large that Pillow itself refuses to open it)
        for side in (9000, 20000):
            r = httpx.post(f"{server.url}/search", files={"file": ("b.png", header_only_png(side, side))})
            assert r.status_code == 413, r.text
            assert f"{limit:,}" in r.json()["detail"], (limit, r.json()["detail"])
            assert "256,000,000" not in r.json()["detail"] and "128,000,000" not in r.json()["detail"]
    finally:
        server.stop()


# --- item 3: slow peers and slow clients -----------------------------------------------------


@contextmanager
def trickling_server(interval: float = 2.0) -> Iterator[str]:
    """A 127.0.0.1 server answering every request with 200 and then 1 byte every `interval` seconds."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
                while not stop.wait(interval):
                    conn.sendall(b"\x89")
            except OSError:
                pass  # the client gave up: what the API must do

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_slow_peers_do_not_stall_health(small_index, tmp_path: Path) -> None:
    index = _copy_index(small_index, tmp_path / "idx")
    with (trickling_server() as slow,
          api_process(index, "--allow-private-urls", env={"IMAGEFINDER_FETCH_TIMEOUT": "5"}) as (url, _proc),
          ThreadPoolExecutor(SLOW_FETCHES) as pool):
        started = time.monotonic()
        futures = [pool.submit(httpx.post, f"{url}/search", json={"url": f"{slow}/img{n}.png"},
                               timeout=REQUEST_TIMEOUT) for n in range(SLOW_FETCHES)]
        time.sleep(1.0)  # every search has been sent
        latencies = []
        for _ in range(8):
            t = time.monotonic()
            assert httpx.get(f"{url}/health", timeout=60).status_code == 200
            latencies.append(time.monotonic() - t)
            time.sleep(0.5)
        answers = [f.result() for f in futures]
        took = time.monotonic() - started
    codes = Counter(a.status_code for a in answers)
    print(f"\n/health during {SLOW_FETCHES} slow URL searches: max {max(latencies) * 1000:.0f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; answers {dict(codes)} in {took:.1f} s")
    assert max(latencies) < 5.0, latencies  # the goal is <= 1 s; loose for a loaded machine
    assert set(codes) <= {429, 503, 422}, codes  # refused at once, or timed out by the fetch deadline
    assert codes[429] + codes[503] >= SLOW_FETCHES - 8, codes  # at most one host's share was let through
    refused = next(a for a in answers if a.status_code in (429, 503))
    assert "try again" in refused.json()["detail"] and refused.headers.get("retry-after")


def test_fetch_pool_limits_per_host_and_overall() -> None:
    import asyncio

    from imagefinder.api.fetching import FetchPool

    pool = FetchPool(workers=2, per_host=2)
    release = threading.Event()

    async def scenario() -> list[object]:
        async def one(host: str) -> object:
            try:
                return await pool.run(f"http://{host}/x.jpg", release.wait)
            except Exception as exc:  # noqa: BLE001 - the HTTPException is the result
                return getattr(exc, "status_code", exc)
        tasks = [asyncio.create_task(one(h)) for h in ("a.test", "a.test", "a.test", "b.test", "c.test", "d.test")]
        await asyncio.sleep(0.2)
        release.set()
        return list(await asyncio.gather(*tasks))

    try:
        results = asyncio.run(scenario())
    finally:
        pool.close()
    # a.test: 2 admitted, the 3rd is 429; b and c fill the 2 waiting places; d finds the pool full: 503
    assert results == [True, True, 429, True, True, 503], results


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        pass
    return True, got


SLOW_CLIENTS = 30  # of each kind: trickling headers, silent, trickling body


def test_slow_clients_are_timed_out(small_index, tmp_path: Path) -> None:
    index = _copy_index(small_index, tmp_path / "idx")
    env = {"IMAGEFINDER_HEADER_TIMEOUT": "2", "IMAGEFINDER_BODY_TIMEOUT": "2"}
    with api_process(index, env=env) as (url, _proc):
        port = int(url.rsplit(":", 1)[1])

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port))
        # slow headers (a byte a second, never finishing), connections that send nothing at all,
        # and bodies that never arrive
        headers = [connect() for _ in range(SLOW_CLIENTS)]
        silent = [connect() for _ in range(SLOW_CLIENTS)]
        bodies = [connect() for _ in range(SLOW_CLIENTS)]
        started = time.monotonic()
        for sock in headers:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for sock in bodies:
            sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"id\"")
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(1.0):
                for sock in headers:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X")
        threading.Thread(target=trickle, daemon=True).start()
        try:
            assert all(_closed_within(sock, 15)[0] for sock in headers), "a client trickling its headers kept its connection"
            header_s = time.monotonic() - started
            assert all(_closed_within(sock, 15)[0] for sock in silent), "a silent connection was kept open"
            for sock in bodies:
                closed, answer = _closed_within(sock, 15)
                assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b"did not arrive within 2 s" in answer
        finally:
            stop.set()
            for sock in headers + silent + bodies:
                sock.close()
        assert httpx.get(f"{url}/health").status_code == 200
    print(f"\n{SLOW_CLIENTS} slow-header connections closed after {header_s:.1f} s (IMAGEFINDER_HEADER_TIMEOUT=2), "
          f"{SLOW_CLIENTS} silent ones closed, {SLOW_CLIENTS} slow bodies answered 408")


# --- item 7: a served index refuses a rebuild ------------------------------------------------


def _index_cli(sources: list[Path], out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagefinder.cli", "index", *map(str, sources), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)


def test_a_served_index_refuses_a_rebuild_and_keeps_every_acknowledged_add(
        small_index, ukbench_dir: Path, tmp_path: Path) -> None:
    index = _copy_index(small_index, tmp_path / "idx")
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in range(300, 304):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{n:05d}.jpg", photos / f"p{n}.jpg")
    added: list[int] = []
    with api_process(index) as (url, proc), httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        def writer() -> None:  # adds while the CLI tries to rebuild
            for n in range(320, 332):
                data = (ukbench_dir / "images" / f"ukbench{n:05d}.jpg").read_bytes()
                r = client.post("/images", files={"file": (f"u{n}.jpg", data, "image/jpeg")})
                assert r.status_code == 201, r.text
                added.append(r.json()["images"][0]["id"])
        thread = threading.Thread(target=writer)
        thread.start()
        refused = _index_cli([photos], index)
        thread.join(timeout=REQUEST_TIMEOUT)
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert str(index) in refused.stderr and "being served" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert added, "the API must have acknowledged adds meanwhile"
        for image_id in added:  # nothing acknowledged was lost, nothing 500'd
            assert client.get(f"/images/{image_id}/info").status_code == 200
        assert client.get("/stats").json()["images"] == 40 + len(added)
    # the server has gone (lock released at exit): the rebuild now proceeds; a kill -9 releases it too
    with api_process(index) as (_url, proc):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    rebuilt = _index_cli([photos], index)
    assert rebuilt.returncode == 0, rebuilt.stderr


# --- item 8: smaller ones --------------------------------------------------------------------


def _aged(path: Path, hours: float = 2.0) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def test_orphan_uploads_are_swept_at_start_up(small_index, tmp_path: Path) -> None:
    index = _copy_index(small_index, tmp_path / "idx")
    img = Image.new("RGB", (300, 200), (20, 60, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    server = start_asgi(create_app(index, Settings(cors_origins=())))
    try:
        r = httpx.post(f"{server.url}/images", files={"file": ("kept.png", buf.getvalue())}, timeout=120)
        assert r.status_code == 201, r.text
    finally:
        server.stop()
    uploads = index / "uploads"
    (kept,) = uploads.iterdir()
    orphan = uploads / ("ab" * 32 + ".png")  # what a kill -9 between saving and committing leaves
    orphan.write_bytes(buf.getvalue())
    young = uploads / ("cd" * 32 + ".png")  # another worker's add in flight: not ours to remove
    young.write_bytes(buf.getvalue())
    _aged(kept)
    _aged(orphan)
    server = start_asgi(create_app(index, Settings(cors_origins=())))
    server.stop()
    assert kept.exists() and young.exists()
    assert not orphan.exists()


@pytest.fixture(scope="module")
def served(small_index, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index = _copy_index(small_index, tmp_path_factory.mktemp("served") / "idx")
    server = start_asgi(create_app(index, Settings(cors_origins=())))
    try:
        yield server.url
    finally:
        server.stop()


def test_refusals_do_not_say_what_a_name_resolves_to(served: str) -> None:
    port = served.rsplit(":", 1)[1]
    r = httpx.post(f"{served}/search", json={"url": f"http://localhost:{port}/x.jpg"})
    assert r.status_code == 422 and "address not allowed" in r.json()["detail"], r.text
    assert "127.0.0.1" not in r.text and "::1" not in r.text


def test_folder_indexed_images_show_no_server_paths(served: str, small_index) -> None:
    r = httpx.post(f"{served}/search", json={"id": 0}, params={"k": 3})
    assert r.status_code == 200, r.text
    for hit in r.json()["results"]:
        assert hit["source"] == Path(small_index.sources[hit["id"]]).name
    assert str(Path(small_index.sources[0]).parent) not in r.text
    assert httpx.get(f"{served}/images/0/info").json()["source"] == "ukbench00000.jpg"


def test_result_urls_never_echo_the_host_header(served: str, small_index, tmp_path: Path) -> None:
    r = httpx.post(f"{served}/search", json={"id": 0}, params={"k": 3}, headers={"Host": "evil.example"})
    assert r.status_code == 200, r.text
    for hit in r.json()["results"]:
        assert hit["thumbnail_url"] == f"images/{hit['id']}/thumbnail"
        assert hit["image_url"] == f"images/{hit['id']}"
    assert "evil.example" not in r.text
    index = _copy_index(small_index, tmp_path / "idx")
    server = start_asgi(create_app(index, Settings(cors_origins=(), public_url="https://img.example.org/find")))
    try:
        r = httpx.post(f"{server.url}/search", json={"id": 0}, params={"k": 1}, headers={"Host": "evil.example"})
        assert r.json()["results"][0]["thumbnail_url"] == "https://img.example.org/find/images/0/thumbnail"
    finally:
        server.stop()


def test_images_are_served_with_nosniff_and_their_decoded_type(small_index, tmp_path: Path) -> None:
    index = _copy_index(small_index, tmp_path / "idx")
    gif = io.BytesIO()
    Image.new("P", (64, 64), 3).save(gif, "GIF")
    polyglot = gif.getvalue() + b"<html><script>alert(document.domain)</script></html>"
    server = start_asgi(create_app(index, Settings(cors_origins=())))
    try:
        r = httpx.post(f"{server.url}/images", files={"file": ("page.html", polyglot, "text/html")}, timeout=120)
        assert r.status_code == 201, r.text
        image_id = r.json()["images"][0]["id"]
        for path in (f"/images/{image_id}", f"/images/{image_id}/thumbnail", "/images/0"):
            got = httpx.get(f"{server.url}{path}")
            assert got.status_code == 200
            assert got.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(f"{server.url}/images/{image_id}").headers["content-type"] == "image/gif"
    finally:
        server.stop()

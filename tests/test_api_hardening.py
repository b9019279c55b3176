"""Hardening of the REST API: concurrent reads and writes, path traversal, body limits, error bodies.

Everything runs against the real API on a real socket on 127.0.0.1, over copies of the
session's small UKBench index (40 real photos), with real UKBench photos as uploads.

* Concurrency: searcher clients (by upload and by id) run while writer clients add and delete
  images, for a bounded time and a bounded number of requests; then the ledger of what every
  client saw is checked (no 5xx, unique ids, nothing lost, deletions final, additions
  findable), and checked again after a restart on the same directory.
* Path traversal in ids and upload file names never reaches the filesystem.
* Upload limits are enforced from the headers (Content-Length) or while a chunked body
  streams, without waiting for the rest of the body (raw sockets: the test never sends it).
* No error body ever carries a stack trace or a server path, internal errors included.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagefinder.api import Settings, create_app
from imagefinder.api.testing import ServerThread, start_asgi

REPO = Path(__file__).resolve().parents[1]
SEARCHERS, WRITERS = 4, 2
LOAD_SECONDS = 15.0
MAX_SEARCHES_PER_CLIENT = 1500  # bounds the request count even on a fast machine
ADD_POOL = range(100, 260)  # UKBench photos not in the 40-image index (ids 0..39 are images 0..39)
INITIAL_VICTIMS = 4  # initial images each writer deletes
SOCKET_TIMEOUT = 10.0  # generous: only there to turn a hang into a failure
UPLOAD_NAME = re.compile(r"uploads/[0-9a-f]{64}\.jpg")


def _settings(**changes) -> Settings:
    base = {"max_upload_bytes": 2 * 1024 * 1024, "cors_origins": ()}
    return Settings(**{**base, **changes})


def _photo(ukbench_dir: Path, n: int) -> Path:
    return ukbench_dir / "images" / f"ukbench{n:05d}.jpg"


def _copy_index(small_index, dest: Path) -> Path:
    shutil.copytree(small_index.path, dest)
    return dest


# --- concurrency --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What every client did and saw, shared by the client threads under one lock."""

    initial: dict[int, Path]  # id -> photo, as indexed
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    expected_4xx: Counter = field(default_factory=Counter)  # legitimate refusals, by kind
    errors: list[str] = field(default_factory=list)  # 5xx, exceptions, unexpected answers
    add_ids: list[int] = field(default_factory=list)  # every id an add returned, repeats kept
    added: dict[int, bytes] = field(default_factory=dict)  # id -> the uploaded bytes
    kept: list[int] = field(default_factory=list)  # added ids that are never deleted
    deleting: set[int] = field(default_factory=set)  # DELETE sent
    deleted_at: dict[int, float] = field(default_factory=dict)  # DELETE answered 200 (monotonic time)
    searches: list[tuple[float, list[int]]] = field(default_factory=list)  # (sent at, result ids)
    rank1_checks: int = 0
    writes_ended: list[float] = field(default_factory=list)  # when each writer finished

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    def call(self, client: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response | None:
        try:
            r = client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.error(f"{method} {url}: {type(exc).__name__}: {exc}")
            return None
        with self.lock:
            self.requests += 1
            self.statuses[r.status_code] += 1
        if r.status_code >= 500:
            self.error(f"{method} {url}: HTTP {r.status_code} {r.text[:300]}")
        return r

    def deleted(self) -> dict[int, bytes]:
        """Deleted ids and the bytes of their image."""
        return {i: self.added[i] if i in self.added else self.initial[i].read_bytes() for i in self.deleted_at}


def _writer(url: str, ledger: Ledger, w: int, pool: list[Path], victims: list[int], deadline: float) -> None:
    doomed: list[int] = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:

        def delete(image_id: int) -> None:
            with ledger.lock:
                ledger.deleting.add(image_id)
            r = ledger.call(c, "DELETE", f"/images/{image_id}")
            if r is not None and r.status_code == 200 and r.json() == {"id": image_id, "removed": True}:
                with ledger.lock:
                    ledger.deleted_at[image_id] = time.monotonic()
            elif r is not None:
                ledger.error(f"DELETE /images/{image_id}: HTTP {r.status_code} {r.text[:200]}")

        for n, photo in enumerate(pool):
            if time.monotonic() > deadline:
                break
            data = photo.read_bytes()
            r = ledger.call(c, "POST", "/images", files={"file": (photo.name, data, "image/jpeg")})
            if r is None:
                continue
            if r.status_code != 201:
                ledger.error(f"POST /images {photo.name}: HTTP {r.status_code} {r.text[:200]}")
                continue
            (image,) = r.json()["images"]
            if not (image["created"] and UPLOAD_NAME.fullmatch(image["source"])
                    and image["meta"] == {"filename": photo.name}):
                ledger.error(f"POST /images {photo.name}: unexpected answer {image}")
            with ledger.lock:
                ledger.add_ids.append(image["id"])
                ledger.added[image["id"]] = data
                if n % 2 == 0:
                    ledger.kept.append(image["id"])
            if doomed:  # an image added one round earlier: it lived while others searched
                delete(doomed.pop())
            if n % 2 == 1:
                doomed.append(image["id"])
            if n % 3 == 0 and victims:
                delete(victims.pop())
        for image_id in doomed:
            delete(image_id)
    with ledger.lock:
        ledger.writes_ended.append(time.monotonic())


def _searcher(url: str, ledger: Ledger, s: int, deadline: float) -> None:
    rng = random.Random(s)
    initial = sorted(ledger.initial)
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
        for i in range(MAX_SEARCHES_PER_CLIENT):
            if time.monotonic() > deadline:
                break
            with ledger.lock:
                kept = list(ledger.kept)
                known = initial + list(ledger.added)
            sent = time.monotonic()
            if i % 3 == 0 and kept:  # an added image's own upload: it must come first
                target = rng.choice(kept)
                r = ledger.call(c, "POST", "/search", data={"k": "10"},
                                files={"file": ("q.jpg", ledger.added[target], "image/jpeg")})
                if r is not None and r.status_code == 200:
                    results = r.json()["results"]
                    with ledger.lock:
                        ledger.rank1_checks += 1
                    if not results or results[0]["id"] != target:
                        ledger.error(f"search by the upload of {target} ranked {[x['id'] for x in results]}")
            elif i % 3 == 1:  # an indexed photo's upload
                photo = ledger.initial[rng.choice(initial)]
                r = ledger.call(c, "POST", "/search", data={"k": "10"},
                                files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
            else:  # more like this, by an id that may be being deleted right now
                target = rng.choice(known)
                r = ledger.call(c, "POST", "/search", json={"id": target, "k": 10})
                if r is not None and r.status_code == 404:
                    with ledger.lock:
                        legit = target in ledger.deleting
                        if legit:
                            ledger.expected_4xx["search by a deleted id: 404"] += 1
                    if not legit:
                        ledger.error(f"search by id {target} (never deleted): 404 {r.text[:200]}")
                    continue
            if r is None:
                continue
            if r.status_code != 200:
                ledger.error(f"search: HTTP {r.status_code} {r.text[:200]}")
                continue
            ids = [x["id"] for x in r.json()["results"]]
            with ledger.lock:
                ledger.searches.append((sent, ids))


def _check_consistent(url: str, ledger: Ledger, initial_stats: dict) -> None:
    """The index holds exactly the initial images + the additions - the deletions, all reachable."""
    deleted = ledger.deleted()
    kept = [i for i in ledger.added if i not in deleted]
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
        stats = ledger.call(c, "GET", "/stats").json()
        assert stats["images"] == initial_stats["images"] + len(ledger.added) - len(deleted), stats
        assert stats["items"] == initial_stats["items"] + len(ledger.added), stats
        assert stats["removed"] == initial_stats["removed"] + len(deleted), stats
        for image_id in kept:
            original = ledger.call(c, "GET", f"/images/{image_id}")
            assert original.status_code == 200 and original.content == ledger.added[image_id], image_id
            info = ledger.call(c, "GET", f"/images/{image_id}/info")
            assert info.status_code == 200 and info.json()["id"] == image_id, info.text
            assert UPLOAD_NAME.fullmatch(info.json()["source"]), info.json()
            r = ledger.call(c, "POST", "/search", data={"k": "1"},
                            files={"file": ("q.jpg", ledger.added[image_id], "image/jpeg")})
            assert r.status_code == 200 and [x["id"] for x in r.json()["results"]] == [image_id], r.text
        for image_id in set(ledger.initial) - set(deleted):
            assert ledger.call(c, "GET", f"/images/{image_id}/info").status_code == 200, image_id
        for image_id, data in deleted.items():
            for method, path, kwargs in (("GET", f"/images/{image_id}", {}),
                                         ("GET", f"/images/{image_id}/info", {}),
                                         ("GET", f"/images/{image_id}/thumbnail", {}),
                                         ("DELETE", f"/images/{image_id}", {}),
                                         ("POST", "/search", {"json": {"id": image_id}})):
                r = ledger.call(c, method, path, **kwargs)
                assert r.status_code == 404, (method, path, r.status_code, r.text)
            r = ledger.call(c, "POST", "/search", data={"k": "100"}, files={"file": ("q.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            assert image_id not in [x["id"] for x in r.json()["results"]], f"deleted id {image_id} is still found"


def test_concurrent_searches_adds_and_deletes_lose_nothing(small_index, ukbench_dir: Path, tmp_path: Path) -> None:
    index = _copy_index(small_index, tmp_path / "index")
    ledger = Ledger(initial={i: Path(s) for i, s in enumerate(small_index.sources)})
    pool = [_photo(ukbench_dir, n) for n in ADD_POOL]
    server = start_asgi(create_app(index, _settings()))
    started = time.monotonic()
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as c:
            initial_stats = c.get("/stats").json()
        assert initial_stats["images"] == len(ledger.initial)
        deadline = time.monotonic() + LOAD_SECONDS
        threads = [threading.Thread(target=_searcher, args=(server.url, ledger, s, deadline), daemon=True)
                   for s in range(SEARCHERS)]
        threads += [threading.Thread(target=_writer, daemon=True, args=(
            server.url, ledger, w, pool[w::WRITERS], [i for i in ledger.initial if i % WRITERS == w][:INITIAL_VICTIMS],
            deadline)) for w in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LOAD_SECONDS + 120)
        assert not any(t.is_alive() for t in threads), "a client did not finish (a request hung)"
        load_seconds = time.monotonic() - started
        load_requests = ledger.requests

        assert ledger.errors == [], f"{len(ledger.errors)} errors, first: {ledger.errors[:5]}"
        assert len(ledger.add_ids) == len(set(ledger.add_ids)), "an id was handed out twice"
        assert not set(ledger.add_ids) & set(ledger.initial), "an add reused an existing id"
        assert len(ledger.added) >= 6 and len(ledger.deleted_at) >= 4, "too few writes to prove anything"
        assert ledger.rank1_checks >= 5 and len(ledger.searches) >= 20, "too few searches to prove anything"
        known = set(ledger.initial) | set(ledger.added)
        for sent, ids in ledger.searches:
            assert set(ids) <= known, f"search returned ids nobody added: {set(ids) - known}"
            late = [i for i in ids if i in ledger.deleted_at and ledger.deleted_at[i] < sent]
            assert not late, f"ids {late} found by a search sent after their DELETE returned"
        _check_consistent(server.url, ledger, initial_stats)
    finally:
        server.stop()

    restart = start_asgi(create_app(index, _settings()))  # a new server on the same directory
    try:
        _check_consistent(restart.url, ledger, initial_stats)
    finally:
        restart.stop()
    print(f"\nconcurrency: {SEARCHERS} searchers + {WRITERS} writers x {load_seconds:.1f} s: {load_requests} "
          f"requests under load ({len(ledger.searches)} searches ok, {len(ledger.added)} adds, "
          f"{len(ledger.deleted_at)} deletes, {ledger.rank1_checks} rank-1 checks), {ledger.requests} in all; "
          f"statuses {dict(ledger.statuses)}; expected 4xx {dict(ledger.expected_4xx)}; errors {len(ledger.errors)}; "
          f"writers ended after {[round(t - started, 1) for t in ledger.writes_ended]} s; "
          f"{time.monotonic() - started:.1f} s in all")


def test_a_slow_refresh_never_brings_back_an_older_generation(small_index, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A search's refresh that opens the index while a DELETE commits and reopens it must not win.

    Deterministic version of a race the load test can only hit by luck: the refresh (a search
    thread noticing a change made by another process) is held right after it opened the newer
    generation, while a DELETE commits the next one; once released, the store in use must be
    the newest, and the deleted image must stay deleted.
    """
    from imagefinder import ImageFinder
    from imagefinder import finder as finder_module
    from imagefinder.index import read_manifest

    index = _copy_index(small_index, tmp_path / "index")
    app = create_app(index, _settings(reload_interval=0.0, preload_model=False))
    service = app.state.service
    opened, release = threading.Event(), threading.Event()

    class HeldStore(finder_module.Store):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if threading.current_thread().name == "refresh":
                opened.set()
                release.wait(SOCKET_TIMEOUT)

    monkeypatch.setattr(finder_module, "Store", HeldStore)
    other = ImageFinder(index)  # another process (the CLI) removes an image: the server's copy is stale
    assert other.remove([1]) == 1
    refresh = threading.Thread(target=service.refresh, name="refresh", daemon=True)
    refresh.start()
    assert opened.wait(SOCKET_TIMEOUT)
    delete = threading.Thread(target=service.writer.remove, args=(2,), daemon=True)  # DELETE /images/2
    delete.start()
    delete.join(1.0)  # it finishes now, or waits for the refresh to be done first
    release.set()
    delete.join(SOCKET_TIMEOUT)
    refresh.join(SOCKET_TIMEOUT)
    assert not delete.is_alive() and not refresh.is_alive()
    assert service.finder.store.generation == read_manifest(index).generation, "an older generation came back"
    for gone in (1, 2):
        with pytest.raises(KeyError):
            service.finder.search_id(gone)


# --- a server for the security tests -----------------------------------------------------------


SMALL_UPLOAD = 256 * 1024


@dataclass
class Secured:
    server: ServerThread
    app: Any
    index: Path
    root: Path  # everything the server may write lies under root/index

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture(scope="module")
def secured(small_index, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("hardening")
    index = _copy_index(small_index, root / "deep" / "er" / "index")
    app = create_app(index, _settings(max_upload_bytes=SMALL_UPLOAD))
    server = start_asgi(app)
    try:
        yield Secured(server, app, index, root)
    finally:
        server.stop()


@pytest.fixture
def client(secured: Secured) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.server.url, timeout=60, trust_env=False) as c:
        yield c


def _raw_exchange(port: int, head: bytes, body: Iterable[bytes] = ()) -> tuple[int, bytes, int]:
    """Send `head`, then `body` piece by piece until the server answers; (status, response body, bytes sent).

    The request is never completed by this function unless `body` completes it: a server that
    waits for the rest instead of answering runs into the socket timeout, which fails the test.
    """
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as s:
        s.sendall(head)
        try:
            for piece in body:
                if select.select([s], [], [], 0)[0]:  # the answer (or a close) is already here
                    break
                s.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed: its answer may still be readable
        response = b""
        try:
            while b"\r\n\r\n" not in response:
                chunk = s.recv(65536)
                if not chunk:
                    break
                response += chunk
            header, _, rest = response.partition(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length:\s*(\d+)", header)
            while match and len(rest) < int(match.group(1)):
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except TimeoutError:
            raise AssertionError(f"no answer within {SOCKET_TIMEOUT} s (after sending {sent} body bytes)") from None
        except ConnectionResetError:
            header, rest = response.partition(b"\r\n\r\n")[::2]
    assert header.startswith(b"HTTP/1.1 "), f"no HTTP answer: {response[:200]!r}"
    return int(header.split()[1]), rest, sent


# --- (a) path traversal ------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target", [
    "/images/..%2F..%2Fetc%2Fpasswd", "/images/../../etc/passwd", "/images/..%2f..%2f..%2f..%2fetc%2fpasswd/info",
    "/images/%2e%2e/%2e%2e/etc/passwd", "/images/..\\..\\etc\\passwd", "/images/-1", "/images/-1/thumbnail",
    f"/images/{2**64}", f"/images/{10**40}/info", "/images/1%00", "/images/1%00.jpg",
    "/images/0x1", "/../../etc/passwd", "/images//etc/passwd", "/images/%2Fetc%2Fpasswd/thumbnail",
])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_traversal_in_image_ids_is_refused(secured: Secured, target: str, method: str) -> None:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    status, body, _ = _raw_exchange(secured.port, head)
    assert status in (400, 404, 405, 422), (target, status, body)
    assert b"root:" not in body, "/etc/passwd was served"
    for reflected in (b"passwd", b"..", b"etc/", b"%2F", b"\\", str(secured.index).encode()):
        assert reflected not in body, (target, body)


def _multipart(filename: bytes, data: bytes, boundary: bytes = b"hardening-7d1f") -> tuple[bytes, dict[str, str]]:
    """A multipart body with `filename` exactly as given (httpx would escape it)."""
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename
            + b'"\r\nContent-Type: image/jpeg\r\n\r\n' + data + b"\r\n--" + boundary + b"--\r\n")
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


HOSTILE_NAMES = [b"../../x.jpg", b"/etc/passwd", b"..\\..\\x.jpg", b"C:\\Windows\\x.jpg", b"..", b"a\x00b.jpg",
                 b"x.jpg\x00../../y", b"/tmp/../../x.jpg", b"uploads/../../../x.jpg", b"%2e%2e%2fx.jpg",
                 b"a" * 5000 + b".jpg", b"../" * 400 + b"x.jpg", b"\r\nX-Injected: 1.jpg"]


def test_hostile_upload_file_names_never_reach_the_filesystem(secured: Secured, client: httpx.Client,
                                                              ukbench_dir: Path) -> None:
    before = _tree(secured.root)
    outside = [Path("/x.jpg"), Path("/y"), REPO / "x.jpg", Path.cwd() / "x.jpg", secured.index.parent / "x.jpg",
               secured.index.parents[1] / "x.jpg", secured.root / "x.jpg", Path("/tmp/x.jpg")]
    existed = {p: p.exists() for p in outside}
    passwd = os.stat("/etc/passwd")
    seen = set()
    for n, name in enumerate(HOSTILE_NAMES):
        data = _photo(ukbench_dir, 300 + n).read_bytes()
        for path in ("/images", "/search"):
            body, headers = _multipart(name, data)
            r = client.post(path, content=body, headers=headers)
            assert r.status_code < 500, (name, r.text)
            if r.status_code >= 400:  # a name the multipart parser refuses is fine, reflected it is not
                assert r.json().keys() == {"detail"} and b"passwd" not in r.content, r.text
                continue
            payload = r.json()
            shown = payload["images"][0]["meta"].get("filename") if path == "/images" else payload["query"]["filename"]
            if path == "/images":
                assert UPLOAD_NAME.fullmatch(payload["images"][0]["source"]), payload
                seen.add(payload["images"][0]["id"])
            if shown is not None:  # only the last part of a name, printable, not too long
                assert "/" not in shown and "\\" not in shown and shown not in (".", ".."), (name, shown)
                assert shown.isprintable() and len(shown) <= 255, (name, shown)
    assert len(seen) >= len(HOSTILE_NAMES) // 2, "most of the uploads should have been added"

    after = _tree(secured.root)
    new = sorted(set(after) - set(before))
    index = str(secured.index.relative_to(secured.root))
    assert all(p.startswith(index + "/") for p in new), f"written outside the index: {new}"
    uploads = [p for p in new if p.startswith(index + "/uploads/")]
    assert len(uploads) == len(seen) and all(UPLOAD_NAME.fullmatch(p[len(index) + 1:]) for p in uploads), uploads
    assert {p: p.exists() for p in outside} == existed
    assert os.stat("/etc/passwd").st_mtime_ns == passwd.st_mtime_ns
    for image_id in seen:  # leave the index as it was for the other tests
        assert client.delete(f"/images/{image_id}").status_code == 200


# --- (b) body limits, before the whole body is read ---------------------------------------------


GIGABYTES_2 = 2 * 1024**3


@pytest.mark.parametrize("path", ["/search", "/images"])
@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/json"])
def test_a_huge_content_length_is_413_without_reading_the_body(secured: Secured, path: str,
                                                               content_type: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {GIGABYTES_2}\r\n\r\n").encode()
    status, body, _ = _raw_exchange(secured.port, head, [b"--x\r\n" + b"\xff" * 4096])
    assert status == 413, body
    assert b"too large" in body and b"262,144 bytes" in body, body


@pytest.mark.parametrize("path", ["/search", "/images"])
def test_a_chunked_body_is_cut_off_with_413_once_past_the_limit(secured: Secured, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = 64 * 1024
    budget = 256 * SMALL_UPLOAD  # 64 MB: far more than the server may read, and never the final chunk

    def chunks() -> Iterator[bytes]:
        for _ in range(budget // piece):
            yield f"{piece:x}\r\n".encode() + b"\xff" * piece + b"\r\n"

    status, body, sent = _raw_exchange(secured.port, head, chunks())
    assert status == 413 and b"too large" in body, body
    assert sent < budget, "the server answered only after the client ran out of body to send"


def test_a_body_within_the_limit_still_works_after_the_refusals(client: httpx.Client, ukbench_dir: Path) -> None:
    r = client.post("/search", files={"file": ("q.jpg", _photo(ukbench_dir, 0).read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == 0, r.text


# --- (c) error bodies --------------------------------------------------------------------------


def _leaks(text: str, index: Path) -> list[str]:
    markers = ["Traceback", 'File "', "/tmp", "/work", "site-packages", str(index), str(index.resolve()), str(REPO)]
    home = str(Path.home())
    if len(home) > 1:
        markers.append(home)
    return [m for m in markers if m in text]


def test_no_error_body_carries_a_stack_trace_or_a_server_path(secured: Secured, client: httpx.Client,
                                                               ukbench_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    jpeg = _photo(ukbench_dir, 5).read_bytes()
    multipart = "multipart/form-data; boundary=x"
    provoked: dict[str, httpx.Response] = {
        "bad json": client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}),
        "json, wrong shape": client.post("/search", json=[1, 2]),
        "bad multipart": client.post("/search", content=b"garbage", headers={"Content-Type": multipart}),
        "multipart without boundary": client.post("/images", content=b"--x\r\n", headers={
            "Content-Type": "multipart/form-data"}),
        "multipart, no file": client.post("/search", files={"other": ("q.jpg", jpeg)}),
        "corrupt image": client.post("/search", files={"file": ("c.jpg", jpeg[:400])}),
        "corrupt image, add": client.post("/images", files={"file": ("c.jpg", jpeg[:400] + b"\0" * 100)}),
        "empty image": client.post("/images", files={"file": ("e.jpg", b"")}),
        "unsupported type": client.post("/search", files={"file": ("t.jpg", b"GIF89 not really")}),
        "wrong content type": client.post("/images", content=jpeg, headers={"Content-Type": "image/jpeg"}),
        "bad url": client.post("/search", json={"url": "not a url"}),
        "bad url scheme": client.post("/images", json={"url": "file:///etc/passwd"}),
        "ssrf loopback": client.post("/search", json={"url": "http://127.0.0.1:1/x.jpg"}),
        "ssrf metadata": client.post("/images", json={"url": "http://169.254.169.254/latest/meta-data/"}),
        "unresolvable host": client.post("/search", json={"url": "http://does-not-exist.invalid/x.jpg"}),
        "unknown id": client.get("/images/999999"),
        "unknown thumbnail": client.get("/images/999999/thumbnail"),
        "unknown delete": client.delete("/images/999999"),
        "unknown search id": client.post("/search", json={"id": 999999}),
        "unknown endpoint": client.get("/nope/nope"),
        "wrong method": client.put("/images/1"),
        "too large": client.post("/images", files={"file": ("big.jpg", jpeg + b"\0" * SMALL_UPLOAD)}),
        "bad k": client.post("/search?k=0", json={"id": 1}),
        "bad id": client.get("/images/abc"),
        "negative id": client.post("/search", json={"id": -1}),
        "bad metric": client.post("/search", files={"file": ("q.jpg", jpeg)}, data={"metric": "l1"}),
        "extra field": client.post("/search", json={"id": 1, "path": "/etc/passwd"}),
    }
    status, body, _ = _raw_exchange(secured.port, (
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: nope\r\n"
        b"Connection: close\r\n\r\n"))
    raw_bodies = {"bad content-length": (status, body)}

    # internal errors whose exception messages name server paths: the client gets a generic sentence
    service = secured.app.state.service
    secret = f"{secured.index}/vectors-7.faiss"

    def boom(*args, **kwargs):
        raise RuntimeError(f"cannot read {secret}\nTraceback (most recent call last):\n  File \"{REPO}/x.py\"")

    not_a_dir = tmp_path / "uploads-is-a-file"
    not_a_dir.write_text("x")
    monkeypatch.setattr(service.writer, "uploads", not_a_dir)  # mkdir fails with an OSError naming the path
    provoked["internal: uploads not a directory"] = client.post("/images", files={"file": ("n.jpg", jpeg)})
    monkeypatch.setattr(service.finder, "search", boom)
    provoked["internal: search"] = client.post("/search", files={"file": ("q.jpg", jpeg)})
    monkeypatch.setattr(service.writer, "remove", boom)
    provoked["internal: delete"] = client.delete("/images/3")
    monkeypatch.setattr(service, "refresh", lambda: (_ for _ in ()).throw(PermissionError(13, "Permission denied",
                                                                                            secret)))
    provoked["internal: stats"] = client.get("/stats")
    monkeypatch.undo()

    expected = {"unknown id": 404, "unknown endpoint": 404, "wrong method": 405, "too large": 413,
                "unsupported type": 415, "wrong content type": 415, "bad json": 422, "ssrf loopback": 422}
    statuses = {}
    for what, r in provoked.items():
        raw_bodies[what] = (r.status_code, r.content)
        assert r.headers["content-type"].startswith("application/json"), (what, r.headers)
        assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str), (what, r.text)
        statuses[what] = r.status_code
    for what, (status, body) in raw_bodies.items():
        assert 400 <= status < 600, (what, status)
        text = body.decode("utf-8", "replace")
        assert not _leaks(text, secured.index), (what, _leaks(text, secured.index), text)
        assert "RuntimeError" not in text and "Errno" not in text, (what, text)
    for what, status in expected.items():
        assert statuses[what] == status, (what, statuses[what], provoked[what].text)
    internal = [w for w in provoked if w.startswith("internal")]
    assert all(statuses[w] == 500 for w in internal), {w: statuses[w] for w in internal}
    assert {provoked[w].json()["detail"] for w in internal} == {"internal server error; the server log has the details"}
    # the server drops the connection after an unhandled error; the answer says so, or a keep-alive
    # client would send its next request down that connection and get a reset
    assert all(provoked[w].headers.get("connection") == "close" for w in internal)
    assert all(s < 500 for w, s in statuses.items() if w not in internal), statuses
    assert raw_bodies["bad content-length"][0] == 400

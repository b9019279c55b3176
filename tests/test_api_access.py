"""Write access control over a real socket: token, read-only, cross-site refusals, this-machine-only default.

Each server gets its own copy of a small index (writes change it); uploads are synthetic
pictures unlike anything indexed, so an accepted upload answers 201 and a refused one
leaves the image count as it was.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from imagefinder.access import AccessDenied, WritePolicy, WriteRequest, check_write
from imagefinder.api import Settings, create_app
from imagefinder.api.server import guard_exposed
from imagefinder.api.testing import ServerThread, start_asgi, start_wsgi
from imagefinder.web import create_app as create_web_app

TOKEN = "s3cret-token-for-tests-0123456789"
PAGE = "http://127.0.0.1:5000"  # the trusted page origin (IMAGEFINDER_CORS_ORIGINS)
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("access")
    images, _query = write_sample(root / "images")
    return build_index([str(images)], root / "index", embedder=embedder, workers=2).path


@contextmanager
def api_server(base_index: Path, tmp_path: Path, **settings) -> Iterator[ServerThread]:
    index = tmp_path / "index"
    shutil.copytree(base_index, index)
    server = start_asgi(create_app(index, Settings(cors_origins=(PAGE,), **settings)))
    try:
        yield server
    finally:
        server.stop()


def picture(seed: int) -> bytes:
    img = Image.new("RGB", (200, 160), (10 + 37 * seed % 230, 60, 200 - 13 * seed % 180))
    draw = ImageDraw.Draw(img)
    for x in range(0, 200, 10 + seed % 17):
        draw.line([x, 0, 200 - x, 160], fill=(250, 30 * seed % 255, 90), width=4)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def upload(url: str, seed: int, **headers: str) -> httpx.Response:
    """A browser-style simple request: multipart/form-data POST, no preflight needed."""
    return httpx.post(f"{url}/images", files={"file": (f"p{seed}.png", picture(seed), "image/png")},
                      headers=headers, timeout=60, trust_env=False)


def count(url: str) -> int:
    return int(httpx.get(f"{url}/stats", trust_env=False, timeout=30).json()["images"])


def detail(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    text = response.json()["detail"]
    for word in words:
        assert word in text, text
    return text


# --- the policy itself (no server) -----------------------------------------------------------


def _req(client: str = "127.0.0.1", **headers: str) -> WriteRequest:
    return WriteRequest(client, "http", {"host": "127.0.0.1:8000", **{k.replace("_", "-"): v for k, v in headers.items()}})


@pytest.mark.parametrize(("headers", "allowed"), [
    ({}, True),  # curl, the CLI, a script: no browser, no ambient credentials
    ({"origin": "http://127.0.0.1:8000"}, True),
    ({"origin": "http://127.0.0.1:8000", "sec_fetch_site": "same-origin"}, True),
    ({"origin": PAGE, "sec_fetch_site": "same-site"}, True),  # the trusted page (CORS list)
    ({"origin": EVIL}, False),
    ({"origin": "null"}, False),
    ({"origin": "http://127.0.0.1:8001"}, False),  # another port is another origin
    ({"sec_fetch_site": "cross-site"}, False),
    ({"origin": "http://127.0.0.1:8000", "sec_fetch_site": "cross-site"}, False),
    ({"origin": EVIL, "authorization": f"Bearer {TOKEN}"}, False),
])
def test_cross_site_policy(headers: dict, allowed: bool) -> None:
    for policy in (WritePolicy(trusted_origins=(PAGE, "*")), WritePolicy(token=TOKEN, trusted_origins=(PAGE,))):
        request = _req(**headers)
        if "authorization" not in headers and policy.token:
            request = _req(**headers, authorization=f"Bearer {TOKEN}")
        if allowed:
            check_write(policy, request)
        else:
            with pytest.raises(AccessDenied) as exc:
                check_write(policy, request)
            assert exc.value.status == 403 and "cross-site" in str(exc.value)


@pytest.mark.parametrize(("client", "headers", "why"), [
    ("192.168.1.20", {}, "not on this machine"),
    ("127.0.0.1", {"x_forwarded_for": "203.0.113.9"}, "another machine"),
    ("127.0.0.1", {"host": "rebound.evil.example:8000", "origin": "http://rebound.evil.example:8000"}, "Host"),
    ("127.0.0.1", {"x_forwarded_host": "192.168.1.5:5000"}, "forwarded host"),
])
def test_without_a_token_only_this_machine_writes(client: str, headers: dict, why: str) -> None:
    with pytest.raises(AccessDenied) as exc:
        check_write(WritePolicy(), _req(client, **headers))
    assert exc.value.status == 403 and why.lower() in str(exc.value).lower()
    check_write(WritePolicy(), _req("::1", x_forwarded_for="127.0.0.1", x_forwarded_host="localhost:5000"))


def test_a_server_listening_beyond_this_machine_without_a_token_is_read_only() -> None:
    assert guard_exposed(Settings(), "0.0.0.0").read_only
    assert "0.0.0.0" in guard_exposed(Settings(), "0.0.0.0").read_only_reason
    assert not guard_exposed(Settings(), "127.0.0.1").read_only
    assert not guard_exposed(Settings(), "localhost").read_only
    assert not guard_exposed(Settings(api_token=TOKEN), "0.0.0.0").read_only


def test_the_token_is_never_shown() -> None:
    settings = Settings.from_env({"IMAGEFINDER_API_TOKEN": TOKEN})
    assert settings.token == TOKEN and TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())
    assert settings.with_changes(read_only=True).token == TOKEN
    assert Settings.from_env({"IMAGEFINDER_API_TOKEN": "  "}).token is None


# --- over a real socket ------------------------------------------------------------------------


def test_token_missing_wrong_and_right(base_index: Path, tmp_path: Path) -> None:
    with api_server(base_index, tmp_path, api_token=TOKEN) as api:
        before = count(api.url)
        missing = upload(api.url, 1)
        detail(missing, 401, "Authorization: Bearer")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        detail(upload(api.url, 1, Authorization="Bearer not-the-token"), 401, "wrong token")
        detail(upload(api.url, 1, Authorization=TOKEN), 401)  # no scheme
        assert count(api.url) == before
        added = upload(api.url, 1, Authorization=f"Bearer {TOKEN}")
        assert added.status_code == 201, added.text
        new_id = added.json()["images"][0]["id"]
        assert count(api.url) == before + 1
        detail(httpx.delete(f"{api.url}/images/{new_id}", trust_env=False), 401)
        # a cross-site request is refused even with the right token
        detail(upload(api.url, 2, Authorization=f"Bearer {TOKEN}", Origin=EVIL), 403, "cross-site")
        gone = httpx.delete(f"{api.url}/images/{new_id}", headers={"Authorization": f"bearer {TOKEN}"},
                            trust_env=False)
        assert gone.status_code == 200 and gone.json() == {"id": new_id, "removed": True}
        assert count(api.url) == before
        assert httpx.get(f"{api.url}/stats", trust_env=False).json()["writes"] == "token"
        # reads need nothing
        search = httpx.post(f"{api.url}/search", json={"id": 0, "k": 3}, trust_env=False, timeout=60)
        assert search.status_code == 200 and len(search.json()["results"]) == 3


def test_read_only_refuses_every_write(base_index: Path, tmp_path: Path) -> None:
    with api_server(base_index, tmp_path, read_only=True, api_token=TOKEN) as api:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        detail(upload(api.url, 3, **auth), 403, "read-only", "IMAGEFINDER_READ_ONLY")
        detail(httpx.post(f"{api.url}/images", json={"url": "https://example.com/a.jpg"}, headers=auth,
                          trust_env=False), 403, "read-only")
        detail(httpx.delete(f"{api.url}/images/0", headers=auth, trust_env=False), 403, "read-only")
        assert httpx.post(f"{api.url}/search", json={"id": 0}, trust_env=False, timeout=60).status_code == 200
        assert httpx.get(f"{api.url}/images/0/info", trust_env=False).status_code == 200
        assert httpx.get(f"{api.url}/stats", trust_env=False).json()["writes"] == "read-only"


def test_foreign_origin_simple_multipart_post_is_refused(base_index: Path, tmp_path: Path) -> None:
    """What any web page could do: a <form enctype=multipart/form-data> POST needs no CORS preflight."""
    with api_server(base_index, tmp_path) as api:
        before = count(api.url)
        assert httpx.get(f"{api.url}/stats", trust_env=False).json()["writes"] == "this-machine"
        detail(upload(api.url, 4, Origin=EVIL), 403, "cross-site", "evil.example")
        detail(upload(api.url, 4, **{"Sec-Fetch-Site": "cross-site"}), 403, "cross-site")
        detail(upload(api.url, 4, Origin="null"), 403, "cross-site")
        detail(httpx.delete(f"{api.url}/images/0", headers={"Origin": EVIL}, trust_env=False), 403, "cross-site")
        # DNS rebinding: the foreign page's own name, resolved to 127.0.0.1, arrives as Host
        detail(upload(api.url, 4, Host="rebound.evil.example", Origin="http://rebound.evil.example"), 403, "Host")
        detail(upload(api.url, 4, **{"X-Forwarded-For": "203.0.113.9"}), 403, "only from this machine")
        assert count(api.url) == before
        # same origin, and the trusted page, are allowed (no token set: this machine only)
        same = upload(api.url, 4, Origin=api.url, **{"Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 201, same.text
        page = upload(api.url, 5, Origin=PAGE, **{"Sec-Fetch-Site": "same-site"})
        assert page.status_code == 201, page.text
        assert count(api.url) == before + 2


def test_writes_through_the_page_forwarder(base_index: Path, tmp_path: Path) -> None:
    with api_server(base_index, tmp_path, api_token=TOKEN) as api:
        web = start_wsgi(create_web_app(api.url))
        try:
            before = count(api.url)
            detail(upload(f"{web.url}/api", 6), 401, "Bearer")
            detail(upload(f"{web.url}/api", 6, Origin=EVIL, Authorization=f"Bearer {TOKEN}"), 403, "cross-site")
            detail(upload(f"{web.url}/api", 6, **{"Sec-Fetch-Site": "cross-site"}), 403, "cross-site")
            assert count(api.url) == before
            ok = upload(f"{web.url}/api", 6, Origin=web.url, Authorization=f"Bearer {TOKEN}")
            assert ok.status_code == 201, ok.text
            assert ok.json()["images"][0]["thumbnail_url"]
            # searches through the page need no token
            assert httpx.post(f"{web.url}/api/search", json={"id": 0}, trust_env=False, timeout=60).status_code == 200
        finally:
            web.stop()


def test_the_page_forwarder_without_a_token_keeps_the_this_machine_rule(base_index: Path, tmp_path: Path) -> None:
    with api_server(base_index, tmp_path) as api:
        web = start_wsgi(create_web_app(api.url))
        try:
            before = count(api.url)
            # the browser's address reaches the API (X-Forwarded-For), so a LAN client is refused
            detail(upload(f"{web.url}/api", 7, **{"X-Forwarded-For": "192.168.1.20"}), 403, "only from this machine")
            detail(upload(f"{web.url}/api", 7, Host="192.168.1.5:5000", Origin="http://192.168.1.5:5000"), 403,
                   "forwarded host")
            assert count(api.url) == before
            assert upload(f"{web.url}/api", 7, Origin=web.url).status_code == 201
        finally:
            web.stop()

"""SSRF: server-side URL fetches never reach loopback, private, link-local or non-http targets.

Everything runs on 127.0.0.1. Addresses such as 10.x and 169.254.169.254 only ever appear in
URLs that must be refused *before* any connection: `no_connections` turns an attempt into a
test failure, so no packet can leave for them. To test a redirect from a "public" host, a
fake resolver maps the made-up name `public.test` to the test server on 127.0.0.1 and treats
that one pairing as public; every other address goes through the real check.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from imagefinder.api import Settings, create_app
from imagefinder.api.testing import ServerThread, start_asgi
from imagefinder.net import client, policy
from imagefinder.net.client import safe_fetch
from imagefinder.net.errors import FetchError, FetchTooLarge, UnsafeURL
from imagefinder.net.policy import check_address

FAKE_PUBLIC_HOST = "public.test"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 60, 30)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if safe_fetch opens any connection; returns the list of attempts."""
    attempts: list[str] = []

    def refuse(http, target, *args, **kwargs):
        attempts.append(f"{target.url} -> {target.address}")
        raise AssertionError(f"safe_fetch tried to connect to {target.address} for {target.url}")

    monkeypatch.setattr(client, "_send", refuse)
    return attempts


@pytest.fixture
def fake_public_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`public.test` resolves to 127.0.0.1 and counts as public; nothing else changes."""
    lookups: list[str] = []
    real_resolve, real_check = policy.resolve_host, policy.check_address

    def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"] if host == FAKE_PUBLIC_HOST else real_resolve(host, port)

    def check(address: str) -> str | None:
        # only the lookup of public.test yields 127.0.0.1 "as public": the last lookup says which
        if address == "127.0.0.1" and lookups and lookups[-1] == FAKE_PUBLIC_HOST:
            return None
        return real_check(address)

    monkeypatch.setattr(policy, "resolve_host", resolve)
    monkeypatch.setattr(policy, "check_address", check)
    return lookups


def public(url: str) -> str:
    """The test server's URL under the fake public name."""
    return url.replace("127.0.0.1", FAKE_PUBLIC_HOST)


# --- the address check itself ------------------------------------------------------------------


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("100.64.0.1", "shared"), ("240.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("2002:7f00:1::", "loopback"),
    ("::ffff:7f00:1", "loopback"), ("fec0::1", "site-local"), ("64:ff9b::7f00:1", "reserved"),
    ("::127.0.0.1", "reserved"),
])
def test_non_public_addresses_are_named(address: str, kind: str) -> None:
    reason = check_address(address)
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert check_address(address) is None


# --- refused before any connection -------------------------------------------------------------


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:9/x.jpg", ["127.0.0.1", "loopback"]),
    ("http://localhost:9/x.jpg", ["loopback"]),
    ("http://[::1]:9/x.jpg", ["loopback"]),
    ("http://2130706433/x.jpg", ["loopback"]),  # 127.0.0.1 written as one number
    ("http://017700000001/x.jpg", ["loopback"]),  # ... as one octal number
    ("http://0x7f.0.0.1:9/x.jpg", ["loopback"]),  # ... with a hex part
    ("http://127.1:9/x.jpg", ["loopback"]),  # ... in short form
    ("http://0177.0.0.1/x.jpg", ["invalid URL"]),  # dotted octal: httpx refuses to parse it
    ("http://0/x.jpg", ["unspecified"]),
    ("http://[::ffff:7f00:1]:9/x.jpg", ["loopback"]),
    ("http://[fec0::1]/x.jpg", ["site-local"]),
    ("http://xn--/x.jpg", ["invalid URL"]),  # a malformed IDNA name: refused, not an unexpected exception
    ("http://0.0.0.0:9/x.jpg", ["unspecified"]),
    ("http://10.0.0.7/x.jpg", ["private"]),
    ("http://192.168.0.1/x.jpg", ["private"]),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", ["link-local"]),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", ["link-local"]),
    ("file:///etc/passwd", ["scheme 'file'"]),
    ("ftp://example.com/x.jpg", ["scheme 'ftp'"]),
    ("gopher://127.0.0.1:25/", ["scheme 'gopher'"]),
    ("data:image/png;base64,iVBORw0KGgo=", ["scheme"]),
    ("//example.com/x.jpg", ["scheme"]),
    ("http://user:secret@example.com/x.jpg", ["user name or password"]),
    ("http:///x.jpg", ["no host"]),
])
def test_refused_urls_never_connect(url: str, words: list[str], no_connections: list[str]) -> None:
    with pytest.raises(UnsafeURL) as info:
        safe_fetch(url)
    for word in words:
        assert word in str(info.value)
    assert no_connections == []


def test_a_name_with_any_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, no_connections) -> None:
    monkeypatch.setattr(policy, "resolve_host", lambda host, port: ["93.184.216.34", "10.0.0.5"])
    with pytest.raises(UnsafeURL, match=r"address not allowed \(a private address\)") as info:
        safe_fetch("http://mixed.test/x.jpg")
    assert no_connections == []
    # what the name resolves to stays on this side (the crawl's log reason), never in the sentence a caller sees
    assert "10.0.0.5" not in str(info.value) and "10.0.0.5, a private address" in info.value.reason


def test_unresolvable_host_is_a_fetch_error(monkeypatch: pytest.MonkeyPatch, no_connections) -> None:
    def fail(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(policy, "resolve_host", fail)
    with pytest.raises(FetchError, match="cannot resolve host 'nowhere.test'"):
        safe_fetch("http://nowhere.test/x.jpg")


# --- the test server on 127.0.0.1: only with the explicit allow setting -------------------------


def test_local_server_needs_the_allow_setting(http_server) -> None:
    url = http_server.route("/ssrf/ok.jpg", JPEG)
    with pytest.raises(UnsafeURL, match="loopback"):
        safe_fetch(url)
    assert http_server.count("/ssrf/ok.jpg") == 0
    fetched = safe_fetch(url, allow_private=True)
    assert fetched.content == JPEG and fetched.content_type == "image/jpeg"
    assert http_server.count("/ssrf/ok.jpg") == 1


def test_size_cap_and_timeout_apply_even_when_allowed(http_server) -> None:
    big = http_server.route("/ssrf/big.jpg", JPEG[:3] + b"0" * 50_000)
    with pytest.raises(FetchTooLarge, match="50003 bytes"):
        safe_fetch(big, allow_private=True, max_bytes=10_000)
    slow = http_server.route("/ssrf/slow.jpg", JPEG, delay=2.0)
    with pytest.raises(FetchError, match="timed out"):
        safe_fetch(slow, allow_private=True, timeout=0.3)
    missing = http_server.url("/ssrf/missing.jpg")
    with pytest.raises(FetchError, match="HTTP 404"):
        safe_fetch(missing, allow_private=True)


# --- redirects: every hop is checked again ----------------------------------------------------


def test_a_public_host_is_fetched_through_the_vetted_address(http_server, fake_public_dns: list[str]) -> None:
    url = public(http_server.route("/ssrf/public.jpg", JPEG))
    fetched = safe_fetch(url)
    assert fetched.content == JPEG
    assert fake_public_dns == [FAKE_PUBLIC_HOST], "resolved once, then connected to that address (no re-lookup)"


@pytest.mark.parametrize("target, words", [
    ("http://127.0.0.1:{port}/ssrf/secret", ["loopback"]),
    ("http://localhost:{port}/ssrf/secret", ["loopback"]),
    ("http://[::1]:{port}/ssrf/secret", ["loopback"]),
    ("http://[::ffff:127.0.0.1]:{port}/ssrf/secret", ["loopback"]),
    ("http://0.0.0.0:{port}/ssrf/secret", ["unspecified"]),  # on Linux, 0.0.0.0 reaches this machine
    ("http://2130706433:{port}/ssrf/secret", ["loopback"]),  # decimal
    ("http://017700000001:{port}/ssrf/secret", ["loopback"]),  # octal
    ("http://0x7f.0.0.1:{port}/ssrf/secret", ["loopback"]),  # hex
    ("http://127.1:{port}/ssrf/secret", ["loopback"]),
    ("http://169.254.169.254/latest/meta-data/", ["link-local"]),
    ("http://10.0.0.1/admin", ["private"]),
    ("file:///etc/passwd", ["scheme 'file'"]),
])
def test_redirect_to_a_non_public_target_is_refused(http_server, fake_public_dns, target: str,
                                                    words: list[str]) -> None:
    http_server.route("/ssrf/secret", b"secret", "text/plain")
    port = http_server.base.rsplit(":", 1)[1]
    hop = public(http_server.route(f"/ssrf/redirect-{abs(hash(target))}", b"", None, status=302,
                                   headers={"Location": target.format(port=port)}))
    with pytest.raises(UnsafeURL) as info:
        safe_fetch(hop)
    for word in words:
        assert word in str(info.value)
    assert http_server.count("/ssrf/secret") == 0


@pytest.mark.parametrize("target", ["http://0177.0.0.1:{port}/ssrf/secret", "http://[::1/ssrf/secret",
                                    "http://127.0.0.1:x/ssrf/secret"])
def test_redirect_to_an_unparsable_url_is_refused(http_server, fake_public_dns, target: str) -> None:
    """Dotted octal and broken hosts cannot be parsed: httpx refuses them before any connection."""
    http_server.route("/ssrf/secret", b"secret", "text/plain")
    port = http_server.base.rsplit(":", 1)[1]
    hop = public(http_server.route(f"/ssrf/bad-redirect-{abs(hash(target))}", b"", None, status=302,
                                   headers={"Location": target.format(port=port)}))
    with pytest.raises(FetchError, match="Invalid URL in location header"):
        safe_fetch(hop)
    assert http_server.count("/ssrf/secret") == 0


@pytest.mark.parametrize("answers", [
    ["93.184.216.34", "127.0.0.1"], ["127.0.0.1", "93.184.216.34"], ["2606:4700:4700::1111", "::1"],
    ["8.8.8.8", "93.184.216.34", "169.254.169.254"], ["93.184.216.34", "::ffff:10.0.0.1"],
])
@pytest.mark.parametrize("via_redirect", [False, True])
def test_every_dns_answer_of_every_hop_is_checked(http_server, fake_public_dns: list[str],
                                                   monkeypatch: pytest.MonkeyPatch, answers: list[str],
                                                   via_redirect: bool) -> None:
    """A name with one non-public address among public ones is refused, first hop or a redirect's."""
    fixture_resolve = policy.resolve_host

    def resolve(host: str, port: int) -> list[str]:
        if host == "mixed.test":
            fake_public_dns.append(host)
            return list(answers)
        return fixture_resolve(host, port)

    monkeypatch.setattr(policy, "resolve_host", resolve)
    http_server.route("/ssrf/secret", b"secret", "text/plain")
    port = http_server.base.rsplit(":", 1)[1]
    target = f"http://mixed.test:{port}/ssrf/secret"
    url = target
    if via_redirect:
        url = public(http_server.route(f"/ssrf/to-mixed-{abs(hash(tuple(answers)))}", b"", None, status=302,
                                       headers={"Location": target}))
    with pytest.raises(UnsafeURL, match="refused to fetch from 'mixed.test'"):
        safe_fetch(url)
    assert fake_public_dns == ([FAKE_PUBLIC_HOST] if via_redirect else []) + ["mixed.test"]
    assert http_server.count("/ssrf/secret") == 0


def test_relative_redirects_are_followed_and_counted(http_server, fake_public_dns) -> None:
    http_server.route("/ssrf/final.jpg", JPEG)
    for i in range(5):
        target = "/ssrf/final.jpg" if i == 0 else f"/ssrf/hop{i - 1}"
        http_server.route(f"/ssrf/hop{i}", b"", None, status=301, headers={"Location": target})
    assert safe_fetch(public(http_server.url("/ssrf/hop2")), max_redirects=3).content == JPEG
    with pytest.raises(UnsafeURL, match="too many redirects"):
        safe_fetch(public(http_server.url("/ssrf/hop4")), max_redirects=3)


# --- through the API ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory: pytest.TempPathFactory, embedder):
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("ssrf-sample")
    images, _query = write_sample(root / "images")
    build_index([str(images)], root / "index", embedder=embedder, workers=4)
    return root / "index"


@pytest.fixture(scope="module")
def api(sample_index) -> Iterator[ServerThread]:
    server = start_asgi(create_app(sample_index, Settings(preload_model=False)))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/search", "/images"])
def test_api_refuses_every_kind_of_ssrf_url(api: ServerThread, http_server, fake_public_dns, path: str) -> None:
    local = http_server.route("/ssrf/api-local.jpg", JPEG)
    port = http_server.base.rsplit(":", 1)[1]
    redirect = public(http_server.route(f"/ssrf/api-redirect{path.replace('/', '-')}", b"", None, status=302,
                                        headers={"Location": f"http://127.0.0.1:{port}/ssrf/api-local.jpg"}))
    octal = public(http_server.route(f"/ssrf/api-octal{path.replace('/', '-')}", b"", None, status=302,
                                     headers={"Location": f"http://0177.0.0.1:{port}/ssrf/api-local.jpg"}))
    zeros = public(http_server.route(f"/ssrf/api-zeros{path.replace('/', '-')}", b"", None, status=302,
                                     headers={"Location": f"http://0.0.0.0:{port}/ssrf/api-local.jpg"}))
    urls = {
        local: "loopback",
        "http://10.20.30.40/x.jpg": "private",
        "http://169.254.169.254/latest/meta-data/": "link-local",
        "file:///etc/passwd": "scheme 'file'",
        redirect: "loopback",
        zeros: "unspecified",
        octal: "Invalid URL in location header",
        "http://xn--/x.jpg": "invalid URL",  # was an unhandled IDNAError: HTTP 500
        f"http://0x7f.0.0.1:{port}/ssrf/api-local.jpg": "loopback",
    }
    with httpx.Client(base_url=api.url, timeout=30, trust_env=False) as c:
        for url, word in urls.items():
            r = c.post(path, json={"url": url})
            assert r.status_code == 422, (url, r.text)
            assert word in r.json()["detail"], (url, r.json())
    assert http_server.count("/ssrf/api-local.jpg") == 0

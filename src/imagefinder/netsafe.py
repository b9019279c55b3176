"""Server-side URL fetching that cannot be turned against the server's own network (SSRF).

A search API that accepts ``{"url": ...}`` fetches whatever a stranger names. Without care
that includes ``http://127.0.0.1:...`` admin ports, ``http://169.254.169.254/`` (cloud
metadata with credentials), hosts on the private LAN, ``file://`` and friends, or a public
URL that *redirects* to any of those. :func:`safe_fetch` closes each of these doors:

- only ``http`` and ``https`` URLs, with a host, no user:password part;
- the host is resolved once with :func:`socket.getaddrinfo` and *every* address it resolves
  to must be public (not loopback, private, link-local, multicast, reserved, unspecified,
  shared/CGNAT, or an IPv4-mapped IPv6 form of those);
- the connection goes to the vetted IP itself (the URL's host is sent as the ``Host``
  header and as TLS SNI, so certificates still verify), so a second DNS answer cannot
  swap in a private address between the check and the connect (DNS rebinding);
- redirects are followed by hand, at most ``max_redirects`` hops, each hop checked again;
- one timeout per network operation plus a wall-clock deadline for the whole fetch, and a
  byte cap enforced while streaming (a ``Content-Length`` over the cap is refused unread);
- environment proxies are ignored (a proxy would make the IP check meaningless).

``allow_private=True`` lifts the address check (for a server used on one's own machine,
where fetching from ``localhost`` is the point); the scheme, redirect, time and size limits
stay. Errors are :class:`FetchError` (``UnsafeURL`` for refusals, ``FetchTooLarge`` for the
size cap) with a message meant for the person who supplied the URL.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

__all__ = [
    "FetchError",
    "FetchTooLarge",
    "Fetched",
    "UnsafeURL",
    "check_address",
    "resolve_host",
    "safe_fetch",
    "vet_url",
]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
USER_AGENT = "imagefinder/0.1 (+https://github.com/imagefinder)"
_REDIRECTS = (301, 302, 303, 307, 308)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
ALLOW_HINT = "set IMAGEFINDER_ALLOW_PRIVATE_URLS=1 to allow it on a server used only locally"


class FetchError(ValueError):
    """A URL that could not be fetched; the message says why, in terms of the URL."""


class UnsafeURL(FetchError):
    """A URL refused by policy before (or instead of) connecting: scheme, address, redirects."""


class FetchTooLarge(FetchError):
    """The response is bigger than the byte cap."""


@dataclass(frozen=True)
class Fetched:
    """The body of a successful fetch and the URL it finally came from (after redirects)."""

    content: bytes
    url: str
    content_type: str | None


def resolve_host(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to (a module-level function so tests can replace it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in seen:
            seen.append(address)
    return seen


def check_address(address: str) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    for kind, flag in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),  # fec0::/10, deprecated
        ("a multicast", ip.is_multicast),
        ("a reserved", ip.is_reserved),
        ("a private", ip.is_private),
        ("a shared (carrier-grade NAT)", isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT),
        ("a non-public", not ip.is_global),
    ):
        if flag:
            return f"{kind} address"
    return None


def vet_url(url: str, *, allow_private: bool = False) -> tuple[httpx.URL, str]:
    """Check a URL and resolve its host; returns (parsed URL, the IP to connect to)."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoded here, so a malformed IDNA name (http://xn--/) is an invalid URL too
    except (httpx.InvalidURL, TypeError, ValueError) as exc:  # UnicodeError (IDNA) is a ValueError
        raise UnsafeURL(f"invalid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        scheme = parsed.scheme or "(none)"
        raise UnsafeURL(f"URL scheme '{scheme}' is not allowed; use an http:// or https:// URL")
    if not host:
        raise UnsafeURL("invalid URL: it has no host name")
    if parsed.userinfo:
        raise UnsafeURL("URLs with a user name or password are not allowed")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = resolve_host(host, port)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise FetchError(f"cannot resolve host '{host}': {getattr(exc, 'strerror', None) or exc}") from None
    if not addresses:
        raise FetchError(f"cannot resolve host '{host}'")
    if not allow_private:
        for address in addresses:
            reason = check_address(address)
            if reason is not None:
                raise UnsafeURL(f"refused to fetch from '{host}': it resolves to {address}, {reason}; "
                                f"only public hosts can be fetched ({ALLOW_HINT})")
    return parsed, addresses[0]


def safe_fetch(url: str, *, allow_private: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
               timeout: float = DEFAULT_TIMEOUT, max_redirects: int = 3,
               client: httpx.Client | None = None) -> Fetched:
    """GET `url` with the SSRF, redirect, time and size limits described in the module doc.

    Raises FetchError (or its subclasses UnsafeURL, FetchTooLarge); never returns a partial body.
    """
    deadline = time.monotonic() + 3 * timeout
    own = client is None
    if client is None:
        client = httpx.Client(trust_env=False, follow_redirects=False, timeout=httpx.Timeout(timeout),
                              headers={"User-Agent": USER_AGENT})
    try:
        current = url
        for hop in range(max_redirects + 1):
            parsed, address = vet_url(current, allow_private=allow_private)
            response = _get_pinned(client, parsed, address, timeout, max_bytes, deadline)
            if isinstance(response, str):  # a redirect target
                if hop == max_redirects:
                    raise UnsafeURL(f"too many redirects (more than {max_redirects})")
                current = response
                continue
            return Fetched(response[0], str(parsed), response[1])
        raise UnsafeURL(f"too many redirects (more than {max_redirects})")  # pragma: no cover
    finally:
        if own:
            client.close()


def _get_pinned(client: httpx.Client, parsed: httpx.URL, address: str, timeout: float, max_bytes: int,
                deadline: float) -> tuple[bytes, str | None] | str:
    """One GET to the vetted `address`; returns (body, content type) or the next URL to visit."""
    pinned = parsed.copy_with(host=address)
    host_header = parsed.netloc.decode("ascii")
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    request = client.build_request("GET", pinned, headers={"Host": host_header, "Accept": "image/*"},
                                   extensions=extensions)
    request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
    try:
        response = client.send(request, stream=True, follow_redirects=False)
    except httpx.TimeoutException:
        raise FetchError(f"timed out after {timeout:g} s connecting to '{parsed.host}'") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"cannot connect to '{parsed.host}': {_describe(exc)}") from None
    try:
        if response.status_code in _REDIRECTS or not response.is_success:
            _drain(response)  # a short error page or redirect body: read it, so closing is clean
        if response.status_code in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise FetchError(f"HTTP {response.status_code} redirect without a Location header")
            return str(parsed.join(location))
        if not response.is_success:
            raise FetchError(f"the server answered HTTP {response.status_code} {response.reason_phrase}".rstrip())
        length = response.headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > max_bytes:
            raise FetchTooLarge(f"the image is too large: {int(length)} bytes, the limit is {max_bytes}")
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchTooLarge(f"the image is too large: more than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"timed out reading from '{parsed.host}'")
        except httpx.TimeoutException:
            raise FetchError(f"timed out after {timeout:g} s reading from '{parsed.host}'") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"download from '{parsed.host}' failed: {_describe(exc)}") from None
        return bytes(body), response.headers.get("content-type")
    finally:
        response.close()


def _drain(response: httpx.Response, limit: int = 64 * 1024) -> None:
    """Read and drop up to `limit` bytes of a body we will not use (a bigger one is cut off)."""
    received = 0
    try:
        for chunk in response.iter_raw():
            received += len(chunk)
            if received >= limit:
                break
    except httpx.HTTPError:
        pass


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

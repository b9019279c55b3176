"""Which URLs may be fetched: http(s) only, and (unless allowed) only hosts with public addresses.

A server that fetches URLs strangers send must not be turned against its own network (SSRF):
``http://127.0.0.1:...`` admin ports, ``http://169.254.169.254/`` (cloud metadata with
credentials), hosts on the private LAN, ``file://`` and friends. `vet` parses a URL, resolves
its host once and refuses it if *any* address is not public (loopback, private, link-local,
multicast, reserved, unspecified, shared/CGNAT, or an IPv4-mapped / 6to4 IPv6 form of those);
the caller then connects to the vetted address itself (see client.py), so a second DNS answer
cannot swap in a private one (DNS rebinding). Every redirect hop is vetted again.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from .errors import FetchError, UnsafeURL

__all__ = ["ALLOW_HINT", "AddressPolicy", "Target", "check_address", "resolve_host", "vet"]

ALLOW_HINT = "set IMAGEFINDER_ALLOW_PRIVATE_URLS=1 to allow it on a server used only locally"
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_SCHEMES = ("http", "https")


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
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
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


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses may be connected to.

    ``allow_private`` lifts the check (a server used on one's own machine, a crawl of one's own
    LAN); ``allowed`` lists addresses or networks allowed although not public
    (``("10.1.2.3", "192.168.0.0/16")``); ``hint`` tells a refused person how to allow it.
    """

    allow_private: bool = False
    allowed: tuple[str, ...] = ()
    hint: str = ALLOW_HINT

    def __post_init__(self) -> None:
        self.networks  # noqa: B018 - a typo fails here, not on the 10,000th URL

    @functools.cached_property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed)

    def refusal(self, address: str) -> str | None:
        """Why connecting to `address` is refused, or None when it is allowed."""
        if self.allow_private:
            return None
        reason = check_address(address)
        if reason is None or any(ipaddress.ip_address(address) in net for net in self.networks):
            return None
        return reason


@dataclass(frozen=True)
class Target:
    """A vetted URL and the address to connect to (None: let the client resolve it, unchecked)."""

    url: httpx.URL
    address: str | None


def vet(url: str, policy: AddressPolicy, *, pin: bool = True, credentials: bool = False) -> Target:
    """Check `url` and (with `pin`) resolve its host, every address against `policy`.

    Without `pin` the host is not resolved here, which is only allowed when the policy allows
    every address; `credentials` allows a ``user:password@`` part (a trusted list's basic auth).
    Raises UnsafeURL for a refusal, FetchError when the host does not resolve.
    """
    parsed, host = _parse(url, credentials)
    if not pin:
        if not policy.allow_private:
            raise ValueError("an unpinned fetch cannot check addresses")
        return Target(parsed, None)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = resolve_host(host, port)
    except (OSError, UnicodeError) as exc:
        again = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
        raise FetchError(f"cannot resolve host '{host}': {getattr(exc, 'strerror', None) or exc}",
                         retryable=again) from None
    if not addresses:
        raise FetchError(f"cannot resolve host '{host}'")
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            # the sentence goes back to whoever sent the URL (an API caller): never what a name
            # resolves to on this side (an internal DNS oracle); the crawl's reason keeps it for the log
            raise UnsafeURL(f"refused to fetch from '{host}': address not allowed ({reason}); "
                            f"only public hosts can be fetched ({policy.hint})",
                            f"refused: private address: '{host}' resolves to {address}, {reason} "
                            "(allow_private is off)")
    return Target(parsed, addresses[0])


def _parse(url: str, credentials: bool) -> tuple[httpx.URL, str]:
    """The parsed http(s) URL and its host, or UnsafeURL."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoded here, so a malformed IDNA name (http://xn--/) is an invalid URL too
    except (httpx.InvalidURL, TypeError, ValueError) as exc:  # UnicodeError (IDNA) is a ValueError
        raise UnsafeURL(f"invalid URL: {exc}") from None
    if parsed.scheme not in _SCHEMES:
        raise UnsafeURL(f"URL scheme '{parsed.scheme or '(none)'}' is not allowed; use an http:// or https:// URL",
                        f"unsupported URL scheme '{parsed.scheme}'")
    if not host:
        raise UnsafeURL("invalid URL: it has no host name", "invalid URL: no host")
    if parsed.userinfo and not credentials:
        raise UnsafeURL("URLs with a user name or password are not allowed")
    return parsed, host

"""Who may change an index through the servers (the API, and the web page's /api forwarder).

Reads are open. A write (adding or deleting images, any request that is not a GET, HEAD,
OPTIONS or a search) passes three checks, in this order:

1. Read-only: `IMAGEFINDER_READ_ONLY=1` (or a server listening beyond this machine without a
   token) refuses every write with 403.
2. Cross-site: a browser request sent by a page of another origin is refused with 403 whatever
   credentials it carries. Browsers say where a request comes from in `Origin` (sent with every
   POST and DELETE, simple multipart forms included) and `Sec-Fetch-Site`; either one naming a
   foreign site is enough to refuse. A request with neither is not from a web page (curl, the
   CLI, a script, the page's forwarder) and has no ambient credentials to abuse.
3. Credentials: with a token set, `Authorization: Bearer <token>` (compared in constant time),
   else 401. Without a token, writes are accepted only from this machine: the client address,
   every address in `X-Forwarded-For` and the `Host` the request was sent to (DNS rebinding:
   a foreign page whose name resolves to 127.0.0.1 sends its own name as Host) must be loopback.

Pure functions over plain values, so the API (FastAPI) and the page (Flask) share one policy.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ImageFinderError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
SAME_SITE_VALUES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values that are never foreign


class AccessDenied(ImageFinderError, PermissionError):
    """A write refused; `status` is 401 (credentials) or 403 (never allowed), the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="imagefinder"'} if self.status == 401 else {}


@dataclass(frozen=True)
class WritePolicy:
    token: str | None = None
    read_only: bool = False
    read_only_reason: str = "the server was started with IMAGEFINDER_READ_ONLY=1"
    trusted_origins: tuple[str, ...] = ()  # other origins whose pages may write (with the token)


@dataclass(frozen=True)
class WriteRequest:
    """What the checks read from one request (header names lower-case)."""

    client: str | None  # the peer's address
    scheme: str
    headers: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value.strip() if value is not None else None


def check_write(policy: WritePolicy, request: WriteRequest) -> None:
    """Raise AccessDenied unless `request` may change the index under `policy`."""
    if policy.read_only:
        raise AccessDenied(403, f"this server is read-only ({policy.read_only_reason}): it answers searches "
                                "but does not add or delete images")
    foreign = cross_site(request, policy.trusted_origins)
    if foreign:
        raise AccessDenied(403, f"cross-site request refused: {foreign}; changes to the index are accepted only "
                                "from the ImageFinder page itself or from non-browser clients")
    if policy.token is not None:
        if not bearer_matches(request.get("authorization"), policy.token):
            given = "a wrong token" if request.get("authorization") else "no token"
            raise AccessDenied(401, f"this change needs the API token ({given} was sent): send the header "
                                    "'Authorization: Bearer <token>' with the value of IMAGEFINDER_API_TOKEN")
        return
    outside = not_local(request)
    if outside:
        raise AccessDenied(403, f"without an API token, changes are accepted only from this machine ({outside}); "
                                "start the server with IMAGEFINDER_API_TOKEN set to accept them from elsewhere")


def bearer_matches(authorization: str | None, token: str) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest on bytes: constant time whatever the characters, no early exit on length
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def origin_of(url: str) -> str | None:
    """scheme://host[:port] in lower case with the default port dropped, None if not an http(s) origin."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def cross_site(request: WriteRequest, trusted: tuple[str, ...] = ()) -> str | None:
    """Why the request comes from a foreign page, or None. Own origin = scheme + the Host it was sent to."""
    own = origin_of(f"{request.scheme}://{request.get('host') or ''}")
    allowed = {own} | {origin_of(o) for o in trusted if o != "*"}
    origin = request.get("origin")
    site = (request.get("sec-fetch-site") or "").lower()
    marked = bool(site) and site not in SAME_SITE_VALUES
    if origin is not None:
        given = origin_of(origin)
        if given is None:  # "null": sandboxed frames, file: pages, some redirects
            return f"the page's origin is {origin[:80]!r}"
        if given not in allowed:
            return f"it was sent by a page of {given}"
        if given == own and marked:  # the browser saw another site than the Host says: trust the browser
            return f"the browser marked it Sec-Fetch-Site: {site}"
    elif marked:
        return f"the browser marked it Sec-Fetch-Site: {site}"
    return None


def is_loopback_address(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def is_loopback_name(host: str | None) -> bool:
    """A Host header value (name[:port]) that can only mean this machine."""
    if not host:
        return False
    parts = urlsplit(f"//{host.strip()}")
    try:
        name = (parts.hostname or "").rstrip(".")
    except ValueError:
        return False
    return name in LOOPBACK_NAMES or is_loopback_address(name)


def not_local(request: WriteRequest) -> str | None:
    """Why the request may not come from this machine, or None."""
    if not is_loopback_address(request.client):
        return "the client is not on this machine"
    forwarded = [a for a in (request.get("x-forwarded-for") or "").split(",") if a.strip()]
    if any(not is_loopback_address(a) for a in forwarded):
        return "it was forwarded for a client on another machine"
    for name in ("host", "x-forwarded-host"):
        value = request.get(name)
        if (value is not None or name == "host") and not is_loopback_name(value):
            header = "its Host header" if name == "host" else "its forwarded host (X-Forwarded-Host)"
            return f"{header} does not name this machine"
    return None


def is_loopback_bind(host: str) -> bool:
    """Whether a server listening on `host` is reachable from this machine only."""
    return is_loopback_name(host)

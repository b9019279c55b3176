"""The one HTTP client: vetted and pinned connections, redirects by hand, caps while streaming.

`fetch_with` is every fetch ImageFinder makes, the crawl's and the API's:

- each hop's URL is vetted by the address policy (policy.py) and, when pinned, the request
  goes to the vetted IP itself (the URL's host is sent as the ``Host`` header and as TLS SNI,
  so certificates still verify): a second DNS answer cannot swap in another address;
- redirects are followed by hand, at most ``max_redirects`` hops, each hop vetted again;
- one timeout per network operation plus a wall-clock deadline for the whole fetch
  (`DEADLINE_FACTOR` x the timeout, retries included), a floor on the body's rate once it
  has streamed for one timeout (`MIN_BYTES_PER_S`), and a byte cap enforced while
  streaming, on the wire and after Content-Encoding, which is decoded here in bounded pieces
  (encoding.py), so a compression bomb stops at the cap (a ``Content-Length`` over the cap is
  refused unread);
- transient failures are retried by the retry policy (retry.py);
- every failure is a FetchError (errors.py) whose message names the URL's host.

`safe_fetch` is the API's use of it: a URL a stranger sent, pinned, private addresses refused
unless allowed, the body returned as bytes. A pinned client ignores environment proxies (a
proxy would make the IP check meaningless).
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx

from .encoding import ACCEPT_ENCODING, Decoder
from .errors import FetchError, FetchTooLarge, UnsafeURL
from .policy import AddressPolicy, Target, vet
from .retry import Deadline, RetryPolicy, parse_retry_after, with_retries

__all__ = ["USER_AGENT", "Body", "Fetched", "Limits", "fetch_with", "make_client", "safe_fetch"]

USER_AGENT = "imagefinder/0.1 (+https://github.com/imagefinder)"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
DEADLINE_FACTOR = 3
# A body slower than this on average, once it has streamed for one timeout, is given up (curl's
# --speed-limit/--speed-time): a peer trickling a byte every few seconds never trips the per-read
# timeout and would hold a worker until the whole-fetch deadline.
MIN_BYTES_PER_S = 1024
_REDIRECTS = (301, 302, 303, 307, 308)
CONNECTING, READING = "connecting to", "reading from"

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Per-operation timeout (seconds), byte cap and redirect hops of one fetch."""

    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = 3


@dataclass(frozen=True)
class Fetched:
    """The body of a successful fetch and the URL it finally came from (after redirects)."""

    content: bytes
    url: str
    content_type: str | None


def make_client(timeout: float, *, connections: int | None = None, trust_env: bool = False) -> httpx.Client:
    """A client for `fetch_with` (one per downloader, so connections are pooled across URLs)."""
    # without `connections`, httpx's default pool (100 connections, 20 kept alive)
    limits = httpx.Limits(max_connections=connections or 100, max_keepalive_connections=connections or 20)
    return httpx.Client(trust_env=trust_env, follow_redirects=False, timeout=httpx.Timeout(timeout), limits=limits,
                        headers={"User-Agent": USER_AGENT})


@dataclass
class Body:
    """A successful response whose body is still to be read, within the fetch's limits."""

    response: httpx.Response
    url: httpx.URL  # the URL it came from, after redirects (not the pinned address)
    limits: Limits
    deadline: Deadline

    @property
    def content_type(self) -> str | None:
        return self.response.headers.get("content-type")

    def read_into(self, sink: Callable[[bytes], object]) -> None:
        """Hand the decoded body to `sink` piece by piece; FetchTooLarge past the cap, FetchError past the deadline.

        The cap counts the bytes on the wire and the decoded bytes both, as they stream: the
        Content-Encoding is undone here in bounded pieces (encoding.py), never by httpx, whose
        decoders inflate a whole network chunk at once (a 2 KB gzip-of-gzip is 1 GiB).
        """
        cap, host = self.limits.max_bytes, self.url.host
        length = self.response.headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > cap:
            raise FetchTooLarge(f"the image at {_shown(self.url)} is too large: {int(length)} bytes, the limit is {cap}",
                                f"too large: Content-Length {int(length)} exceeds {cap} bytes")
        decoder = Decoder(self.response.headers.get("content-encoding"))
        wire = received = 0
        started = time.monotonic()

        def take(pieces: Iterable[bytes]) -> None:
            nonlocal received
            for piece in pieces:
                received += len(piece)
                if received > cap:
                    raise self._too_large(cap)
                sink(piece)

        try:
            for chunk in self.response.iter_raw():
                wire += len(chunk)
                if wire > cap:
                    raise self._too_large(cap)
                take(decoder.decode(chunk))
                self._check_rate(wire, time.monotonic() - started)
                if self.deadline.passed():
                    raise FetchError(f"timed out reading from '{host}'", f"timeout after {self.deadline.total:g}s total")
            take(decoder.finish())
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _request_error(exc, host, self.limits.timeout, READING) from None

    def _check_rate(self, wire: int, elapsed: float) -> None:
        if elapsed > self.limits.timeout and wire < MIN_BYTES_PER_S * elapsed:
            raise FetchError(f"'{self.url.host}' sends too slowly: {wire} bytes in {elapsed:.0f} s "
                             f"(under {MIN_BYTES_PER_S} bytes/s)", f"too slow: under {MIN_BYTES_PER_S} bytes/s")

    def _too_large(self, cap: int) -> FetchTooLarge:
        encoding = self.response.headers.get("content-encoding")
        decoded = f" once decoded (Content-Encoding: {encoding[:40]})" if encoding else ""
        return FetchTooLarge(f"the image at {_shown(self.url)} is too large: more than {cap} bytes{decoded}",
                             f"too large: more than {cap} bytes{decoded}")

    def read(self) -> bytes:
        body = bytearray()
        self.read_into(body.extend)
        return bytes(body)


def fetch_with(client: httpx.Client, url: str, receive: Callable[[Body], T], *, limits: Limits,
               policy: AddressPolicy, retry: RetryPolicy | None = None, pin: bool = True,
               credentials: bool = False, user_agent: str = USER_AGENT) -> T:
    """GET `url` under the rules in the module doc; `receive` reads the successful response's body.

    `receive` runs once per attempt (it may raise FetchError, retryable or not); what it
    returns is returned. Raises FetchError (UnsafeURL, FetchTooLarge) when every attempt failed.
    """
    deadline = Deadline(DEADLINE_FACTOR * limits.timeout)

    def attempt() -> T:
        with _open(client, url, limits, policy, pin, credentials, user_agent) as response:
            return receive(Body(response[0], response[1], limits, deadline))

    return with_retries(attempt, retry or RetryPolicy(), deadline, url)


@contextmanager
def _open(client: httpx.Client, url: str, limits: Limits, policy: AddressPolicy, pin: bool, credentials: bool,
          user_agent: str) -> Iterator[tuple[httpx.Response, httpx.URL]]:
    """The successful response for `url` and the URL it came from, redirects followed and vetted."""
    current = url
    for hop in range(limits.max_redirects + 1):
        target = vet(current, policy, pin=pin, credentials=credentials)
        response = _send(client, target, limits.timeout, user_agent)
        try:
            if response.status_code in _REDIRECTS or not response.is_success:
                _drain(response)  # a short error page or redirect body: read it, so closing is clean
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise FetchError(f"HTTP {response.status_code} redirect without a Location header",
                                     _status_text(response))
                if hop == limits.max_redirects:
                    break
                current = str(target.url.join(location))
                continue
            if not response.is_success:
                raise _status_error(response)
            yield response, target.url
            return
        finally:
            response.close()
    raise UnsafeURL(f"too many redirects (more than {limits.max_redirects})")


def _send(client: httpx.Client, target: Target, timeout: float, user_agent: str) -> httpx.Response:
    """One GET, to the vetted address when there is one: the only place a connection is opened."""
    url = target.url
    # only what encoding.Decoder can undo in bounded pieces
    headers = {"User-Agent": user_agent, "Accept": "image/*", "Accept-Encoding": ACCEPT_ENCODING}
    extensions: dict[str, object] = {}
    if target.address is not None:
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
    request = client.build_request("GET", url if target.address is None else url.copy_with(host=target.address),
                                   headers=headers, extensions=extensions)
    request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
    try:
        return client.send(request, stream=True, follow_redirects=False)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _request_error(exc, url.host, timeout, CONNECTING) from None


def _shown(url: httpx.URL) -> str:
    """A URL as an error message names it: without credentials or query (either may hold a secret)."""
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def _status_text(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _status_error(response: httpx.Response) -> FetchError:
    """A non-2xx answer; only 429 and 5xx are worth retrying."""
    code, text = response.status_code, _status_text(response)
    return FetchError(f"the server answered {text}", text, retryable=code == 429 or code >= 500,
                      retry_after=parse_retry_after(response.headers.get("retry-after")))


def _request_error(exc: httpx.HTTPError | httpx.InvalidURL, host: str, timeout: float, phase: str) -> FetchError:
    """Name what went wrong below HTTP: a timeout, DNS, TLS, a cut-off body, a peer that does not speak HTTP."""
    text = _describe(exc)
    if isinstance(exc, httpx.TimeoutException):
        # Waiting to connect or for the answer may be a passing overload: tried again. A body that
        # stalls for a whole timeout after the answer began is not (it would hold a worker until
        # the deadline, retry after retry).
        return FetchError(f"timed out after {timeout:g} s {phase} '{host}'", f"timeout after {timeout:g}s",
                          retryable=phase == CONNECTING)
    message = f"cannot connect to '{host}': {text}" if phase == CONNECTING else f"download from '{host}' failed: {text}"
    if not isinstance(exc, httpx.TransportError):
        kind = "corrupt response" if isinstance(exc, httpx.DecodingError) else "request failed"
        return FetchError(message, f"{kind}: {text}")
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLError):  # a handshake that failed fails again
        return FetchError(message, "TLS/SSL error: " + re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(cause)))
    if isinstance(cause, socket.gaierror):
        return FetchError(message, f"cannot resolve host '{host}': {cause.strerror or cause}",
                          retryable=cause.errno == socket.EAI_AGAIN)
    if isinstance(exc, httpx.RemoteProtocolError):
        if "complete message body" in text:
            return FetchError(message, f"incomplete download: {text}", retryable=True)
        if "without sending a response" not in text:
            return FetchError(message, f"invalid HTTP response: {text[:80]}")
    return FetchError(message, f"connection failed: {text}", retryable=True)


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


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
    """Exception text, falling back to its type when the message is empty."""
    return str(exc) or type(exc).__name__


def safe_fetch(url: str, *, allow_private: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
               timeout: float = DEFAULT_TIMEOUT, max_redirects: int = 3,
               client: httpx.Client | None = None) -> Fetched:
    """GET a URL someone sent to a server: pinned, vetted at every hop, capped; never a partial body.

    ``allow_private=True`` lifts the address check (for a server used on one's own machine,
    where fetching from ``localhost`` is the point); the scheme, redirect, time and size limits
    stay. Raises FetchError (or its subclasses UnsafeURL, FetchTooLarge).
    """
    own = client is None
    client = client or make_client(timeout)
    try:
        return fetch_with(client, url, lambda body: Fetched(body.read(), str(body.url), body.content_type),
                          limits=Limits(timeout, max_bytes, max_redirects), policy=AddressPolicy(allow_private))
    finally:
        if own:
            client.close()

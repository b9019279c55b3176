"""Ingest stage for URL sources: download images into an on-disk cache.

Every URL ends up as a :class:`FetchResult`; a bad URL never raises, so one
broken link cannot abort a crawl of a million. Successful downloads are cached
under ``sha256(url)`` and written atomically, so an interrupted run leaves no
half-written files and a re-run only fetches what is still missing (failures
are deliberately not cached, so they are retried next time).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

import httpx

from . import netsafe

logger = logging.getLogger(__name__)

__all__ = [
    "DownloadConfig",
    "Downloader",
    "FetchResult",
    "cache_path",
    "fetch",
    "sniff_image_type",
    "summarize_failures",
]

_ALLOWED_SCHEMES = ("http", "https")
_MAX_REDIRECTS = 5
_SNIFF_LEN = 12  # enough for every signature below (WEBP needs 12)
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0
_RETRY_AFTER_CAP = 30.0
_DEADLINE_FACTOR = 3
_ACCEPTED_NON_IMAGE_TYPES = ("application/octet-stream",)

# Indirection so tests can skip real back-off waits without patching time.sleep
# for every thread in the process.
_sleep = time.sleep


@dataclass(frozen=True)
class DownloadConfig:
    """Knobs for the downloader; defaults suit a polite bulk crawl.

    ``allow_private=False`` refuses URLs whose host resolves to a loopback, private, link-local
    or otherwise non-public address (checked before every request, redirects included), except
    the addresses or networks in ``allowed_private`` (e.g. ``("10.1.2.3", "192.168.0.0/16")``).
    The default allows them: indexing images from one's own LAN or localhost is normal for a
    crawl a user starts. Unlike :func:`imagefinder.netsafe.safe_fetch` (what the API uses for
    URLs strangers send), the connection is not pinned to the vetted address, so DNS rebinding
    is not prevented; a CSV is trusted input.
    """

    cache_dir: Path
    timeout: float = 20.0
    retries: int = 3
    max_bytes: int = 50 * 1024 * 1024
    workers: int = 16
    user_agent: str = "imagefinder/0.1 (+https://github.com/imagefinder)"
    allow_private: bool = True
    allowed_private: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for network in self.allowed_private:
            ipaddress.ip_network(network, strict=False)  # a typo fails here, not on the 10,000th URL


@dataclass(frozen=True)
class FetchResult:
    """Outcome for one URL: a cached file path, or a short human-readable error."""

    url: str
    path: Path | None
    error: str | None
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        """True when the image is available on disk."""
        return self.error is None and self.path is not None


@dataclass(frozen=True)
class _Attempt:
    """Result of one HTTP attempt; tells the retry loop whether to try again."""

    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


# --- helpers ---------------------------------------------------------------


def cache_path(url: str, cache_dir: Path) -> Path:
    """Cache location for ``url``: hashing keeps names safe and fixed-length."""
    return Path(cache_dir) / hashlib.sha256(url.encode("utf-8")).hexdigest()


def sniff_image_type(head: bytes) -> str | None:
    """Identify an image format from its magic bytes; servers lie about Content-Type."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def _check_url(url: str) -> str | None:
    """Reject URLs we cannot or should not fetch before touching the network."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"invalid URL: {exc}"
    if parsed.scheme not in _ALLOWED_SCHEMES:
        return f"unsupported URL scheme '{parsed.scheme}'"
    if not parsed.host:
        return "invalid URL: no host"
    return None


class _PrivateAddress(Exception):
    """Raised from the request hook: the request's host resolves to a refused address."""


def _private_address_error(url: httpx.URL, config: DownloadConfig) -> str | None:
    """Why `url` must not be fetched under ``allow_private=False``, or None."""
    if config.allow_private or not url.host:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = netsafe.resolve_host(url.host, port)
    except (OSError, UnicodeError):
        return None  # the connection attempt reports the DNS failure
    allowed = [ipaddress.ip_network(n, strict=False) for n in config.allowed_private]
    for address in addresses:
        reason = netsafe.check_address(address)
        if reason is not None and not any(ipaddress.ip_address(address) in net for net in allowed):
            return f"refused: private address: '{url.host}' resolves to {address}, {reason} (allow_private is off)"
    return None


def _make_client(config: DownloadConfig) -> httpx.Client:
    """One client per downloader, so connections are pooled across URLs."""

    def vet(request: httpx.Request) -> None:  # runs before every request, each redirect hop too
        if (error := _private_address_error(request.url, config)) is not None:
            raise _PrivateAddress(error)

    return httpx.Client(
        event_hooks={"request": [vet]} if not config.allow_private else None,
        follow_redirects=True,
        max_redirects=_MAX_REDIRECTS,
        timeout=httpx.Timeout(config.timeout),
        limits=httpx.Limits(
            max_connections=config.workers,
            max_keepalive_connections=config.workers,
        ),
        headers={"User-Agent": config.user_agent},
    )


def _backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Exponential back-off, unless the server told us how long to wait."""
    if retry_after is not None:
        return min(retry_after, _RETRY_AFTER_CAP)
    return min(_BACKOFF_BASE * 2**attempt, _BACKOFF_CAP)


def _parse_retry_after(value: str | None) -> float | None:
    """Numeric Retry-After only; HTTP-date values fall back to our own back-off."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _seconds(value: float) -> str:
    """Format seconds compactly (20.0 -> '20s', 0.5 -> '0.5s')."""
    return f"{value:g}s"


# --- response --------------------------------------------------------------


def _status_attempt(response: httpx.Response) -> _Attempt:
    """Map a non-2xx status to an error; only 429 and 5xx are worth retrying."""
    code = response.status_code
    error = f"HTTP {code} {response.reason_phrase}".strip()
    retryable = code == 429 or code >= 500
    retry_after = _parse_retry_after(response.headers.get("retry-after"))
    return _Attempt(error, retryable=retryable, retry_after=retry_after)


def _header_error(response: httpx.Response, config: DownloadConfig) -> str | None:
    """Refuse early on headers alone, before spending bandwidth on the body."""
    content_type = response.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "image/svg+xml":
        return "unsupported image format SVG (content-type image/svg+xml; vector images are not supported)"
    if media_type and not (
        media_type.startswith("image/") or media_type in _ACCEPTED_NON_IMAGE_TYPES
    ):
        return f"not an image: content-type {media_type}"
    length = response.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > config.max_bytes:
        return (
            f"too large: Content-Length {int(length)} exceeds {config.max_bytes} bytes"
        )
    return None


def _signature_error(head: bytes) -> str | None:
    """Check magic bytes, so HTML error pages served as image/jpeg are caught."""
    if not head:
        return "not an image: empty body"
    if sniff_image_type(head) is None:
        return "not an image: unrecognised file signature"
    return None


def _stream_to_file(
    response: httpx.Response, fh: BinaryIO, config: DownloadConfig, deadline: float
) -> _Attempt:
    """Copy the body to ``fh``, enforcing size, signature and wall-clock limits."""
    head = b""
    received = 0
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > config.max_bytes:
            return _Attempt(f"too large: more than {config.max_bytes} bytes")
        if time.monotonic() > deadline:
            total = _seconds(config.timeout * _DEADLINE_FACTOR)
            return _Attempt(f"timeout after {total} total")
        if len(head) < _SNIFF_LEN:
            head = (head + chunk)[:_SNIFF_LEN]
            if len(head) >= _SNIFF_LEN and (error := _signature_error(head)):
                return _Attempt(error)
        fh.write(chunk)
    return _Attempt(_signature_error(head))


def _save_body(
    response: httpx.Response, path: Path, config: DownloadConfig, deadline: float
) -> _Attempt:
    """Stream into a temp file and rename it, so the cache never holds partial files."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    except OSError as exc:
        logger.warning("cannot create cache file in %s: %s", path.parent, exc)
        return _Attempt(f"cache write failed: {exc}")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            outcome = _stream_to_file(response, fh, config, deadline)
        if outcome.error is None:
            os.replace(tmp, path)
        return outcome
    except OSError as exc:
        logger.warning("cannot write cache file %s: %s", path, exc)
        return _Attempt(f"cache write failed: {exc}")
    finally:
        tmp.unlink(missing_ok=True)


def _handle_response(
    response: httpx.Response, path: Path, config: DownloadConfig, deadline: float
) -> _Attempt:
    """Validate status and headers, then save the body."""
    if not response.is_success:
        return _status_attempt(response)
    error = _header_error(response, config)
    if error is not None:
        return _Attempt(error)
    return _save_body(response, path, config, deadline)


# --- fetch -----------------------------------------------------------------


def _attempt_once(
    url: str, path: Path, config: DownloadConfig, client: httpx.Client, deadline: float
) -> _Attempt:
    """One GET; network failures become retryable errors instead of exceptions."""
    # Checked here too, for a caller-supplied client without the hook (which checks redirects).
    if (error := _private_address_error(httpx.URL(url), config)) is not None:
        return _Attempt(error)
    try:
        with client.stream(
            "GET",
            url,
            headers={"User-Agent": config.user_agent},
            timeout=httpx.Timeout(config.timeout),
            follow_redirects=True,
        ) as response:
            return _handle_response(response, path, config, deadline)
    except httpx.TimeoutException:
        return _Attempt(f"timeout after {_seconds(config.timeout)}", retryable=True)
    except httpx.TooManyRedirects:
        return _Attempt(f"too many redirects (more than {_MAX_REDIRECTS})")
    except _PrivateAddress as exc:
        return _Attempt(str(exc))
    except httpx.TransportError as exc:
        return _transport_attempt(exc)
    except httpx.DecodingError as exc:
        return _Attempt(f"corrupt response: {_describe(exc)}")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _Attempt(f"request failed: {_describe(exc)}")


def _transport_attempt(exc: httpx.TransportError) -> _Attempt:
    """Name what went wrong below HTTP: DNS, TLS, a cut-off body, a peer that does not speak HTTP."""
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLError):
        detail = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(cause))
        return _Attempt(f"TLS/SSL error: {detail}")  # a handshake that failed fails again
    if isinstance(cause, socket.gaierror):
        host = exc.request.url.host if _has_request(exc) else "?"
        return _Attempt(f"cannot resolve host '{host}': {cause.strerror or cause}",
                        retryable=cause.errno == socket.EAI_AGAIN)
    if isinstance(exc, httpx.RemoteProtocolError):
        text = _describe(exc)
        if "complete message body" in text:
            return _Attempt(f"incomplete download: {text}", retryable=True)
        if "without sending a response" not in text:
            return _Attempt(f"invalid HTTP response: {text[:80]}")
    return _Attempt(f"connection failed: {_describe(exc)}", retryable=True)


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018 - raises RuntimeError when unset
    except RuntimeError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """Exception text, falling back to its type when the message is empty."""
    return str(exc) or type(exc).__name__


def _download(
    url: str, path: Path, config: DownloadConfig, client: httpx.Client
) -> FetchResult:
    """Retry loop: back off on transient failures, within a per-URL wall-clock cap."""
    deadline = time.monotonic() + config.timeout * _DEADLINE_FACTOR
    outcome = _Attempt("not attempted")
    for attempt in range(config.retries + 1):
        outcome = _attempt_once(url, path, config, client, deadline)
        if outcome.error is None:
            logger.debug("fetched %s -> %s", url, path)
            return FetchResult(url, path, None)
        if not outcome.retryable or attempt == config.retries:
            break
        delay = _backoff_delay(attempt, outcome.retry_after)
        if time.monotonic() + delay >= deadline:
            break
        logger.debug("retrying %s in %.2fs after: %s", url, delay, outcome.error)
        _sleep(delay)
    logger.info("failed %s: %s", url, outcome.error)
    return FetchResult(url, None, outcome.error)


def fetch(
    url: str, config: DownloadConfig, client: httpx.Client | None = None
) -> FetchResult:
    """Fetch one URL into the cache; a cache hit returns without any network I/O."""
    path = cache_path(url, config.cache_dir)
    if path.is_file():
        return FetchResult(url, path, None, from_cache=True)
    error = _check_url(url)
    if error is not None:
        return FetchResult(url, None, error)
    if client is not None:
        return _download(url, path, config, client)
    with _make_client(config) as own_client:
        return _download(url, path, config, own_client)


class Downloader:
    """Concurrent fetcher sharing one connection pool and one thread pool."""

    def __init__(self, config: DownloadConfig) -> None:
        if config.workers < 1:
            raise ValueError(f"workers must be >= 1, got {config.workers}")
        self.config = config
        Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
        self._client = _make_client(config)
        self._executor = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="imagefinder-download"
        )

    def fetch(self, url: str) -> FetchResult:
        """Fetch one URL in the calling thread, reusing the pooled client."""
        return fetch(url, self.config, self._client)

    def fetch_many(self, urls: Iterable[str]) -> Iterator[FetchResult]:
        """Yield results in input order, keeping only ~2*workers URLs in flight.

        The bound keeps memory flat for huge (even endless) URL streams.
        """
        window = 2 * self.config.workers
        pending: deque[Future[FetchResult]] = deque()
        try:
            for url in urls:
                pending.append(self._executor.submit(self.fetch, url))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop workers (dropping queued work) and close the connection pool."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- reporting -------------------------------------------------------------

_CATEGORIES = (
    "timeout",
    "too large",
    "not an image",
    "connection failed",
    "cannot resolve host",
    "TLS/SSL error",
    "incomplete download",
    "invalid HTTP response",
    "refused: private address",
    "unsupported URL scheme",
    "invalid URL",
    "too many redirects",
    "corrupt response",
    "cache write failed",
    "request failed",
)
_HTTP_STATUS = re.compile(r"^HTTP \d{3}")


def _failure_category(error: str) -> str:
    """Collapse URL- and number-specific details so failures can be tallied."""
    match = _HTTP_STATUS.match(error)
    if match:
        return match.group(0)
    for category in _CATEGORIES:
        if error.startswith(category):
            return category
    return re.sub(r"\d+", "N", error.split(":", 1)[0]).strip()


def summarize_failures(results: Iterable[FetchResult]) -> dict[str, int]:
    """Count failures by category, most common first, for an end-of-run report."""
    counts = Counter(
        _failure_category(result.error)
        for result in results
        if result.error is not None
    )
    return dict(counts.most_common())

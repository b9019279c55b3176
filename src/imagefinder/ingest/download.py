"""Ingest stage for URL sources: download images into an on-disk cache.

Every URL ends up as a :class:`FetchResult`; a bad URL never raises, so one broken link
cannot abort a crawl of a million. The fetching itself - address policy, redirects, size cap,
deadline, retries, error wording - is the one network layer (`imagefinder.net`); this module
adds what a crawl needs on top: a cache under ``sha256(url)``, written atomically, so an
interrupted run leaves no half-written files and a re-run only fetches what is still missing
(failures are deliberately not cached, so they are retried next time), and a check that what
arrives is an image (servers lie about Content-Type).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Self

import httpx

from ..atomic import atomic_path
from ..net.client import USER_AGENT, Body, Limits, fetch_with, make_client
from ..net.errors import FetchError
from ..net.policy import AddressPolicy
from ..net.retry import RetryPolicy
from .decode import sniff_image_type

logger = logging.getLogger(__name__)

__all__ = ["DownloadConfig", "Downloader", "FetchResult", "cache_path", "fetch"]

MAX_REDIRECTS = 5
_SNIFF_LEN = 12  # enough for every signature sniff_image_type knows (WEBP needs 12)
_ACCEPTED_NON_IMAGE_TYPES = ("application/octet-stream",)


@dataclass(frozen=True)
class DownloadConfig:
    """Knobs for the downloader; defaults suit a polite bulk crawl.

    ``allow_private=False`` refuses URLs whose host resolves to a loopback, private, link-local
    or otherwise non-public address (checked before every request, redirects included), except
    the addresses or networks in ``allowed_private`` (e.g. ``("10.1.2.3", "192.168.0.0/16")``);
    the connection then goes to the vetted address, as for the API's fetches. The default
    allows them: indexing images from one's own LAN or localhost is normal for a crawl a user
    starts (a CSV is trusted input), and environment proxies are then honoured.
    """

    cache_dir: Path
    timeout: float = 20.0
    retries: int = 3
    max_bytes: int = 50 * 1024 * 1024
    workers: int = 16
    user_agent: str = USER_AGENT
    allow_private: bool = True
    allowed_private: tuple[str, ...] = ()
    policy: AddressPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # built (and its networks parsed) once: a typo fails here, not on the 10,000th URL
        object.__setattr__(self, "policy", AddressPolicy(self.allow_private, self.allowed_private))

    @property
    def limits(self) -> Limits:
        return Limits(self.timeout, self.max_bytes, MAX_REDIRECTS)


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


def cache_path(url: str, cache_dir: Path) -> Path:
    """Cache location for ``url``: hashing keeps names safe and fixed-length."""
    return Path(cache_dir) / hashlib.sha256(url.encode("utf-8")).hexdigest()


def fetch(url: str, config: DownloadConfig, client: httpx.Client | None = None) -> FetchResult:
    """Fetch one URL into the cache; a cache hit returns without any network I/O."""
    path = cache_path(url, config.cache_dir)
    if path.is_file():
        return FetchResult(url, path, None, from_cache=True)
    if client is not None:
        return _download(url, path, config, client)
    with _make_client(config) as own_client:
        return _download(url, path, config, own_client)


def _make_client(config: DownloadConfig) -> httpx.Client:
    # A pinned (checked) crawl must not go through a proxy; an unchecked one may, as any client.
    return make_client(config.timeout, connections=config.workers, trust_env=config.allow_private)


def _download(url: str, path: Path, config: DownloadConfig, client: httpx.Client) -> FetchResult:
    try:
        fetch_with(client, url, lambda body: _save(body, path), limits=config.limits, policy=config.policy,
                   retry=RetryPolicy(config.retries), pin=not config.allow_private, credentials=True,
                   user_agent=config.user_agent)
    except FetchError as exc:
        logger.info("failed %s: %s", url, exc.reason)
        return FetchResult(url, None, exc.reason)
    logger.debug("fetched %s -> %s", url, path)
    return FetchResult(url, path, None)


def _save(body: Body, path: Path) -> None:
    """Stream into a temp file and rename it, so the cache never holds partial files."""
    error = _content_type_error(body.content_type or "")
    if error is not None:
        raise FetchError(error)
    try:
        with atomic_path(path, suffix=".part") as tmp, open(tmp, "wb") as fh:
            sink = _ImageSink(fh)
            body.read_into(sink)
            sink.finish()
    except OSError as exc:
        logger.warning("cannot write cache file %s: %s", path, exc)
        raise FetchError(f"cache write failed: {exc}") from None


def _content_type_error(content_type: str) -> str | None:
    """Refuse early on headers alone, before spending bandwidth on the body."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "image/svg+xml":
        return "unsupported image format SVG (content-type image/svg+xml; vector images are not supported)"
    if media_type and not (media_type.startswith("image/") or media_type in _ACCEPTED_NON_IMAGE_TYPES):
        return f"not an image: content-type {media_type}"
    return None


class _ImageSink:
    """Writes the body to a file, checking its magic bytes first, so HTML served as image/jpeg is caught."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.head = b""

    def __call__(self, chunk: bytes) -> None:
        if len(self.head) < _SNIFF_LEN:
            self.head = (self.head + chunk)[:_SNIFF_LEN]
            if len(self.head) >= _SNIFF_LEN:
                self.finish()
        self.fh.write(chunk)

    def finish(self) -> None:
        if not self.head:
            raise FetchError("not an image: empty body")
        if sniff_image_type(self.head) is None:
            raise FetchError("not an image: unrecognised file signature")


class Downloader:
    """One pooled client shared by every thread that fetches for one crawl."""

    def __init__(self, config: DownloadConfig) -> None:
        if config.workers < 1:
            raise ValueError(f"workers must be >= 1, got {config.workers}")
        self.config = config
        Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
        self._client = _make_client(config)

    def fetch(self, url: str) -> FetchResult:
        """Fetch one URL in the calling thread, reusing the pooled client."""
        return fetch(url, self.config, self._client)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

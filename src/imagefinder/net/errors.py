"""Why a URL could not be fetched, in two forms: a sentence for a person and a short reason to tally.

The API tells the person who sent a URL what went wrong (``str(exc)``: "the server answered
HTTP 404 Not Found"); a crawl of a million URLs records one short, leading-phrase reason per
item (``exc.reason``: "HTTP 404 Not Found") so failures group into a few counts. Both forms
of each failure are written once, where the failure is detected.
"""

from __future__ import annotations

from ..errors import ImageFinderError


class FetchError(ImageFinderError, ValueError):
    """A URL that could not be fetched; the message says why, in terms of the URL."""

    def __init__(self, message: str, reason: str | None = None, *, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message  # the crawl's per-item wording
        self.retryable = retryable  # a transient failure: trying again may succeed
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After)


class UnsafeURL(FetchError):
    """A URL refused by policy before (or instead of) connecting: scheme, address, redirects."""


class FetchTooLarge(FetchError):
    """The response is bigger than the byte cap."""

"""One retry policy for every fetch: exponential back-off on transient failures, Retry-After honoured.

What is transient is decided where the failure is detected (`FetchError.retryable`: HTTP 429
and 5xx, timeouts, dropped connections, a DNS server that answered "try again"); this module
only decides how long to wait and when to give up: after `retries` more attempts, when the
wait would run past the fetch's wall-clock deadline, or at once when the server asks for a
longer wait than `retry_after_cap` (``Retry-After: 3600`` is an answer, not a reason to hold a
worker: the failure is recorded with what the server asked, and a re-run tries again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import FetchError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Indirection so tests can skip real back-off waits without patching time.sleep
# for every thread in the process.
_sleep = time.sleep


class Deadline:
    """A wall-clock budget for one whole fetch (every attempt, redirect and body read)."""

    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.left() < 0


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try again, and how long to wait before each try."""

    retries: int = 0
    base: float = 0.5  # first wait; doubled after each further failure
    cap: float = 8.0
    retry_after_cap: float = 30.0  # a server asking for longer is not waited for at all

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential back-off, unless the server told us how long to wait."""
        if retry_after is not None:
            return retry_after
        return min(self.base * 2**attempt, self.cap)


def parse_retry_after(value: str | None) -> float | None:
    """Numeric Retry-After only; HTTP-date values fall back to our own back-off."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _gave_up(exc: FetchError, cap: float) -> FetchError:
    wait = f"Retry-After {exc.retry_after:g}s, longer than the {cap:g}s a fetch waits"
    return FetchError(f"{exc} and asked to retry later ({wait})", f"{exc.reason}: {wait}")  # groups as exc.reason


def with_retries(attempt: Callable[[], T], policy: RetryPolicy, deadline: Deadline, what: str) -> T:
    """Call `attempt` until it succeeds, raises a non-retryable FetchError, or retries run out."""
    for n in range(policy.retries + 1):
        try:
            return attempt()
        except FetchError as exc:
            if not exc.retryable or n == policy.retries:
                raise
            if exc.retry_after is not None and exc.retry_after > policy.retry_after_cap:
                raise _gave_up(exc, policy.retry_after_cap) from None
            delay = policy.delay(n, exc.retry_after)
            if deadline.left() <= delay:
                raise
            log.debug("retrying %s in %.2fs after: %s", what, delay, exc.reason)
            _sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

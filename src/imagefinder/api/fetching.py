"""Outbound URL downloads of the API ({"url": ...}): a bounded pool of their own, per-host limits.

A peer that trickles its answer holds a download for up to the fetch deadline. Run in the
request thread pool, 40 such downloads would leave nothing to answer /health; here they run on
`workers` threads of their own, at most `per_host` at once per host name, with as many again
waiting. Anything beyond is refused at once (429 for one busy host, 503 when all are busy), with
a Retry-After, rather than left hanging.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import urlsplit

from fastapi import HTTPException

T = TypeVar("T")
RETRY_AFTER_S = 5


def url_host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""  # refused by the URL policy once it runs


class FetchPool:
    def __init__(self, workers: int, per_host: int) -> None:
        self.workers, self.per_host, self.capacity = workers, per_host, 2 * workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        self._lock = threading.Lock()
        self._hosts: Counter[str] = Counter()
        self._admitted = 0

    async def run(self, url: str, fn: Callable[[], T]) -> T:
        """`fn()` (the download of `url`) on the pool, or HTTPException 429/503 if over a limit."""
        host = url_host(url)
        self._admit(host)
        try:
            future: Future[T] = self._executor.submit(fn)
        except BaseException:
            self._leave(host)
            raise
        # counted until the download really ends, even if this request is cancelled meanwhile
        future.add_done_callback(lambda _f: self._leave(host))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # still queued: never runs
            raise

    def _admit(self, host: str) -> None:
        with self._lock:
            if self._hosts[host] >= self.per_host:
                raise HTTPException(429, f"too many downloads from '{host}' in progress (at most {self.per_host} "
                                         f"at once); try again in a few seconds",
                                    headers={"Retry-After": str(RETRY_AFTER_S)})
            if self._admitted >= self.capacity:
                raise HTTPException(503, f"the server is busy downloading other URLs (at most {self.workers} at "
                                         "once); try again in a few seconds",
                                    headers={"Retry-After": str(RETRY_AFTER_S)})
            self._hosts[host] += 1
            self._admitted += 1

    def _leave(self, host: str) -> None:
        with self._lock:
            self._admitted -= 1
            self._hosts[host] -= 1
            if self._hosts[host] <= 0:
                del self._hosts[host]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

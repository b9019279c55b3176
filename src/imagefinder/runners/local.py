"""The local runner: the ingest stages on a thread pool in this process (the default).

Downloads and JPEG decoding release the GIL, so they proceed while onnxruntime runs the
previous batch on all cores; at most a few batches of items are in flight, so memory stays
flat on a million items, and they are taken as they finish, so a URL that takes its whole
deadline holds one thread, not the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from ..embed import Embedder
from ..ingest.download import DownloadConfig, Downloader
from ..ingest.sources import Item
from ..ingest.stages import Loaded, load_item
from .base import embed_batch

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LocalRunner:
    """Threads in this process: the default."""

    workers: int | None = None

    def run(self, items: Sequence[Item], first_id: int, embedder: Embedder, download: DownloadConfig,
            batch_size: int, on_loaded: Callable[[Loaded], None], progress: bool) -> np.ndarray:
        has_urls = any(i.is_url for i in items)
        downloader = Downloader(download) if has_urls else None
        try:
            return run_local(items, embedder, downloader, batch_size, local_workers(download, has_urls, self.workers),
                             on_loaded, progress, first_id)
        finally:
            if downloader is not None:
                downloader.close()


def local_workers(download: DownloadConfig, has_urls: bool, workers: int | None) -> int:
    """Downloads wait on the network, decoding on the CPU: size the pool for whichever dominates."""
    return workers or (download.workers if has_urls else max(4, (os.cpu_count() or 2) * 2))


class Idle:
    """What `completion_map` yields when nothing finished for `idle` seconds (the rest waits on peers)."""


IDLE = Idle()
IDLE_FLUSH_S = 1.0  # a partial batch waits this long for more before it is embedded as it is


def completion_map(fn: Callable[[T], R], items: Iterable[T], executor: Executor, ahead: int,
                   idle: float | None = None) -> Iterator[R | Idle]:
    """fn over items on `executor`, results as they complete, at most `ahead` tasks in flight.

    Completion order, not input order: a URL that trickles until its deadline holds one worker,
    never the others (in input order every result behind it waited, and the workers idled once
    `ahead` were done). Results must carry their own position (the runner's ids do). With
    `idle`, IDLE is yielded whenever nothing finished for that long.
    """
    pending: set[Future[R]] = set()

    def some_done() -> Iterator[R | Idle]:
        nonlocal pending
        done, pending = wait(pending, timeout=idle, return_when=FIRST_COMPLETED)
        if not done:
            yield IDLE
        yield from (future.result() for future in done)

    try:
        for item in items:
            pending.add(executor.submit(fn, item))
            while len(pending) >= ahead:
                yield from some_done()
        while pending:
            yield from some_done()
    finally:
        for future in pending:  # a consumer that stops early leaves no queued work behind
            future.cancel()


def batched(items: Iterable[T | Idle], size: int) -> Iterator[list[T]]:
    """Lists of `size` items; a shorter one at the end, or when the stream goes IDLE (ready work goes on)."""
    batch: list[T] = []
    for item in items:
        if not isinstance(item, Idle):
            batch.append(item)
        if batch and (len(batch) == size or isinstance(item, Idle)):
            yield batch
            batch = []
    if batch:
        yield batch


def run_local(
    items: Sequence[Item], embedder: Embedder, downloader: Downloader | None,
    batch_size: int, workers: int, on_loaded: Callable[[Loaded], None], progress: bool, first_id: int = 0,
) -> np.ndarray:
    """Embed every item as ids first_id..; returns (len(items), dim) raw features, zero rows for failures.

    `on_loaded` sees the items in the order they finish; rows of the result are by id (input order).
    """
    embeddings = np.zeros((len(items), embedder.dim), np.float32)
    bar = tqdm(total=len(items), unit="img", desc="indexing", disable=not progress, smoothing=0.1)
    failed = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
        # ids are given in input order before the work starts; results come back as they finish,
        # and what is ready is embedded when the rest waits on slow peers (IDLE)
        loaded = completion_map(lambda pair: load_item(pair[0], pair[1], embedder, downloader),
                                enumerate(items, first_id), pool, ahead=max(4 * batch_size, 2 * workers),
                                idle=IDLE_FLUSH_S)
        for batch in batched(loaded, batch_size):
            embedded = embed_batch(batch, embedder, embeddings, first_id)
            for x in batch:
                on_loaded(x)
            failed += len(batch) - embedded
            bar.update(len(batch))
            bar.set_postfix(failed=failed, refresh=False)
    bar.close()
    return embeddings

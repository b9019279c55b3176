"""What the routes share: one ImageFinder (index + model, loaded once), the settings, CPU slots.

Searches run in Starlette's thread pool (onnxruntime and FAISS release the GIL, so they
overlap); `ImageFinder` serialises writes itself and every search reads one consistent
generation. Routes get the service with `Depends(get_service)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ..duplicates import TIERS, Group, find_duplicates
from ..finder import ImageFinder, Result
from ..index import ServeLock, Store
from ..index.filters import Filter, FilterError
from ..net.client import safe_fetch
from ..net.errors import FetchError, FetchTooLarge
from ..region import Box, BoxError, crop_box
from .fetching import FetchPool
from .params import media_type
from .schemas import ImageInfo, SearchResult
from .settings import Settings
from .uploads import CheckedImage, check_image, read_body
from .writes import UPLOADS, UploadWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FoundDuplicates:
    """find_duplicates' answer on one index generation, with the members' rows (for their URLs)."""

    generation: int
    model: str
    thresholds: dict[str, Any]
    groups: list[Group]
    rows: dict[int, dict]


class Service:
    def __init__(self, finder: ImageFinder, settings: Settings) -> None:
        self.finder = finder
        self.settings = settings
        self.served = ServeLock(finder.path)  # a build that would replace the index refuses meanwhile
        self.writer = UploadWriter(finder)
        self.fetches = FetchPool(settings.fetch_workers, settings.fetch_per_host)
        self._checked = time.monotonic()
        # CPU-bound work (decode, embed, search) waits here in arrival order, so a burst of
        # requests is served first come, first served instead of all slowing each other down.
        self._cpu_slots = asyncio.Semaphore(settings.search_concurrency or os.cpu_count() or 1)
        self._duplicates: FoundDuplicates | None = None
        self._duplicates_lock = asyncio.Lock()  # one computation at a time; the others wait for its answer

    async def cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` in the thread pool once one of the CPU slots is free (FIFO)."""
        async with self._cpu_slots:
            return await run_in_threadpool(fn, *args, **kwargs)

    def close(self) -> None:
        self.fetches.close()
        self.served.release()

    def load_model(self) -> None:
        self.finder.embedder  # noqa: B018 - loads the model once

    def refresh(self) -> None:
        """Pick up updates written by another process (the CLI, another worker), at most once a second."""
        now = time.monotonic()
        if now - self._checked < self.settings.reload_interval:
            return
        self._checked = now
        try:
            self.finder.reload_if_changed()
        except Exception:  # an update being committed right now: the next request retries
            log.warning("could not reload the index", exc_info=True)

    # -- searching (in the thread pool) --------------------------------------------------------

    async def request_body(self, request: Request) -> tuple[bytes, str]:
        """A write or search request's body (413 past the size cap, 408 past the body timeout) and its media type."""
        s = self.settings
        body = await read_body(request, s.max_body_bytes, s.max_upload_bytes, timeout=s.body_timeout)
        return body, media_type(request)

    def check(self, data: bytes, what: str = "the file") -> CheckedImage:
        s = self.settings
        return check_image(data, max_bytes=s.max_upload_bytes, max_pixels=s.pixel_limit, what=what)

    def filter_of(self, where: list[str], source_prefix: str | None) -> Filter | None:
        """The request's metadata filter (None: none); an `uploads/` prefix means this server's uploads."""
        if source_prefix and source_prefix.startswith(f"{UPLOADS}/"):
            source_prefix = f"{self.writer.uploads}/{source_prefix[len(UPLOADS) + 1:]}"
        try:
            flt = Filter.parse(where, source_prefix)
        except FilterError as exc:
            raise HTTPException(422, str(exc)) from None
        return None if flt.empty else flt

    def search_upload(self, data: bytes, k: int, metric: str, where: Filter | None = None,
                      what: str = "the file", box: Box | None = None,
                      preset: str | None = None) -> tuple[CheckedImage, list[Result]]:
        image = self.check(data, what)
        return image, self.search_image(image, k, metric, where, box, preset)

    def search_image(self, image: CheckedImage, k: int, metric: str, where: Filter | None = None,
                     box: Box | None = None, preset: str | None = None) -> list[Result]:
        self.refresh()
        query = image.decoded.image
        if box is not None:  # the box is in the image's own pixels; it may have been decoded smaller (draft)
            try:
                query = crop_box(query, box, (image.decoded.width, image.decoded.height))
            except BoxError as exc:
                raise HTTPException(422, str(exc)) from None
        return self.finder.search(query, k=k, metric=metric, where=where, preset=preset)

    def search_id(self, image_id: int, k: int, metric: str, where: Filter | None = None,
                  preset: str | None = None) -> list[Result]:
        self.refresh()
        try:
            return self.finder.search_id(image_id, k=k, metric=metric, where=where, preset=preset)
        except KeyError:
            raise HTTPException(404, f"no indexed image with id {image_id}") from None

    async def fetch(self, url: str) -> CheckedImage:
        """The image at `url`: downloaded on the fetch pool, then checked (decoded) in a CPU slot."""
        data = await self.fetches.run(url, lambda: self.download(url))
        return await self.cpu(self.check, data, "the image at the URL")

    def download(self, url: str) -> bytes:
        s = self.settings
        try:
            fetched = safe_fetch(url, allow_private=s.allow_private_urls, max_bytes=s.max_upload_bytes,
                                 timeout=s.fetch_timeout)
        except FetchTooLarge as exc:
            raise HTTPException(413, f"cannot use the URL: {exc}") from None
        except FetchError as exc:
            raise HTTPException(422, f"cannot use the URL: {exc}") from None
        return fetched.content

    async def duplicates(self) -> FoundDuplicates:
        """The duplicate groups of the index as it is now: computed in a CPU slot once per generation."""
        self.refresh()
        async with self._duplicates_lock:
            store = self.finder.store  # one generation throughout, even if a write lands meanwhile
            found = self._duplicates
            if found is None or found.generation != store.generation:
                found = self._duplicates = await self.cpu(_find_duplicates, store)
            return found

    # -- rows and their public form ------------------------------------------------------------

    def live_record(self, image_id: int) -> dict:
        row = self.finder.store.records([image_id]).get(image_id)
        if row is None or row.get("status") != "ok":
            raise HTTPException(404, f"no indexed image with id {image_id}")
        return row

    def result(self, request: Request, r: Result) -> SearchResult:
        return SearchResult(rank=r.rank, id=r.id, score=r.score, source=self.writer.public_source(r.source),
                            width=r.width, height=r.height, cluster=r.cluster, meta=r.meta or {}, match=r.match,
                            **_urls(request, r.id, self.settings.public_url))

    def image_info(self, request: Request, row: dict) -> ImageInfo:
        return ImageInfo(id=row["id"], source=self.writer.public_source(row["source"]), width=row.get("width"),
                         height=row.get("height"), cluster=row.get("cluster"), meta=row.get("meta") or {},
                         **_urls(request, row["id"], self.settings.public_url))


def _find_duplicates(store: Store) -> FoundDuplicates:
    result = find_duplicates(store)
    groups = [g for tier in TIERS for g in result.get(tier, [])]
    rows = store.records(sorted({i for g in groups for i in g.ids}))
    return FoundDuplicates(store.generation, result["model"], result["thresholds"], groups, rows)


def _urls(request: Request, image_id: int, public_url: str | None) -> dict[str, str]:
    """URLs of an image: under the configured public URL, else relative to the request's own URL
    ("images/5" from /search, "../images/5" from /search/batch).

    A client resolves relative ones like links, so they stay right behind any proxy or path prefix
    (the page's /api/ forwarder); neither form is built from the client's Host header."""
    if public_url:
        return {"thumbnail_url": f"{public_url}/images/{image_id}/thumbnail",
                "image_url": f"{public_url}/images/{image_id}"}
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    up = "../" * max(path.count("/") - 1, 0)
    return {"thumbnail_url": f"{up}images/{image_id}/thumbnail", "image_url": f"{up}images/{image_id}"}


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]

"""The app factory: one Service (index + model, opened once) behind the routers and error handlers.

(Not named app.py: `imagefinder.api.app` is the lazily built application itself.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..finder import ImageFinder
from .access import WriteAccess, policy_of
from .errors import install_error_handlers
from .routers import browse, duplicates, images, matches, search, status
from .sample_index import resolve_index
from .service import Service
from .settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Find images that look like a query image.

* **Search** with `POST /search`: upload an image (`multipart/form-data`, field `file`), or send JSON
  `{"url": "https://..."}` or `{"id": 16}` (more like an indexed image). `k` and `metric` go in the
  query string, the JSON body or the form.
* **Batch**: `POST /search/batch` answers several query images (or `{"queries": [...]}`) at once.
* **Filters**: `where` (metadata conditions such as `year>=2000`, repeatable) and `source_prefix`, in the
  query string, the JSON body or the form, narrow a search inside the vector search (k results whenever k
  images match) and the listing. Each parameter may be given once: `k` twice is a 422, not a guess.
* **Browse**: `GET /images?offset=&limit=&where=&source_prefix=` lists the collection, newest first.
* **Duplicates**: `GET /duplicates?tier=exact|near|similar` lists the groups of `imagefinder duplicates`
  (computed once per index generation; the first call after a change may take seconds).
* **Images**: `GET /images/{id}` (the original), `GET /images/{id}/thumbnail`, `GET /images/{id}/info`.
* **Change the index**: `POST /images` (upload or `{"url": ...}`) and `DELETE /images/{id}`; changes are
  visible to the next search and persist across restarts. With `IMAGEFINDER_API_TOKEN` set they need
  `Authorization: Bearer <token>` (401 otherwise); without it they are accepted only from the server's own
  machine. Cross-site browser requests are refused (403) either way, and so is every change on a
  read-only server (`IMAGEFINDER_READ_ONLY=1`).

Result URLs (`thumbnail_url`, `image_url`) are relative to the request's URL: resolve them like links.
Errors are JSON `{"detail": "..."}` saying what to fix.
"""


def _make_fastapi(**kwargs: Any) -> FastAPI:
    """FastAPI with its /docs page served from local files when fastapi-offline is installed (no CDN)."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kwargs)
    return FastAPIOffline(**kwargs)


def create_app(index_dir: Path | str | None = None, settings: Settings | None = None,
               finder: ImageFinder | None = None) -> FastAPI:
    """The API over the index at `index_dir` (else settings.index_dir, else the built-in sample).

    The index is opened here, once; the model is loaded at start-up (settings.preload_model)
    and shared by all requests. Pass `finder` to serve an ImageFinder you already have.
    """
    settings = settings or Settings.from_env()
    if index_dir is not None:
        settings = settings.with_changes(index_dir=Path(index_dir))
    if finder is None:
        finder = ImageFinder(resolve_index(settings), threads=settings.model_threads or None)
    service = Service(finder, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload_model:
            await run_in_threadpool(service.load_model)
        log.info("serving %s (%d images)", service.finder.path, service.finder.store.ntotal)
        yield
        service.close()  # frees the index for a rebuild (an exit does too, even kill -9)

    app = _make_fastapi(title="ImageFinder API", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(WriteAccess, policy=policy_of(settings))  # inside CORS: refusals keep CORS headers
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"], max_age=600)
    install_error_handlers(app)
    for module in (search, matches, browse, duplicates, images, status):
        app.include_router(module.router)
    return app

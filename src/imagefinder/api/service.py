"""The REST API: FastAPI routes over one shared ImageFinder.

One process holds one `ImageFinder` (index + model, loaded once). Searches run in
Starlette's thread pool (onnxruntime and FAISS release the GIL, so they overlap);
`ImageFinder` serialises writes itself and every search reads one consistent generation.
Request bodies are read here with a size cap before anything parses them, so a client
cannot make the server hold more than the upload limit per request.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..embed import Embedder
from ..finder import ImageFinder, Result
from ..ingest.decode import sniff_image_type
from ..net.client import safe_fetch
from ..net.errors import FetchError, FetchTooLarge
from ..search import METRICS
from .schemas import (
    MAX_ID,
    MAX_K,
    AddedImage,
    AddRequest,
    AddResponse,
    DeleteResponse,
    ErrorBody,
    Health,
    ImageInfo,
    Metric,
    QueryInfo,
    SearchRequest,
    SearchResponse,
    SearchResult,
    Stats,
)
from .settings import Settings, resolve_index
from .uploads import CheckedImage, check_image, client_filename, parse_form, read_body

log = logging.getLogger(__name__)
T = TypeVar("T")

UPLOADS = "uploads"
UPLOAD_TEMP, LISTING_TEMP = ".upload-", ".add-"  # prefixes of _write_atomic's and _write_listing's temp files
DEFAULT_K = 10
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
               "bmp": "image/bmp", "tiff": "image/tiff"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        404: "no such image", 413: "upload or image too large", 415: "not a supported image type",
        422: "invalid request, unreadable image or URL that cannot be fetched",
    }.items()
}

DESCRIPTION = """
Find images that look like a query image.

* **Search** with `POST /search`: upload an image (`multipart/form-data`, field `file`), or send JSON
  `{"url": "https://..."}` or `{"id": 16}` (more like an indexed image). `k` and `metric` go in the
  query string, the JSON body or the form.
* **Images**: `GET /images/{id}` (the original), `GET /images/{id}/thumbnail`, `GET /images/{id}/info`.
* **Change the index**: `POST /images` (upload or `{"url": ...}`) and `DELETE /images/{id}`; changes are
  visible to the next search and persist across restarts.

Errors are JSON `{"detail": "..."}` saying what to fix.
"""


class ServingFinder(ImageFinder):
    """An ImageFinder whose model runs each query on a chosen number of onnxruntime threads.

    A server computes several queries at once; one or two threads per query with a few
    queries in parallel keeps both cores busy without the queries fighting over them.
    """

    def __init__(self, path: Path, threads: int | None) -> None:
        super().__init__(path)
        self._model_threads = threads
        self._model_lock = threading.Lock()
        self._model: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        with self._model_lock:
            if self._model is None:
                self._model = Embedder(self.manifest["model"], threads=self._model_threads)
            return self._model


class Service:
    """What the routes share: settings, the finder, and a lock for upload-file bookkeeping."""

    def __init__(self, finder: ImageFinder, settings: Settings) -> None:
        self.finder = finder
        self.settings = settings
        # absolute and resolved: these paths become the images' sources in the index
        self.uploads = Path(finder.path).resolve() / UPLOADS
        self._files_lock = threading.Lock()
        _sweep_temp_files(self.uploads)
        self._checked = time.monotonic()
        self.model_loaded = False
        # CPU-bound work (decode, embed, search) waits here in arrival order, so a burst of
        # requests is served first come, first served instead of all slowing each other down.
        self._cpu_slots = asyncio.Semaphore(settings.search_concurrency or os.cpu_count() or 1)

    async def cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` in the thread pool once one of the CPU slots is free (FIFO)."""
        async with self._cpu_slots:
            return await run_in_threadpool(fn, *args, **kwargs)

    def load_model(self) -> None:
        self.finder.embedder  # noqa: B018 - loads the model once
        self.model_loaded = True

    # -- index freshness ---------------------------------------------------------------------

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

    # -- shaping results ---------------------------------------------------------------------

    def public_source(self, source: str) -> str:
        """Uploaded files are shown relative to the index (`uploads/NAME`), not as server paths."""
        try:
            return f"{UPLOADS}/{Path(source).relative_to(self.uploads)}"
        except ValueError:
            return source

    def result(self, request: Request, r: Result) -> SearchResult:
        return SearchResult(rank=r.rank, id=r.id, score=r.score, source=self.public_source(r.source),
                            width=r.width, height=r.height, cluster=r.cluster, meta=r.meta or {},
                            **_urls(request, r.id))

    def image_info(self, request: Request, row: dict) -> ImageInfo:
        return ImageInfo(id=row["id"], source=self.public_source(row["source"]), width=row.get("width"),
                         height=row.get("height"), cluster=row.get("cluster"), meta=row.get("meta") or {},
                         **_urls(request, row["id"]))

    def live_record(self, image_id: int) -> dict:
        row = self.finder.store.records([image_id]).get(image_id)
        if row is None or row.get("status") != "ok":
            raise HTTPException(404, f"no indexed image with id {image_id}")
        return row

    # -- fetching and adding -----------------------------------------------------------------

    def fetch(self, url: str) -> CheckedImage:
        s = self.settings
        try:
            fetched = safe_fetch(url, allow_private=s.allow_private_urls, max_bytes=s.max_upload_bytes,
                                 timeout=s.fetch_timeout)
        except FetchTooLarge as exc:
            raise HTTPException(413, f"cannot use the URL: {exc}") from None
        except FetchError as exc:
            raise HTTPException(422, f"cannot use the URL: {exc}") from None
        return check_image(fetched.content, max_bytes=s.max_upload_bytes, max_pixels=s.max_pixels,
                           what="the image at the URL")

    def add(self, images: list[tuple[CheckedImage, dict[str, str]]]) -> list[tuple[dict, bool]]:
        """Save checked images under INDEX/uploads/<sha256>.<ext> and add them; (row, created) each."""
        with self._files_lock:
            self.uploads.mkdir(exist_ok=True)
            paths, written = [], []
            for image, _meta in images:
                path = self.uploads / f"{image.decoded.sha256}.{image.extension}"
                if not path.exists():
                    _write_atomic(path, image.data)
                    written.append(path)
                paths.append(path)
            before = int(self.finder.manifest["rows"])
            listing = self._write_listing(paths, [meta for _, meta in images])
            try:
                report = self.finder.add([str(listing)])
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            finally:
                listing.unlink(missing_ok=True)
            after = int(self.finder.manifest["rows"])
            created = {row["source"]: row for row in self._new_rows(before, after)}
            if report.failed:
                for path in written:
                    if str(path) not in created:
                        path.unlink(missing_ok=True)
                reasons = "; ".join(str(f.get("error")) for f in report.failures) or "unknown reason"
                raise HTTPException(422, f"the image could not be indexed: {reasons}")
        out = []
        existing: dict[str, int] | None = None
        for path in paths:
            source = str(path)
            if source in created:
                out.append((created[source], True))
                continue
            if existing is None:  # a duplicate of an image already indexed
                existing = self.finder.store.ids_by_source()
            if source not in existing:
                raise HTTPException(422, "the image could not be indexed")
            out.append((self.finder.store.records([existing[source]])[existing[source]], False))
        return out

    def _new_rows(self, before: int, after: int) -> list[dict]:
        ids = list(range(before, after))
        rows: list[dict] = []
        for start in range(0, len(ids), 500):
            rows += self.finder.store.records(ids[start:start + 500]).values()
        return [r for r in rows if r.get("status") == "ok"]

    def _write_listing(self, paths: list[Path], metas: list[dict[str, str]]) -> Path:
        """A CSV naming the files, so their origin (file name, URL) is kept as metadata."""
        columns = sorted({key for meta in metas for key in meta})
        fd, name = tempfile.mkstemp(dir=self.uploads, prefix=LISTING_TEMP, suffix=".csv")
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", *columns])
            for path, meta in zip(paths, metas):
                writer.writerow([str(path), *(meta.get(c, "") for c in columns)])
        return Path(name)

    def remove(self, image_id: int) -> bool:
        with self._files_lock:
            row = self.finder.store.records([image_id]).get(image_id)
            removed = self.finder.remove([image_id]) > 0
            if removed and row is not None:
                self._forget_upload(row)
        return removed

    def _forget_upload(self, row: dict) -> None:
        """Deleting an uploaded image deletes its file too: adds skip sources already indexed,
        so no other live row refers to it, and a later upload of the same image writes it again."""
        path = Path(row["source"])
        if path.parent == self.uploads:
            path.unlink(missing_ok=True)


STALE_TEMP_S = 3600.0  # older than any request: left by a server that was killed


def _sweep_temp_files(uploads: Path) -> None:
    """Remove temporary files a killed server left in uploads/ (another worker's live ones are young)."""
    if not uploads.is_dir():
        return
    cutoff = time.time() - STALE_TEMP_S
    for path in uploads.iterdir():
        try:
            if path.name.startswith((UPLOAD_TEMP, LISTING_TEMP)) and path.stat().st_mtime < cutoff:
                path.unlink()
                log.info("removed %s, left by an interrupted request", path.name)
        except OSError:
            pass  # gone already, or not ours to remove


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=UPLOAD_TEMP)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _urls(request: Request, image_id: int) -> dict[str, str]:
    """Absolute URLs as this request reached the server (host and root path included)."""
    base = str(request.base_url).rstrip("/")
    return {"thumbnail_url": f"{base}/images/{image_id}/thumbnail", "image_url": f"{base}/images/{image_id}"}


def _k(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_K
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise HTTPException(422, f"k must be a whole number between 1 and {MAX_K}, got {value!r}") from None
    if not 1 <= k <= MAX_K:
        raise HTTPException(422, f"k must be between 1 and {MAX_K}, got {k}")
    return k


def _metric(value: Any) -> str:
    if value is None or value == "":
        return "cosine"
    if value not in METRICS:
        raise HTTPException(422, f"metric must be one of {', '.join(METRICS)}, got {value!r}")
    return str(value)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _validation_message(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body",)]
        where = {"path": "path parameter", "query": "query parameter", "header": "header"}.get(loc[0]) if loc else None
        if where:
            loc = loc[1:]
        name = ".".join(loc)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where + ' ' if where else ''}{name + ': ' if name else ''}{msg}")
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


def _json_body(body: bytes, model: type) -> Any:
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise HTTPException(422, _validation_message(exc)) from None


def _openapi_body(json_model: type, form_schema: dict, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": form_schema},
    }}}


SEARCH_FORM = {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the query image"},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
        "metric": {"type": "string", "enum": list(METRICS)},
    },
}
ADD_FORM = {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "an image to add (repeat the field to add several)"},
    },
}


ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="the image's id in the index")]
QueryK = Annotated[int | None, Query(ge=1, le=MAX_K, description="number of results (default 10)")]
QueryMetric = Annotated[Metric | None, Query(description=f"one of {', '.join(METRICS)} (default cosine)")]


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
        settings = replace(settings, index_dir=Path(index_dir))
    if finder is None:
        finder = ServingFinder(resolve_index(settings), settings.model_threads or None)
    service = Service(finder, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload_model:
            await run_in_threadpool(service.load_model)
        log.info("serving %s (%d images)", finder.path, finder.store.ntotal)
        yield

    app = _make_fastapi(title="ImageFinder API", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"], max_age=600)
    _install_error_handlers(app)

    @app.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"],
              summary="Find the indexed images most similar to a query image",
              openapi_extra=_openapi_body(SearchRequest, SEARCH_FORM,
                                          "an uploaded image (multipart), or JSON with `url` or `id`"))
    async def search(request: Request, k: QueryK = None, metric: QueryMetric = None) -> SearchResponse:
        """Query by an uploaded file (multipart field `file`), by `{"url": ...}`, or by `{"id": ...}`.

        `k` (1-100, default 10) and `metric` (cosine, euclidean, vote, ...; default cosine) may be
        query parameters or fields of the JSON body / form.
        """
        start = time.perf_counter()
        body = await read_body(request, settings.max_body_bytes, settings.max_upload_bytes)
        kind = _media_type(request)
        if kind == "multipart/form-data":
            form = await parse_form(request, body, max_files=1)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "the form needs a 'file' field holding the query image")
            k_value, metric_value = _k(form.get("k", k)), _metric(form.get("metric", metric))
            data = await upload.read()
            image, results = await service.cpu(_check_and_search, service, data, k_value, metric_value)
            query = QueryInfo(type="upload", filename=client_filename(upload.filename), width=image.decoded.width,
                              height=image.decoded.height)
        elif kind == "application/json":
            req: SearchRequest = _json_body(body, SearchRequest)
            k_value = _k(req.k if req.k is not None else k)
            metric_value = _metric(req.metric or metric)
            if req.id is not None:
                query = QueryInfo(type="id", id=req.id)
                results = await service.cpu(_search_id, service, req.id, k_value, metric_value)
            else:
                image = await run_in_threadpool(service.fetch, req.url)
                query = QueryInfo(type="url", url=req.url, width=image.decoded.width, height=image.decoded.height)
                results = await service.cpu(_search_image, service, image, k_value, metric_value)
        else:
            raise HTTPException(415, "send the query as multipart/form-data with a 'file' field (an image), or as "
                                     "application/json with 'url' or 'id'")
        return SearchResponse(query=query, k=k_value, metric=metric_value,
                              took_ms=round((time.perf_counter() - start) * 1000, 2),
                              indexed=service.finder.store.ntotal,
                              results=[service.result(request, r) for r in results])

    @app.get("/images/{image_id}", name="image", tags=["images"], responses={**ERRORS, 200: {
        "content": {t: {} for t in MEDIA_TYPES.values()}, "description": "the original image file"}},
        response_class=Response, summary="The original image file")
    def image(image_id: ImageId) -> Response:
        row = service.live_record(image_id)
        path = Path(row.get("cached_path") or "")
        if not row.get("cached_path") or not path.is_file():
            raise HTTPException(404, f"the original of image {image_id} is no longer available on the server "
                                     "(its thumbnail is)")
        with open(path, "rb") as f:
            kind = sniff_image_type(f.read(12))
        return FileResponse(path, media_type=MEDIA_TYPES.get(kind or "", "application/octet-stream"),
                            headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/images/{image_id}/thumbnail", name="thumbnail", tags=["images"], response_class=Response,
             responses={**ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "a JPEG, at most 256 px"}},
             summary="A small JPEG of an indexed image")
    def thumbnail(image_id: ImageId) -> Response:
        service.live_record(image_id)
        path = service.finder.store.thumbnail_path(image_id)
        if not path.is_file():
            raise HTTPException(404, f"image {image_id} has no thumbnail")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/images/{image_id}/info", response_model=ImageInfo, responses=ERRORS, tags=["images"],
             summary="What the index records about an image")
    def image_info(request: Request, image_id: ImageId) -> ImageInfo:
        return service.image_info(request, service.live_record(image_id))

    @app.post("/images", response_model=AddResponse, status_code=201, tags=["images"], responses={
        **ERRORS, 200: {"model": AddResponse, "description": "every image was already indexed"}},
        summary="Add images to the index (upload or URL)",
        openapi_extra=_openapi_body(AddRequest, ADD_FORM, "uploaded image(s) (multipart), or JSON with `url`"))
    async def add_images(request: Request) -> Response:
        """Add by upload (multipart field `file`, may repeat) or by `{"url": ...}`.

        The image is visible to the next search and kept across restarts. Adding an image
        that is already indexed returns its existing id with `created: false` (status 200).
        """
        body = await read_body(request, settings.max_body_bytes, settings.max_upload_bytes)
        kind = _media_type(request)
        images: list[tuple[CheckedImage, dict[str, str]]] = []
        if kind == "multipart/form-data":
            form = await parse_form(request, body, max_files=settings.max_files)
            uploads = [u for u in form.getlist("file") if not isinstance(u, str)]
            if not uploads:
                raise HTTPException(422, "the form needs a 'file' field holding the image to add")
            for upload in uploads:
                data = await upload.read()
                name = client_filename(upload.filename) or ""
                what = f"the file '{name}'" if name else "the file"
                image = await run_in_threadpool(check_image, data, max_bytes=settings.max_upload_bytes,
                                                max_pixels=settings.max_pixels, what=what)
                images.append((image, {"filename": name} if name else {}))
        elif kind == "application/json":
            req: AddRequest = _json_body(body, AddRequest)
            image = await run_in_threadpool(service.fetch, req.url)
            images.append((image, {"origin": req.url}))
        else:
            raise HTTPException(415, "send multipart/form-data with a 'file' field (an image), or application/json "
                                     "with 'url'")
        added = await run_in_threadpool(service.add, images)
        payload = AddResponse(images=[AddedImage(**service.image_info(request, row).model_dump(), created=created)
                                      for row, created in added])
        status = 201 if any(created for _, created in added) else 200
        return JSONResponse(payload.model_dump(mode="json"), status_code=status)

    @app.delete("/images/{image_id}", response_model=DeleteResponse, responses=ERRORS, tags=["images"],
                summary="Remove an image from the index")
    def delete_image(image_id: ImageId) -> DeleteResponse:
        if not service.remove(image_id):
            raise HTTPException(404, f"no indexed image with id {image_id}")
        return DeleteResponse(id=image_id, removed=True)

    @app.get("/stats", response_model=Stats, tags=["service"], summary="What the index holds")
    def stats() -> Stats:
        service.refresh()
        m = service.finder.manifest
        c = m["counts"]
        return Stats(images=service.finder.store.ntotal, items=c["items"], failed=c["failed"],
                     removed=c.get("removed", 0), model=m["model"], index_type=m["index_spec"],
                     dims=m["embedding_dim"], clusters=m.get("clusters"), nprobe=m.get("nprobe"),
                     generation=int(m.get("generation", 0)), created_at=m.get("created_at"),
                     updated_at=m.get("updated_at"), metrics=list(METRICS),
                     max_upload_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                     max_k=MAX_K)

    @app.get("/health", response_model=Health, tags=["service"], summary="Liveness and readiness")
    def health() -> Health:
        return Health(status="ok", images=service.finder.store.ntotal,
                      model_loaded=service.model_loaded, version=__version__)

    return app


def _check_and_search(service: Service, data: bytes, k: int, metric: str) -> tuple[CheckedImage, list[Result]]:
    s = service.settings
    image = check_image(data, max_bytes=s.max_upload_bytes, max_pixels=s.max_pixels)
    return image, _search_image(service, image, k, metric)


def _search_image(service: Service, image: CheckedImage, k: int, metric: str) -> list[Result]:
    service.refresh()
    results = service.finder.search(image.decoded.image, k=k, metric=metric)
    service.model_loaded = True
    return results


def _search_id(service: Service, image_id: int, k: int, metric: str) -> list[Result]:
    service.refresh()
    try:
        return service.finder.search_id(image_id, k=k, metric=metric)
    except KeyError:
        raise HTTPException(404, f"no indexed image with id {image_id}") from None


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON {"detail": "<a sentence>"}: no lists of dicts, no stack traces, no paths."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        # the request's path is not echoed: it is the client's own text (and may be crafted)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint for {request.method} (see /docs for the endpoints)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on this endpoint (see /docs)"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        # the server closes the connection after an unhandled error: say so, or a keep-alive
        # client sends its next request down a connection that is being torn down
        return JSONResponse({"detail": "internal server error; the server log has the details"}, status_code=500,
                            headers={"Connection": "close"})

"""POST /search (one query: an uploaded image, an image URL or an indexed id) and POST /search/batch (several).

`k`, `metric`, `where` and `source_prefix` may come from the query string, the JSON body or the
form, but each from one place only: given twice, the request is refused (422) rather than one of
the values silently winning. Filters are applied inside the vector search (see index/filters.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from starlette.datastructures import FormData, UploadFile

from ...finder import Result
from ...index.filters import Filter
from ...region import Box
from ..errors import ERRORS
from ..params import (
    BATCH_FORM,
    SEARCH_FORM,
    QueryK,
    QueryMetric,
    QueryPrefix,
    QueryWhere,
    json_body,
    openapi_body,
    parse_box,
    parse_k,
    parse_metric,
    parse_preset,
    several,
    single,
)
from ..schemas import (
    MAX_BATCH,
    BatchSearchRequest,
    BatchSearchResponse,
    QueryInfo,
    SearchFailure,
    SearchRequest,
    SearchResponse,
)
from ..service import Service, ServiceDep
from ..uploads import client_filename, parse_form

router = APIRouter(tags=["search"])


@dataclass
class Options:
    """What every query of one request shares."""

    k: int
    metric: str
    where: list[str]
    source_prefix: str | None
    filter: Filter | None
    box: Box | None = None  # a region of the query image (single searches of an image only)
    preset: str | None = None  # query-time parts of a preset (None: the index's own)


def _options(request: Request, service: Service, k: object = None, metric: object = None,
             where: list[str] | None = None, source_prefix: str | None = None,
             form: FormData | None = None, box: object = None, preset: object = None) -> Options:
    """From the query string plus the body (k=, metric=, ...) or the form; each value from one place."""
    query = request.query_params
    in_form = (lambda name: form.getlist(name)) if form is not None else (lambda name: [])
    k_value = parse_k(single("k", query.getlist("k"), [k], in_form("k")))
    metric_value = parse_metric(single("metric", query.getlist("metric"), [metric], in_form("metric")))
    where_value = several("where", query.getlist("where"), where, [str(w) for w in in_form("where")])
    prefix = single("source_prefix", query.getlist("source_prefix"), [source_prefix], in_form("source_prefix"))
    prefix = str(prefix) if prefix is not None else None
    box_value = parse_box(form.get("box") if form is not None else box)
    preset_value = parse_preset(form.get("preset") if form is not None else preset)
    return Options(k_value, metric_value, where_value, prefix, service.filter_of(where_value, prefix), box_value,
                   preset_value)


def _response(request: Request, service: Service, query: QueryInfo, options: Options, results: list[Result],
              start: float) -> SearchResponse:
    return SearchResponse(query=query, k=options.k, metric=options.metric,
                          took_ms=round((time.perf_counter() - start) * 1000, 2),
                          indexed=service.finder.store.ntotal, where=options.where,
                          source_prefix=options.source_prefix,
                          results=[service.result(request, r) for r in results])


async def _by_upload(request: Request, service: Service, upload: UploadFile, options: Options) -> SearchResponse:
    start = time.perf_counter()
    name = client_filename(upload.filename)
    data = await upload.read()
    image, results = await service.cpu(service.search_upload, data, options.k, options.metric, options.filter,
                                       f"the file '{name}'" if name else "the file", options.box, options.preset)
    query = QueryInfo(type="upload", filename=name, width=image.decoded.width, height=image.decoded.height)
    return _response(request, service, query, options, results, start)


async def _by_json(request: Request, service: Service, url: str | None, image_id: int | None,
                   options: Options) -> SearchResponse:
    start = time.perf_counter()
    if image_id is not None:
        results = await service.cpu(service.search_id, image_id, options.k, options.metric, options.filter,
                                    options.preset)
        return _response(request, service, QueryInfo(type="id", id=image_id), options, results, start)
    assert url is not None  # the request models hold exactly one of id and url
    image = await service.fetch(url)
    results = await service.cpu(service.search_image, image, options.k, options.metric, options.filter, options.box,
                                options.preset)
    query = QueryInfo(type="url", url=url, width=image.decoded.width, height=image.decoded.height)
    return _response(request, service, query, options, results, start)


def _uploads(form: FormData, limit: int) -> list[UploadFile]:
    files = [u for u in form.getlist("file") if not isinstance(u, str)]
    if not files:
        raise HTTPException(422, "the form needs a 'file' field holding the query image")
    if len(files) > limit:
        raise HTTPException(422, f"at most {limit} query image(s) per request, got {len(files)}")
    return files


UNSUPPORTED = ("send the query as multipart/form-data with a 'file' field (an image), or as application/json "
               "with {what}")


@router.post("/search", response_model=SearchResponse, responses=ERRORS,
             summary="Find the indexed images most similar to a query image",
             openapi_extra=openapi_body(SearchRequest, SEARCH_FORM,
                                        "an uploaded image (multipart), or JSON with `url` or `id`"))
async def search(request: Request, service: ServiceDep, k: QueryK = None, metric: QueryMetric = None,
                 where: QueryWhere = None, source_prefix: QueryPrefix = None) -> SearchResponse:
    """Query by an uploaded file (multipart field `file`), by `{"url": ...}`, or by `{"id": ...}`.

    `k` (1-100, default 10), `metric` (cosine, euclidean, vote, ...; default cosine), `where`
    (metadata conditions, repeatable) and `source_prefix` may be query parameters or fields of
    the JSON body / form, each in one place only. `box` ([x0, y0, x1, y1], or "x0,y0,x1,y1" in a
    form) searches with that region of the query image; `preset` (fast, balanced, accurate) picks
    the query-time parts of a preset. Each result says `match`: strong or weak.
    """
    body, kind = await service.request_body(request)
    if kind == "multipart/form-data":
        form = await parse_form(request, body, max_files=1)
        options = _options(request, service, form=form)
        return await _by_upload(request, service, _uploads(form, 1)[0], options)
    if kind == "application/json":
        req = json_body(body, SearchRequest)
        options = _options(request, service, req.k, req.metric, req.where, req.source_prefix, box=req.box,
                           preset=req.preset)
        return await _by_json(request, service, req.url, req.id, options)
    raise HTTPException(415, UNSUPPORTED.format(what="'url' or 'id'"))


@router.post("/search/batch", response_model=BatchSearchResponse, responses=ERRORS,
             summary="Several query images in one request",
             openapi_extra=openapi_body(BatchSearchRequest, BATCH_FORM,
                                        f"up to {MAX_BATCH} uploaded images (multipart, field `file` repeated), "
                                        "or JSON with `queries`: [{`url`} or {`id`}, ...]"))
async def search_batch(request: Request, service: ServiceDep, k: QueryK = None, metric: QueryMetric = None,
                       where: QueryWhere = None, source_prefix: QueryPrefix = None) -> BatchSearchResponse:
    """Every query gets the same `k`, `metric` and filters; the answers come in request order.

    A query that cannot be answered (not an image, an unreachable URL, an unknown id) gets a
    `{"query", "status", "error"}` entry in its place, and the others are still answered. The
    whole request is held to the upload size limit.
    """
    body, kind = await service.request_body(request)
    searches: list[SearchResponse | SearchFailure] = []
    if kind == "multipart/form-data":
        form = await parse_form(request, body, max_files=MAX_BATCH)
        options = _options(request, service, form=form)
        for upload in _uploads(form, MAX_BATCH):
            query = QueryInfo(type="upload", filename=client_filename(upload.filename))
            searches.append(await _answer(query, _by_upload(request, service, upload, options)))
    elif kind == "application/json":
        req = json_body(body, BatchSearchRequest)
        options = _options(request, service, req.k, req.metric, req.where, req.source_prefix)
        for q in req.queries:
            query = QueryInfo(type="id", id=q.id) if q.id is not None else QueryInfo(type="url", url=q.url)
            searches.append(await _answer(query, _by_json(request, service, q.url, q.id, options)))
    else:
        raise HTTPException(415, UNSUPPORTED.format(what="'queries'"))
    return BatchSearchResponse(searches=searches)


async def _answer(query: QueryInfo, search: Awaitable[SearchResponse]) -> SearchResponse | SearchFailure:
    """One query's answer, or its failure in its place (an HTTP error meant for this query only)."""
    try:
        return await search
    except HTTPException as exc:
        return SearchFailure(query=query, status=exc.status_code, error=str(exc.detail))

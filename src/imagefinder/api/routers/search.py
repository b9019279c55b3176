"""POST /search: by an uploaded image, an image URL, or the id of an indexed image."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ..errors import ERRORS
from ..params import (
    SEARCH_FORM,
    QueryK,
    QueryMetric,
    json_body,
    media_type,
    openapi_body,
    parse_box,
    parse_k,
    parse_metric,
    parse_preset,
)
from ..schemas import QueryInfo, SearchRequest, SearchResponse
from ..service import ServiceDep
from ..uploads import client_filename, parse_form, read_body

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse, responses=ERRORS,
             summary="Find the indexed images most similar to a query image",
             openapi_extra=openapi_body(SearchRequest, SEARCH_FORM,
                                        "an uploaded image (multipart), or JSON with `url` or `id`"))
async def search(request: Request, service: ServiceDep, k: QueryK = None,
                 metric: QueryMetric = None) -> SearchResponse:
    """Query by an uploaded file (multipart field `file`), by `{"url": ...}`, or by `{"id": ...}`.

    `k` (1-100, default 10) and `metric` (cosine, euclidean, vote, ...; default cosine) may be
    query parameters or fields of the JSON body / form. `box` ([x0, y0, x1, y1], or "x0,y0,x1,y1"
    in a form) searches with that region of the query image; `preset` (fast, balanced, accurate)
    picks the query-time parts of a preset. Each result says `match`: strong or weak.
    """
    start = time.perf_counter()
    settings = service.settings
    body = await read_body(request, settings.max_body_bytes, settings.max_upload_bytes)
    kind = media_type(request)
    if kind == "multipart/form-data":
        form = await parse_form(request, body, max_files=1)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "the form needs a 'file' field holding the query image")
        k_value, metric_value = parse_k(form.get("k", k)), parse_metric(form.get("metric", metric))
        box, preset = parse_box(form.get("box")), parse_preset(form.get("preset"))
        data = await upload.read()
        image, results = await service.cpu(service.search_upload, data, k_value, metric_value, box, preset)
        query = QueryInfo(type="upload", filename=client_filename(upload.filename), width=image.decoded.width,
                          height=image.decoded.height)
    elif kind == "application/json":
        req = json_body(body, SearchRequest)
        k_value = parse_k(req.k if req.k is not None else k)
        metric_value = parse_metric(req.metric or metric)
        box = parse_box(req.box)
        if req.id is not None:
            query = QueryInfo(type="id", id=req.id)
            results = await service.cpu(service.search_id, req.id, k_value, metric_value, req.preset)
        else:
            assert req.url is not None  # SearchRequest holds exactly one of id and url
            image = await run_in_threadpool(service.fetch, req.url)
            query = QueryInfo(type="url", url=req.url, width=image.decoded.width, height=image.decoded.height)
            results = await service.cpu(service.search_image, image, k_value, metric_value, box, req.preset)
    else:
        raise HTTPException(415, "send the query as multipart/form-data with a 'file' field (an image), or as "
                                 "application/json with 'url' or 'id'")
    return SearchResponse(query=query, k=k_value, metric=metric_value,
                          took_ms=round((time.perf_counter() - start) * 1000, 2),
                          indexed=service.finder.store.ntotal,
                          results=[service.result(request, r) for r in results])

"""POST /search/matches: "why this match" - the verified local-feature pairs between a query and a result.

The query is given as for POST /search (an upload with an optional `box`, `{"url"}` or `{"id"}`),
plus `result_id`. It reads only (like the searches, it is not a write for access control).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from ...explain import correspondences
from ...models import ModelUnavailable
from ...region import Box, BoxError, crop_box
from ...rerank import MIN_INLIERS, MIN_SIDE, LocalFeatures, SpatialReranker, no_features
from ..errors import ERRORS
from ..params import json_body, openapi_body, parse_box
from ..schemas import MatchesRequest, MatchesResponse
from ..service import Service, ServiceDep
from ..uploads import CheckedImage, client_filename, parse_form

router = APIRouter(tags=["search"])

MATCHES_FORM = {
    "type": "object", "required": ["file", "result_id"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the query image"},
        "result_id": {"type": "integer", "description": "the result to explain"},
        "box": {"type": "string", "description": "x0,y0,x1,y1: the region of the query that was searched"},
    },
}


def _reranker(service: Service) -> SpatialReranker:
    try:
        return service.finder.reranker()
    except ModelUnavailable as exc:
        raise HTTPException(503, f"cannot show why images match: {exc}") from None


def _indexed(service: Service, reranker: SpatialReranker, image_id: int) -> tuple[LocalFeatures, tuple[int, int]]:
    """Local features of an indexed image (cached in INDEX/local/) and its size in pixels."""
    row = service.live_record(image_id)
    width, height = int(row.get("width") or 0), int(row.get("height") or 0)
    if width and height and min(width, height) < MIN_SIDE:
        return no_features((width, height)), (width, height)
    feats = reranker.cache.get(image_id, row, service.finder.store.thumbnail_path(image_id))
    if feats is None:
        raise HTTPException(404, f"image {image_id}: its image file is no longer readable, so it has no local features")
    return feats, (int(row.get("width") or feats.size[0]), int(row.get("height") or feats.size[1]))


def explain(service: Service, result_id: int, image: CheckedImage | None, query_id: int | None,
            box: Box | None) -> MatchesResponse:
    """In the thread pool: features of both sides, their inlier pairs."""
    service.refresh()
    reranker = _reranker(service)
    result, result_size = _indexed(service, reranker, result_id)
    if image is not None:
        size = (image.decoded.width, image.decoded.height)
        region = image.decoded.image
        frame = (0.0, 0.0, float(size[0]), float(size[1]))
        if box is not None:
            try:
                region, frame = crop_box(region, box, size), box
            except BoxError as exc:
                raise HTTPException(422, str(exc)) from None
        query = reranker.query_features(region) if min(region.size) >= MIN_SIDE else no_features(region.size)
    else:
        assert query_id is not None
        query, size = _indexed(service, reranker, query_id)
        frame = (0.0, 0.0, float(size[0]), float(size[1]))
    found = correspondences(query, result, frame, result_size, reranker.geometry)
    return MatchesResponse(result_id=result_id, query_size=list(size), result_size=list(result_size),
                           box=list(box) if box is not None else None,
                           backend=reranker.extractor.backend, geometry=reranker.geometry, mutual=found.mutual,
                           inliers=found.inliers, min_inliers=MIN_INLIERS, verified=found.verified,
                           pairs=[[round(float(v), 1) for v in p] for p in found.pairs])


def _result_id(value: object) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise HTTPException(422, f"result_id {value!r}: must be the id (a whole number) of an indexed image") from None
    if n < 0:
        raise HTTPException(422, f"result_id {n}: ids are 0 or more")
    return n


@router.post("/search/matches", response_model=MatchesResponse, responses=ERRORS,
             summary="Why this match: the local features a query and a result share",
             openapi_extra=openapi_body(MatchesRequest, MATCHES_FORM,
                                        "an uploaded query image (multipart, with result_id and box), or JSON with "
                                        "result_id and `url` or `id`"))
async def matches(request: Request, service: ServiceDep) -> MatchesResponse:
    """Matched keypoints between the query and the indexed image `result_id` that one RANSAC
    transform explains (the spatial re-ranker's evidence), in each image's own pixels, with the
    counts. `verified` is the re-ranker's verdict (at least `min_inliers` inliers)."""
    body, kind = await service.request_body(request)
    if kind == "multipart/form-data":
        form = await parse_form(request, body, max_files=1)
        uploads = [u for u in form.getlist("file") if not isinstance(u, str)]
        if not uploads or form.get("result_id") in (None, ""):
            raise HTTPException(422, "the form needs a 'file' field (the query image) and 'result_id'")
        result_id, box = _result_id(form.get("result_id")), parse_box(form.get("box"))
        name = client_filename(uploads[0].filename)
        data = await uploads[0].read()
        upload = await service.cpu(service.check, data, f"the file '{name}'" if name else "the file")
        return await service.cpu(explain, service, result_id, upload, None, box)
    if kind == "application/json":
        req = json_body(body, MatchesRequest)
        box = parse_box(req.box)
        image = await service.fetch(req.url) if req.url is not None else None
        return await service.cpu(explain, service, req.result_id, image, req.id, box)
    raise HTTPException(415, "send the query as multipart/form-data with 'file' and 'result_id', or as "
                             "application/json with 'result_id' and 'url' or 'id'")

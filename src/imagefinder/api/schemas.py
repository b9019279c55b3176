"""Request and response models: they are the API's contract and its OpenAPI schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..confidence import Match
from ..presets import PresetName
from ..search import METRICS

# The engine's own list, so a metric added there is accepted and documented here too.
Metric = Literal[METRICS]  # type: ignore[valid-type]
MAX_ID = 2**53  # ids are row numbers; anything beyond this is certainly not one (and fits SQLite)
MAX_URL = 2048
MAX_K = 100
MAX_BATCH = 16  # queries per POST /search/batch
MAX_PAGE = 500  # images per GET /images page

WHERE_DOC = ("metadata conditions, all of which must hold: COLUMN OP VALUE with OP one of = != < <= > >= "
             "(numbers compare as numbers), e.g. ['year>=2000', 'city=Paris']")
PREFIX_DOC = "only images whose source (path or URL as indexed, uploads/NAME for uploads) starts with this"
URL_DOC = ("relative to the URL of the request that returned it (resolve it like a link, e.g. urljoin), so it "
           "stays right behind a proxy such as the web page's /api; null in the CLI's output")


def check_one_query(url: str | None, item_id: int | None, box: list[float] | None) -> None:
    """A query is an image URL or an indexed image's id, never both; a box needs an image."""
    if (url is None) == (item_id is None):
        raise ValueError("give exactly one of 'url' (an image URL) or 'id' (an indexed image)")
    if box is not None and item_id is not None:
        raise ValueError("'box' selects a region of a query image: use it with 'url' or an upload, not 'id'")


class SearchRequest(BaseModel):
    """Search by an image URL or by the id of an indexed image ("more like this")."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"url": "https://example.com/photo.jpg", "k": 10}, {"id": 16, "k": 5, "metric": "vote"}],
    })

    url: str | None = Field(None, max_length=MAX_URL, description="http(s) URL of the query image")
    id: int | None = Field(None, ge=0, le=MAX_ID, description="id of an indexed image: find more like it")
    k: int | None = Field(None, ge=1, le=MAX_K, description="number of results (default 10)")
    metric: Metric | None = Field(None, description=f"one of {', '.join(METRICS)} (default cosine)")
    where: list[str] | None = Field(None, max_length=20, description=WHERE_DOC)
    source_prefix: str | None = Field(None, max_length=MAX_URL, description=PREFIX_DOC)
    box: list[float] | None = Field(None, min_length=4, max_length=4,
                                    description="search with this region of the query image only: [x0, y0, x1, y1] "
                                                "in its pixels (left, top, right, bottom); not with 'id'")
    preset: PresetName | None = Field(None, description="query-time parts of a preset (query expansion, verification); "
                                                    "default: the preset the index was built with")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        check_one_query(self.url, self.id, self.box)
        return self


class BatchQuery(BaseModel):
    """One query of a batch: an image URL or the id of an indexed image."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=MAX_URL)
    id: int | None = Field(None, ge=0, le=MAX_ID)

    @model_validator(mode="after")
    def _one_query(self) -> BatchQuery:
        if (self.url is None) == (self.id is None):
            raise ValueError("each query needs exactly one of 'url' or 'id'")
        return self


class BatchSearchRequest(BaseModel):
    """Several queries with the same k, metric and filters; uploads go as a multipart form instead."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"queries": [{"id": 16}, {"url": "https://example.com/q.jpg"}], "k": 5, "where": ["year>=2000"]}],
    })

    queries: list[BatchQuery] = Field(..., min_length=1, max_length=MAX_BATCH)
    k: int | None = Field(None, ge=1, le=MAX_K)
    metric: Metric | None = None
    where: list[str] | None = Field(None, max_length=20, description=WHERE_DOC)
    source_prefix: str | None = Field(None, max_length=MAX_URL, description=PREFIX_DOC)


class AddRequest(BaseModel):
    """Add an image to the index from a URL (the server downloads it)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"url": "https://example.com/a.jpg"}]})

    url: str = Field(..., max_length=MAX_URL, description="http(s) URL of the image to add")


class SearchResult(BaseModel):
    rank: int = Field(..., description="1 for the most similar image")
    id: int = Field(..., description="the image's id in the index (stable; use it for 'more like this')")
    score: float = Field(..., description="cosine: similarity, higher is closer; euclidean: distance, lower is "
                                          "closer; vote and fusion: rank-fusion scores, higher is closer")
    source: str = Field(..., description="where the image came from: path or URL as indexed, "
                                         "or uploads/NAME for images added through the API")
    thumbnail_url: str | None = Field(default=None, description=URL_DOC)
    image_url: str | None = Field(default=None, description=URL_DOC)
    width: int | None = None
    height: int | None = None
    cluster: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="extra columns recorded with the image")
    match: Match | None = Field(
        None, description="strong: the same object or scene (calibrated threshold on the model's cosine); weak: only "
                          "the nearest there is - all weak means no close match; null: no calibration for this model")


class QueryInfo(BaseModel):
    type: Literal["upload", "url", "id", "file"] = Field(..., description="file: a path given to the CLI")
    id: int | None = None
    url: str | None = None
    filename: str | None = None
    path: str | None = Field(default=None, description="the query file (CLI only)")
    width: int | None = None
    height: int | None = None


class SearchResponse(BaseModel):
    """One query's answer: the API's POST /search, each entry of /search/batch, each line of the CLI's --json."""

    query: QueryInfo
    k: int
    metric: Metric
    took_ms: float = Field(..., description="time for this search, including decoding and fetching")
    indexed: int = Field(..., description="images in the index")
    where: list[str] = Field(default_factory=list, description="the metadata conditions applied")
    source_prefix: str | None = None
    results: list[SearchResult]


class SearchFailure(BaseModel):
    """A query of a batch that could not be answered (the others still are)."""

    query: QueryInfo
    status: int = Field(..., description="the HTTP status this query alone would have had")
    error: str = Field(..., description="what was wrong with this query")


class BatchSearchResponse(BaseModel):
    searches: list[SearchResponse | SearchFailure] = Field(..., description="one per query, in request order")


class ImageInfo(BaseModel):
    id: int
    source: str
    width: int | None = None
    height: int | None = None
    cluster: int | None = None
    thumbnail_url: str = Field(..., description=URL_DOC)
    image_url: str = Field(..., description=URL_DOC)
    meta: dict[str, Any] = Field(default_factory=dict)


class ImagePage(BaseModel):
    total: int = Field(..., description="indexed images matching the filters")
    offset: int
    limit: int
    images: list[ImageInfo] = Field(..., description="newest first")


class AddedImage(ImageInfo):
    created: bool = Field(..., description="false when this exact image was already indexed")


class AddResponse(BaseModel):
    images: list[AddedImage]


class DeleteResponse(BaseModel):
    id: int
    removed: bool


class Stats(BaseModel):
    images: int = Field(..., description="searchable images")
    items: int = Field(..., description="rows in the id table: indexed, failed and removed")
    failed: int
    removed: int
    model: str
    index_type: str = Field(..., description="FAISS factory string, e.g. 'Flat' or 'PCAW256,L2norm,IVF1024,Flat'")
    dims: int = Field(..., description="dimension of the model's features")
    clusters: int | None = None
    nprobe: int | None = None
    generation: int
    created_at: str | None = None
    updated_at: str | None = None
    metrics: list[Metric]
    max_upload_bytes: int
    max_pixels: int
    max_k: int
    writes: Literal["token", "this-machine", "read-only"] = Field(
        "this-machine", description="who may add and delete images: token = with `Authorization: Bearer <token>`; "
                                    "this-machine = from the server's own machine only (no token set); "
                                    "read-only = nobody")


class Health(BaseModel):
    status: Literal["ok"]
    images: int
    model_loaded: bool
    version: str


class ErrorBody(BaseModel):
    detail: str = Field(..., description="what was wrong and what to do about it")


class MatchesRequest(BaseModel):
    """Why a result matched a query given by URL or by the id of an indexed image."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"result_id": 7, "id": 16}]})

    result_id: int = Field(..., ge=0, le=MAX_ID, description="the result to explain (an indexed image's id)")
    url: str | None = Field(None, max_length=MAX_URL, description="http(s) URL of the query image")
    id: int | None = Field(None, ge=0, le=MAX_ID, description="id of an indexed image used as the query")
    box: list[float] | None = Field(None, min_length=4, max_length=4,
                                    description="the region of the query image that was searched: [x0, y0, x1, y1]; "
                                                "not with 'id'")

    @model_validator(mode="after")
    def _one_query(self) -> MatchesRequest:
        check_one_query(self.url, self.id, self.box)
        return self


class MatchesResponse(BaseModel):
    result_id: int
    query_size: list[int] = Field(..., description="[width, height] of the query image, pixels")
    result_size: list[int] = Field(..., description="[width, height] of the result image, pixels")
    box: list[float] | None = Field(None, description="the query region the features were taken from")
    backend: str = Field(..., description="local features: xfeat or orb")
    geometry: str = Field(..., description="the RANSAC model: homography or fundamental")
    mutual: int = Field(..., description="mutual-nearest-neighbour descriptor matches before RANSAC")
    inliers: int = Field(..., description="matches consistent with one transform")
    min_inliers: int = Field(..., description="inliers needed to count as verified (the re-ranker's threshold)")
    verified: bool = Field(..., description="inliers >= min_inliers: the same object or scene, seen again")
    pairs: list[list[float]] = Field(
        ..., description="inlier pairs [query x, y, result x, y] in each image's own pixels (at most 400)")


DuplicateTier = Literal["exact", "near", "similar"]


class DuplicateGroup(BaseModel):
    """One group of `imagefinder duplicates` (the same groups, tiers and scores as its --json)."""

    tier: DuplicateTier = Field(..., description="exact: the same file content; near: the same picture edited "
                                                 "(resized, cropped, mirrored, captioned...); similar: another photo "
                                                 "of the same object or scene")
    score: float = Field(..., description="the lowest cosine between any two members (1.0 for exact)")
    check: float | None = Field(None, description="near tier, pixel-checked: the lowest pixel-check score "
                                                  "between any two members")
    ids: list[int] = Field(..., description="the members' ids, ascending")
    images: list[ImageInfo] = Field(..., description="the members, in the order of `ids`")


class DuplicatesReport(BaseModel):
    generation: int = Field(..., description="the index generation these groups were computed on")
    model: str
    thresholds: dict[str, Any] = Field(..., description="the cuts used (near: how near-duplicates were decided)")
    groups: list[DuplicateGroup] = Field(..., description="exact, then near, then similar groups; "
                                                          "largest groups first within a tier")

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


class SearchRequest(BaseModel):
    """Search by an image URL or by the id of an indexed image ("more like this")."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"url": "https://example.com/photo.jpg", "k": 10}, {"id": 16, "k": 5, "metric": "vote"}],
    })

    url: str | None = Field(None, max_length=MAX_URL, description="http(s) URL of the query image")
    id: int | None = Field(None, ge=0, le=MAX_ID, description="id of an indexed image: find more like it")
    k: int | None = Field(None, ge=1, le=MAX_K, description="number of results (default 10)")
    metric: Metric | None = Field(None, description=f"one of {', '.join(METRICS)} (default cosine)")
    box: list[float] | None = Field(None, min_length=4, max_length=4,
                                    description="search with this region of the query image only: [x0, y0, x1, y1] "
                                                "in its pixels (left, top, right, bottom); not with 'id'")
    preset: PresetName | None = Field(None, description="query-time parts of a preset (query expansion, verification); "
                                                    "default: the preset the index was built with")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.url is None) == (self.id is None):
            raise ValueError("give exactly one of 'url' (an image URL) or 'id' (an indexed image)")
        if self.box is not None and self.id is not None:
            raise ValueError("'box' selects a region of a query image: use it with 'url' or an upload, not 'id'")
        return self


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
    thumbnail_url: str
    image_url: str
    width: int | None = None
    height: int | None = None
    cluster: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="extra columns recorded with the image")
    match: Match | None = Field(
        None, description="strong: the same object or scene (calibrated threshold on the model's cosine); weak: only "
                          "the nearest there is - all weak means no close match; null: no calibration for this model")


class QueryInfo(BaseModel):
    type: Literal["upload", "url", "id"]
    id: int | None = None
    url: str | None = None
    filename: str | None = None
    width: int | None = None
    height: int | None = None


class SearchResponse(BaseModel):
    query: QueryInfo
    k: int
    metric: Metric
    took_ms: float = Field(..., description="server time for this search, including decoding and fetching")
    indexed: int = Field(..., description="images in the index")
    results: list[SearchResult]


class ImageInfo(BaseModel):
    id: int
    source: str
    width: int | None = None
    height: int | None = None
    cluster: int | None = None
    thumbnail_url: str
    image_url: str
    meta: dict[str, Any] = Field(default_factory=dict)


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


class Health(BaseModel):
    status: Literal["ok"]
    images: int
    model_loaded: bool
    version: str


class ErrorBody(BaseModel):
    detail: str = Field(..., description="what was wrong and what to do about it")

"""Request parsing: k and metric from the query string, the JSON body or the form; bodies by media type.

Search and add accept JSON or multipart on one path, so their bodies are read by hand (with a
size cap, see uploads.py) rather than declared as FastAPI body parameters; the OpenAPI schema
describes both forms explicitly (`openapi_body`).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ValidationError

from ..presets import PRESETS
from ..search import METRICS
from .errors import validation_message
from .schemas import MAX_ID, MAX_K, Metric

M = TypeVar("M", bound=BaseModel)

DEFAULT_K = 10
DEFAULT_METRIC = "cosine"

ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="the image's id in the index")]
QueryK = Annotated[int | None, Query(ge=1, le=MAX_K, description="number of results (default 10)")]
QueryMetric = Annotated[Metric | None, Query(description=f"one of {', '.join(METRICS)} (default cosine)")]


def parse_k(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_K
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise HTTPException(422, f"k must be a whole number between 1 and {MAX_K}, got {value!r}") from None
    if not 1 <= k <= MAX_K:
        raise HTTPException(422, f"k must be between 1 and {MAX_K}, got {k}")
    return k


def parse_metric(value: Any) -> str:
    if value is None or value == "":
        return DEFAULT_METRIC
    if value not in METRICS:
        raise HTTPException(422, f"metric must be one of {', '.join(METRICS)}, got {value!r}")
    return str(value)


def parse_box(value: Any) -> list[float] | None:
    """A form field 'x0,y0,x1,y1' (or a JSON list) -> four numbers; 422 saying what is wrong."""
    if value is None or value == "":
        return None
    from ..region import BoxError
    from ..region import parse_box as parse

    try:
        return list(parse(value))
    except BoxError as exc:
        raise HTTPException(422, str(exc)) from None


def parse_preset(value: Any) -> str | None:
    from ..presets import PRESETS

    if value is None or value == "":
        return None
    if value not in PRESETS:
        raise HTTPException(422, f"preset must be one of {', '.join(PRESETS)}, got {value!r}")
    return str(value)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def json_body(body: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise HTTPException(422, validation_message(exc)) from None


def openapi_body(json_model: type[BaseModel], form_schema: dict, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": form_schema},
    }}}


SEARCH_FORM = {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the query image"},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
        "metric": {"type": "string", "enum": list(METRICS)},
        "box": {"type": "string", "description": "x0,y0,x1,y1: search with this region of the image (pixels)"},
        "preset": {"type": "string", "enum": list(PRESETS)},
    },
}
ADD_FORM = {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "an image to add (repeat the field to add several)"},
    },
}

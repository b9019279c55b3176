"""Request parsing: k and metric from the query string, the JSON body or the form; bodies by media type.

Search and add accept JSON or multipart on one path, so their bodies are read by hand (with a
size cap, see uploads.py) rather than declared as FastAPI body parameters; the OpenAPI schema
describes both forms explicitly (`openapi_body`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ValidationError

from ..presets import PRESETS
from ..search import METRICS
from .errors import validation_message
from .schemas import MAX_BATCH, MAX_ID, MAX_K, PREFIX_DOC, WHERE_DOC, Metric

if TYPE_CHECKING:
    from ..region import Box  # region (and PIL) is imported where a box is parsed

M = TypeVar("M", bound=BaseModel)

DEFAULT_K = 10
DEFAULT_METRIC = "cosine"

ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="the image's id in the index")]
QueryK = Annotated[int | None, Query(ge=1, le=MAX_K, description="number of results (default 10)")]
QueryMetric = Annotated[Metric | None, Query(description=f"one of {', '.join(METRICS)} (default cosine)")]
QueryWhere = Annotated[list[str] | None, Query(max_length=500, description=WHERE_DOC + " (repeat the parameter)")]
QueryPrefix = Annotated[str | None, Query(max_length=2048, description=PREFIX_DOC)]


def single(name: str, *sources: Sequence[Any]) -> Any:
    """The one value given for `name` across the query string, the JSON body and the form (each a list
    of what it gave); 422 when it was given more than once, rather than silently choosing one."""
    given = [v for source in sources for v in source if v is not None and v != ""]
    if len(given) > 1:
        raise HTTPException(422, f"'{name}' was given {len(given)} times (query string, JSON body or form): "
                                 "give it once")
    return given[0] if given else None


def several(name: str, *sources: Sequence[str] | None) -> list[str]:
    """A repeatable field (`where`) from one place only: the query string, the body or the form."""
    given = [list(source) for source in sources if source]
    if len(given) > 1:
        raise HTTPException(422, f"'{name}' was given both in the query string and in the body or form: "
                                 "give it in one place")
    return given[0] if given else []


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


def parse_box(value: Any) -> Box | None:
    """A form field 'x0,y0,x1,y1' (or a JSON list) -> a box; 422 saying what is wrong."""
    if value is None or value == "":
        return None
    from ..region import BoxError
    from ..region import parse_box as parse

    try:
        return parse(value)
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


class _DuplicateKey(Exception):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(f"'{key}' was given {keys.count(key)} times in the JSON body: give it once")
    return dict(pairs)


def json_body(body: bytes, model: type[M]) -> M:
    """The body as `model`; a key given twice ({"k": 5, "k": 50}) is refused, not resolved silently."""
    try:
        json.loads(body or b"null", object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as exc:
        raise HTTPException(422, f"invalid request: {exc}") from None
    except ValueError:
        pass  # not JSON: pydantic's message below says so
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise HTTPException(422, validation_message(exc)) from None


def openapi_body(json_model: type[BaseModel], form_schema: dict, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": form_schema},
    }}}


SEARCH_FORM: dict[str, Any] = {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the query image"},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
        "metric": {"type": "string", "enum": list(METRICS)},
        "where": {"type": "array", "items": {"type": "string"}, "description": WHERE_DOC},
        "source_prefix": {"type": "string", "description": PREFIX_DOC},
        "box": {"type": "string", "description": "x0,y0,x1,y1: search with this region of the image (pixels)"},
        "preset": {"type": "string", "enum": list(PRESETS)},
    },
}
BATCH_FORM = {
    "type": "object", "required": ["file"], "properties": {
        **SEARCH_FORM["properties"],
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": MAX_BATCH,
                 "description": "the query images (repeat the field)"},
    },
}
ADD_FORM = {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "an image to add (repeat the field to add several)"},
    },
}

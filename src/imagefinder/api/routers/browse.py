"""GET /images: the whole collection, page by page, newest first, with the search's filters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from ..errors import ERRORS
from ..params import QueryPrefix, QueryWhere
from ..schemas import MAX_PAGE, ImagePage
from ..service import ServiceDep

router = APIRouter(tags=["images"])


@router.get("/images", response_model=ImagePage, responses=ERRORS, summary="List the indexed images, newest first")
def list_images(request: Request, service: ServiceDep,
                offset: Annotated[int, Query(ge=0, le=2**53, description="images to skip")] = 0,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"images per page (at most {MAX_PAGE})")] = 50,
                where: QueryWhere = None, source_prefix: QueryPrefix = None) -> ImagePage:
    """A page of the indexed images (`total` says how many match), newest (highest id) first.

    `where` (repeatable) and `source_prefix` filter as in `POST /search`; the next page is
    `offset + limit` while that is below `total`.
    """
    service.refresh()
    flt = service.filter_of(list(where or []), source_prefix)
    total, rows = service.finder.store.page(offset, limit, flt)
    return ImagePage(total=total, offset=offset, limit=limit, images=[service.image_info(request, r) for r in rows])

"""GET /duplicates: the exact / near / similar groups of `imagefinder duplicates`, read only.

Finding them takes seconds on a large index (n neighbour searches, pixel checks), so the answer
is computed once per index generation, in a CPU slot, and kept until the index changes.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from fastapi import APIRouter, Query, Request

from ..errors import ERRORS
from ..schemas import DuplicateGroup, DuplicatesReport, DuplicateTier
from ..service import ServiceDep

router = APIRouter(tags=["images"])


@router.get("/duplicates", response_model=DuplicatesReport, responses=ERRORS,
            summary="Exact duplicates, near-duplicates and similar images, in groups")
async def duplicates(request: Request, service: ServiceDep,
                     tier: Annotated[Literal["exact", "near", "similar", "all"],
                                     Query(description="which tier's groups (default all)")] = "all"
                     ) -> DuplicatesReport:
    """The groups `imagefinder duplicates INDEX --json` reports, with each member's thumbnail URL.

    Computed on the index as it is now, cached until it changes (an add or delete makes a new
    generation); the first request after a change may take seconds on a large index.
    """
    found = await service.duplicates()
    groups = [DuplicateGroup(tier=cast(DuplicateTier, g.tier), score=g.score, check=g.check, ids=g.ids,
                             images=[service.image_info(request, found.rows[i]) for i in g.ids])
              for g in found.groups if tier in ("all", g.tier)]
    return DuplicatesReport(generation=found.generation, model=found.model, thresholds=found.thresholds,
                            groups=groups)

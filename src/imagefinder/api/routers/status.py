"""GET /stats (what the index holds) and GET /health (liveness and readiness)."""

from __future__ import annotations

from fastapi import APIRouter

from ... import __version__
from ...search import METRICS
from ..schemas import MAX_K, Health, Stats
from ..service import ServiceDep

router = APIRouter(tags=["service"])


@router.get("/stats", response_model=Stats, summary="What the index holds")
def stats(service: ServiceDep) -> Stats:
    service.refresh()
    settings, m = service.settings, service.finder.manifest
    return Stats(images=service.finder.store.ntotal, items=m.counts.items, failed=m.counts.failed,
                 removed=m.counts.removed, model=m.model, index_type=m.index_spec, dims=m.embedding_dim,
                 clusters=m.clusters, nprobe=m.nprobe, generation=m.generation, created_at=m.created_at,
                 updated_at=m.updated_at, metrics=list(METRICS),
                 max_upload_bytes=settings.max_upload_bytes, max_pixels=settings.pixel_limit, max_k=MAX_K,
                 writes="read-only" if settings.read_only else "token" if settings.token else "this-machine")


@router.get("/health", response_model=Health, summary="Liveness and readiness")
def health(service: ServiceDep) -> Health:
    return Health(status="ok", images=service.finder.store.ntotal, model_loaded=service.finder.model_loaded,
                  version=__version__)

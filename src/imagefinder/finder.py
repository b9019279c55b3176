"""The Python API: open an index once, then ask which images look like a query.

    from imagefinder import ImageFinder
    finder = ImageFinder("my-index")
    for r in finder.search("query.jpg", k=5):
        print(r.rank, r.score, r.source)

The CLI, the REST API and the notebook all go through this class.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .confidence import Match, match_labels, threshold_for
from .embed import Embedder
from .index import IndexError_, Manifest, Store, is_exact, read_manifest
from .index.filters import Filter
from .ingest.decode import ImageError, open_image
from .ingest.sources import is_url
from .presets import (
    FROM_PRESET,
    NO_RERANK_METRICS,
    FromPreset,
    Preset,
    get_preset,
    recorded_preset,
    resolve_query_options,
)
from .region import Box, crop_box, parse_box
from .search import Hit, SearchSpace, search, verified_expansion

if TYPE_CHECKING:
    from .pipeline import BuildReport
    from .rerank import SpatialReranker
    from .runners.base import Runner

# The pipeline (and with it httpx, via the downloader) is imported where an index is written or
# a URL fetched: a search from a file, the common case, does not pay for loading it.


@dataclass
class Result:
    rank: int
    id: int
    source: str
    score: float
    cluster: int | None = None
    width: int | None = None
    height: int | None = None
    meta: dict | None = None
    # "strong": the same object or scene with high confidence; "weak": only the nearest there is
    # (see confidence.py); None: no calibrated threshold for this index's model.
    match: Match | None = None

    def to_dict(self) -> dict:
        return asdict(self)


Query = str | Path | bytes | Image.Image


class ImageFinder:
    """A loaded index plus its model (loaded on first query, then shared by all threads).

    `threads`: onnxruntime threads per query (None: one per core). A server computing several
    queries at once gives each one or two, so that the queries do not fight over the cores.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.store = Store(path)
        self._threads = threads
        self._embedder: Embedder | None = None
        self._reranker: SpatialReranker | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._reload_lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        return self.store.manifest

    def reload(self) -> None:
        """Pick up a newer generation (written by this or another process).

        One reload at a time: a search's refresh that opened the index just before a write
        committed must not replace the write's newer store with its older one when it finishes."""
        with self._reload_lock:
            old, self.store = self.store, Store(self.store.path)
        old.close_later()

    def reload_if_changed(self) -> bool:
        if read_manifest(self.path).generation != self.store.generation:
            self.reload()
            return True
        return False

    def add(self, sources: list[str], progress: bool = False, runner: Runner | None = None) -> BuildReport:
        """Add images (paths, folders, CSVs, URLs) in place; visible to the next search.

        `runner`: who loads and embeds them (default: the local thread pool)."""
        from .pipeline import add_to_index

        with self._write_lock:
            report = add_to_index(self.path, sources, embedder=self.embedder, progress=progress, runner=runner)
            self.reload()
        return report

    def remove(self, ids: list[int]) -> int:
        from .pipeline import remove_from_index

        with self._write_lock:
            removed = remove_from_index(self.path, ids)
            self.reload()
        return removed

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder.for_manifest(self.manifest, threads=self._threads)
            return self._embedder

    @property
    def model_loaded(self) -> bool:
        return self._embedder is not None

    def space(self, store: Store | None = None) -> SearchSpace:
        store = store or self.store
        m = store.manifest
        if store.index is None:
            raise IndexError_(f"{store.path}: no indexed images to search")
        weights = [float(x.get("weight", 1.0)) for x in m.members] or None
        slices = [(int(a), int(b)) for a, b in m.member_slices]
        return SearchSpace(store.index, store.embeddings, slices, is_exact(m.index_spec), weights)

    def reranker(self, **options: Any) -> SpatialReranker:
        """The spatial re-ranker of this index (local features cached in INDEX/local/), made once."""
        from .rerank import SpatialReranker

        with self._lock:
            if self._reranker is None or options:
                self._reranker = SpatialReranker(self.path, **options)
            return self._reranker

    def embed(self, query: Query) -> np.ndarray:
        """Raw backbone features of one query (path, http(s) URL, bytes or PIL image)."""
        return self.embedder.embed_images([self._image(query)])[0]

    def _query_bytes(self, query: str | Path | bytes) -> bytes | Path:
        if isinstance(query, bytes):
            return query
        if isinstance(query, str) and is_url(query):
            from .ingest.download import fetch
            from .pipeline import default_download_config

            result = fetch(query, default_download_config())
            if not result.ok or result.path is None:
                raise ImageError(f"{query}: {result.error}")
            return result.path
        path = Path(query)
        if not path.is_file():
            raise ImageError(f"{query}: no such image file")
        return path

    @property
    def preset(self) -> Preset | None:
        """The preset this index was built with (None: built with explicit options)."""
        return recorded_preset(self.manifest.config.preset)

    def query_options(self, preset: str | None = None, metric: str = "cosine", **given: Any) -> dict[str, Any]:
        """qe, qe_alpha, rerank, rerank_budget, vqe: those `given`, else the named preset's, else the
        preset the index was built with, else off (`presets.resolve_query_options`). Not given:
        None, or FROM_PRESET for rerank_budget (whose None means no budget)."""
        return resolve_query_options(get_preset(preset) if preset else self.preset, metric, given)

    def search(self, query: Query, k: int = 10, metric: str = "cosine", *, qe: int | None = None,
               qe_alpha: float | None = None, rerank: int | None = None,
               rerank_budget: float | None | FromPreset = FROM_PRESET, box: Box | str | None = None,
               preset: str | None = None, where: Filter | None = None, vqe: int | None = None) -> list[Result]:
        """Top-k images for a query image.

        qe: expand the query with its top `qe` results (alpha-QE, `qe_alpha`) before the search.
        rerank: spatially verify the top `rerank` results with local features (see `rerank`),
        spending at most `rerank_budget` seconds on it. vqe: then search again with the query averaged
        with its first `vqe` verified results (verified query expansion). Options left None come from `preset`
        (query-time parts), else from the preset the index was built with, else are off.
        box: search with this region of the query only, (x0, y0, x1, y1) in its pixels.
        where: only images this metadata filter matches (`Filter.parse(["year>=2000"])`).
        """
        opts = self.query_options(preset, metric, qe=qe, qe_alpha=qe_alpha, rerank=rerank,
                                  rerank_budget=rerank_budget, vqe=vqe)
        image = self._image(query)
        if box is not None:
            image = crop_box(image, parse_box(box))
        vector = self.embedder.embed_images([image])[0]
        local = self.reranker().query_features(image) if opts["rerank"] else None
        return self.search_vectors(vector[None], k, metric, local_queries=[local] if local is not None else None,
                                   where=where, **opts)[0]

    def search_id(self, item_id: int, k: int = 10, metric: str = "cosine", *, qe: int | None = None,
                  qe_alpha: float | None = None, rerank: int | None = None,
                  rerank_budget: float | None | FromPreset = FROM_PRESET, preset: str | None = None,
                  where: Filter | None = None, vqe: int | None = None) -> list[Result]:
        """'More like this': query with an indexed image's stored features."""
        opts = self.query_options(preset, metric, qe=qe, qe_alpha=qe_alpha, rerank=rerank,
                                  rerank_budget=rerank_budget, vqe=vqe)
        store = self.store
        record = store.records([item_id]).get(item_id, {})
        if record.get("status") != "ok":
            raise KeyError(f"no indexed image with id {item_id}")
        local = None
        if opts["rerank"]:
            local = [self.reranker().cache.get(item_id, record, store.thumbnail_path(item_id))]
        return self.search_vectors(np.asarray(store.embeddings[item_id], np.float32)[None], k, metric,
                                   local_queries=local, where=where, **opts)[0]

    def search_vectors(self, queries: np.ndarray, k: int = 10, metric: str = "cosine", *, qe: int = 0,
                       qe_alpha: float = 3.0, rerank: int = 0, rerank_budget: float | None = 2.0,
                       local_queries: list | None = None, where: Filter | None = None,
                       vqe: int = 0) -> list[list[Result]]:
        """Rank for raw query vectors; `local_queries` (local features per query) enable `rerank`
        (and `vqe`, verified query expansion: `search.verified_expansion`);
        `where` keeps only the images a metadata filter matches (applied inside the vector search)."""
        store = self.store  # one consistent generation even if an update lands meanwhile
        if store.index is None:
            return [[] for _ in range(len(queries))]
        if rerank and metric in NO_RERANK_METRICS:
            raise ValueError("re-ranking adds to similarity scores: use it with cosine, vote or fusion, not euclidean")
        depth = max(k, rerank) if rerank else k
        allowed = None if where is None or where.empty else store.matching_ids(where)
        space = self.space(store)
        hits = search(space, queries, depth, metric, qe=qe, qe_alpha=qe_alpha, allowed=allowed)
        if rerank and local_queries is not None:
            hits = [h if lf is None else verify(self.reranker(), space, store, q, lf, h, rerank, rerank_budget, vqe,
                                                depth, metric, allowed)
                    for q, h, lf in zip(queries, hits, local_queries)]
        threshold = threshold_for(store.manifest.members)
        return [self._results(store, h[:k], q, threshold) for h, q in zip(hits, queries)]

    def _image(self, query: Query) -> Image.Image:
        if isinstance(query, Image.Image):
            return query.convert("RGB")
        try:
            return open_image(self._query_bytes(query)).image.convert("RGB")
        except ImageError as exc:  # say which query it was: a batch has several
            if isinstance(query, bytes) or str(exc).startswith(f"{query}:"):
                raise
            raise ImageError(f"{query}: {exc}") from exc

    def _results(self, store: Store, hits: list[Hit], query: np.ndarray, threshold: float | None) -> list[Result]:
        rows = store.records([h.id for h in hits])
        ids = [h.id for h in hits]
        stored = np.asarray(store.embeddings[ids], np.float32) if ids else np.zeros((0, len(query)), np.float32)
        matches = match_labels(np.asarray(query, np.float32), stored, threshold)
        out = []
        for rank, (hit, match) in enumerate(zip(hits, matches), 1):
            row = rows.get(hit.id, {})
            out.append(Result(rank, hit.id, row.get("source", ""), hit.score, row.get("cluster"),
                              row.get("width"), row.get("height"), row.get("meta") or None, match))
        return out

    def info(self, failures: int | None = 20) -> dict:
        """What the index holds; `failures`: how many failed items to list (None: all)."""
        from .pipeline import failure_reasons

        m = self.manifest
        failed = self.store.failures(None)  # every failure, builds and adds alike, counted by reason
        return {
            "path": str(self.path),
            "model": m.model,
            "precision": m.precision,
            "index_spec": m.index_spec,
            "embedding_dim": m.embedding_dim,
            "clusters": m.clusters,
            "nprobe": m.nprobe,
            "counts": asdict(m.counts),
            "failure_reasons": failure_reasons(r["error"] for r in failed),
            "failures": [{"id": r["id"], "source": r["source"], "error": r["error"]} for r in failed[:failures]],
            "created_at": m.created_at,
            "versions": m.versions,
        }

    def close(self) -> None:
        self.store.close()


def verify(reranker: SpatialReranker, space: SearchSpace, store: Store, query: np.ndarray, local: Any,
           hits: list[Hit], top: int, budget_s: float | None, vqe: int, k: int, metric: str = "cosine",
           allowed: np.ndarray | None = None) -> list[Hit]:
    """Spatial re-ranking of `hits`, then (vqe > 0) verified query expansion with the first `vqe`
    verified results: the one path the finder and `evaluate` share."""
    ranked, verified = reranker.rerank_verified(local, hits, store, top=top, budget_s=budget_s)
    if not vqe:
        return ranked
    return verified_expansion(space, query, ranked, verified[:vqe], k, metric, allowed)

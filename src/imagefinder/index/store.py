"""Read access to one committed generation of an index: manifest, vectors, raw features, id table."""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import spec
from .faiss_ops import read_faiss, set_search_params
from .filters import Filter
from .items import Items
from .layout import EMBEDDINGS, ITEMS, THUMBS, vectors_file
from .manifest import read_manifest
from .searcher import VectorIndex, searcher

FILTER_CACHE = 16  # filters whose matching ids a store keeps


class Store:
    """One committed generation, opened for searching.

    `index` is what search.py queries (a `VectorIndex`): the FAISS index (memory-mapped above
    EXACT_LIMIT, so a big index opens instantly), wrapped in exact re-ranking when the manifest
    says so, or a Milvus collection when the manifest names one. `faiss` is the bare FAISS
    index (or None).
    """

    def __init__(self, path: Path | str, mmap: bool | None = None) -> None:
        self.path = Path(path)
        for attempt in range(5):  # a writer may commit (and delete old files) while we open
            self.manifest = read_manifest(self.path)
            try:
                self._open(mmap)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise

    def _open(self, mmap: bool | None) -> None:
        m = self.manifest
        self.generation = m.generation
        rows, dim, indexed = m.rows, m.embedding_dim, m.counts.indexed
        self.embeddings = (np.memmap(self.path / EMBEDDINGS, np.float16, "r", shape=(rows, dim)) if rows
                           else np.zeros((0, dim), np.float16))
        self.faiss: faiss.Index | None = None
        self.index: VectorIndex | None = None
        if m.store:
            from ..stores import open_vector_store

            self.index = open_vector_store(m.store, rows=rows, ntotal=indexed) if indexed else None
        else:
            vectors = self.path / vectors_file(self.generation)
            if indexed or vectors.exists():
                if not vectors.exists():
                    raise FileNotFoundError(vectors)
                self.faiss = read_faiss(self.path, self.generation,
                                        mmap if mmap is not None else indexed > spec.EXACT_LIMIT)
            if self.faiss is not None:
                set_search_params(self.faiss, m.nprobe, m.ef_search)
                self.index = searcher(self.faiss, self.embeddings, m.index_spec, m.rerank)
        self.items = Items(self.path / ITEMS)
        self._filtered: dict[Filter, np.ndarray] = {}
        self._filter_lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    def records(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Visible rows by id, as dicts (failed ones included: their status says so)."""
        return {i: asdict(r) for i, r in self.items.records(ids, self.generation).items()}

    def failures(self, limit: int | None = 20) -> list[dict[str, Any]]:
        """Failed rows by id, as dicts; all of them when `limit` is None."""
        return [asdict(r) for r in self.items.failures(self.generation, limit)]

    def ids_by_source(self) -> dict[str, int]:
        return self.items.ids_by_source(self.generation)

    def live_ids(self, since: int = 0, limit: int | None = None) -> np.ndarray:
        """Ids of indexed images (id >= since), ascending; the `limit` most recent if given."""
        return self.items.live_ids(self.generation, since, limit)

    def matching_ids(self, flt: Filter) -> np.ndarray:
        """Ids of indexed images that `flt` matches, ascending; the last few filters' answers are kept
        (a store is one generation, so they never go stale) - browsing and repeated searches skip the scan."""
        with self._filter_lock:
            cached = self._filtered.pop(flt, None)
        if cached is None:
            cached = self.items.matching_ids(self.generation, flt)
        with self._filter_lock:
            self._filtered[flt] = cached  # most recent last
            while len(self._filtered) > FILTER_CACHE:
                self._filtered.pop(next(iter(self._filtered)))
        return cached

    def page(self, offset: int, limit: int, flt: Filter | None = None) -> tuple[int, list[dict[str, Any]]]:
        """(matching images, a page of their rows as dicts), newest first."""
        if flt is None or flt.empty:
            total, rows = self.items.page(self.generation, offset, limit)
            return total, [asdict(r) for r in rows]
        ids = self.matching_ids(flt)[::-1]
        chosen = [int(i) for i in ids[offset:offset + limit]]
        records = self.records(chosen)
        return len(ids), [records[i] for i in chosen if i in records]

    def thumbnail_path(self, item_id: int) -> Path:
        return self.path / THUMBS / f"{int(item_id)}.jpg"

    def close(self) -> None:
        self.items.close()

    def close_later(self) -> None:
        """Leave closing to garbage collection: a search in flight may still hold this store."""

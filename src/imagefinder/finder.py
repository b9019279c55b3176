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

import numpy as np
from PIL import Image

from .download import fetch
from .embed import Embedder
from .images import ImageError, open_image
from .index import Store, is_exact, read_manifest
from .pipeline import BuildReport, add_to_index, default_download_config, remove_from_index
from .search import Hit, SearchSpace, search
from .sources import is_url


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

    def to_dict(self) -> dict:
        return asdict(self)


Query = str | Path | bytes | Image.Image


class ImageFinder:
    """A loaded index plus its model (loaded on first query, then shared by all threads)."""

    def __init__(self, path: str | Path) -> None:
        self.store = Store(path)
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    @property
    def manifest(self) -> dict:
        return self.store.manifest

    def reload(self) -> None:
        """Pick up a newer generation (written by this or another process)."""
        old, self.store = self.store, Store(self.store.path)
        old.close_later()

    def reload_if_changed(self) -> bool:
        if read_manifest(self.path).get("generation", 0) != self.store.generation:
            self.reload()
            return True
        return False

    def add(self, sources: list[str], progress: bool = False) -> BuildReport:
        """Add images (paths, folders, CSVs, URLs) in place; visible to the next search."""
        with self._write_lock:
            report = add_to_index(self.path, sources, embedder=self.embedder, progress=progress)
            self.reload()
        return report

    def remove(self, ids: list[int]) -> int:
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
                self._embedder = Embedder(self.manifest["model"])
            return self._embedder

    def space(self, store: Store | None = None) -> SearchSpace:
        store = store or self.store
        m = store.manifest
        return SearchSpace(store.index, store.embeddings, [tuple(s) for s in m.get("member_slices", [])],
                           is_exact(m["index_spec"]))

    def embed(self, query: Query) -> np.ndarray:
        """Raw backbone features of one query (path, http(s) URL, bytes or PIL image)."""
        image = query if isinstance(query, Image.Image) else open_image(self._query_bytes(query)).image
        return self.embedder.embed_images([image.convert("RGB")])[0]

    def _query_bytes(self, query: str | Path | bytes) -> bytes | Path:
        if isinstance(query, bytes):
            return query
        if isinstance(query, str) and is_url(query):
            result = fetch(query, default_download_config())
            if not result.ok or result.path is None:
                raise ImageError(f"{query}: {result.error}")
            return result.path
        path = Path(query)
        if not path.is_file():
            raise ImageError(f"{query}: no such image file")
        return path

    def search(self, query: Query, k: int = 10, metric: str = "cosine") -> list[Result]:
        return self.search_vectors(self.embed(query)[None], k, metric)[0]

    def search_id(self, item_id: int, k: int = 10, metric: str = "cosine") -> list[Result]:
        """'More like this': query with an indexed image's stored features."""
        store = self.store
        if store.records([item_id]).get(item_id, {}).get("status") != "ok":
            raise KeyError(f"no indexed image with id {item_id}")
        return self.search_vectors(np.asarray(store.embeddings[item_id], np.float32)[None], k, metric)[0]

    def search_vectors(self, queries: np.ndarray, k: int = 10, metric: str = "cosine") -> list[list[Result]]:
        store = self.store  # one consistent generation even if an update lands meanwhile
        if store.index is None:
            return [[] for _ in range(len(queries))]
        hits = search(self.space(store), queries, k, metric)
        return [self._results(store, h) for h in hits]

    def _results(self, store: Store, hits: list[Hit]) -> list[Result]:
        rows = store.records([h.id for h in hits])
        out = []
        for rank, hit in enumerate(hits, 1):
            row = rows.get(hit.id, {})
            out.append(Result(rank, hit.id, row.get("source", ""), hit.score, row.get("cluster"),
                              row.get("width"), row.get("height"), row.get("meta") or None))
        return out

    def info(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path),
            "model": m["model"],
            "index_spec": m["index_spec"],
            "embedding_dim": m["embedding_dim"],
            "clusters": m.get("clusters"),
            "nprobe": m.get("nprobe"),
            "counts": m["counts"],
            "failure_reasons": m.get("failure_reasons", {}),
            "failures": [{"id": r["id"], "source": r["source"], "error": r["error"]} for r in self.store.failures()],
            "created_at": m["created_at"],
            "versions": m.get("versions", {}),
        }

    def close(self) -> None:
        self.store.close()


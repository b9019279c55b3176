"""What search.py queries: the `VectorIndex` protocol, and the FAISS searchers that implement it.

A `VectorIndex` takes unit query vectors and returns (scores, ids) of its k best matches,
highest score first, -1 ids past the end. The FAISS searchers below and the Milvus store
(stores/milvus.py) both implement it, so search.py never knows where the vectors live.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import faiss
import numpy as np

from ..embed import l2_normalize
from .faiss_ops import IdSelection, apply_chain, unit_rows
from .spec import rerank_space


@runtime_checkable
class VectorIndex(Protocol):
    """k-nearest-neighbour search over the indexed unit vectors, by cosine."""

    @property
    def d(self) -> int:
        """Dimension of the query vectors it takes."""
        ...

    @property
    def ntotal(self) -> int:
        """How many vectors a search can return."""
        ...

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(queries), k); ids -1 and scores -max past the last match.

        `allowed` (ascending ids): rank only these (a metadata filter), inside the search."""
        ...


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One OpenMP thread for this (calling) thread's FAISS calls.

    A single query has no parallel work in FAISS (Flat, IVF and HNSW parallelise over
    queries), yet entering an OpenMP region makes it wait for the whole thread team: on a
    busy machine that wait, not the search, sets the latency (p99 x100 measured here).
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


SUBSET_EXACT = 512  # a filter matching at most this many images is ranked exactly, row by row (measured:
# above it the FAISS selector is faster, benchmarks/filtered_search.py)


class Searcher:
    """A FAISS index as a `VectorIndex`. Single queries run on one thread (see `single_thread`); batches use every core.

    Filtered searches (`allowed`) go through a FAISS id selector; with the raw `features` at
    hand, a filter matching few images is instead scored exactly over just those rows, and so is
    a query the approximate index left short of k (HNSW's graph walk can miss a narrow filter).
    """

    def __init__(self, index: faiss.Index, features: np.ndarray | None = None) -> None:
        self.index = index
        self.features = features

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if allowed is not None and self.features is not None and len(allowed) <= SUBSET_EXACT:
            return self.subset_search(queries, k, allowed)
        selection = None if allowed is None else IdSelection(self.index, allowed, self.index.ntotal)
        if len(queries) > 1:
            scores, ids = self._search(queries, k, selection)
        else:
            with single_thread():
                scores, ids = self._search(queries, k, selection)
        if allowed is not None and self.features is not None:
            short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, len(allowed)))
            if len(short):
                scores[short], ids[short] = self.subset_search(queries[short], k, allowed)
        return scores, ids

    def subset_search(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine (in this searcher's space) against the `allowed` rows only, in chunks."""
        assert self.features is not None
        q = l2_normalize(self.space(l2_normalize(np.ascontiguousarray(queries, dtype=np.float32))))
        scores = np.full((len(q), k), -np.finfo(np.float32).max, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        best_s, best_i = scores[:, :0], ids[:, :0]
        for start in range(0, len(allowed), 16_384):
            chunk = np.asarray(allowed[start:start + 16_384], np.int64)
            rows = l2_normalize(self.space(unit_rows(self.features, chunk)))
            sims = np.einsum("ij,qj->qi", rows, q)  # einsum: no BLAS thread team to wait for (see single_thread)
            best_s = np.concatenate([best_s, sims], axis=1)
            best_i = np.concatenate([best_i, np.broadcast_to(chunk, sims.shape)], axis=1)
            top = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(best_s, top, 1), np.take_along_axis(best_i, top, 1)
        scores[:, :best_s.shape[1]], ids[:, :best_i.shape[1]] = best_s, best_i
        return scores, ids

    def _search(self, queries: np.ndarray, k: int,
                selection: IdSelection | None = None) -> tuple[np.ndarray, np.ndarray]:
        if selection is None:
            scores, ids = self.index.search(queries, k)
        else:
            scores, ids = self.index.search(queries, k, params=selection.params)
        return scores, ids

    def space(self, vectors: np.ndarray) -> np.ndarray:
        """Where this searcher's scores are cosines: its FAISS chain's output."""
        return apply_chain(self.index, vectors)


class RerankIndex(Searcher):
    """FAISS candidates re-scored by exact cosine on the stored raw features.

    Compressed codes pick `depth` candidates, then their float16 rows of embeddings.f16
    (memory-mapped: page cache, not index memory) are compared exactly, in the cosine space
    of the spec.
    """

    features: np.ndarray  # always given here

    def __init__(self, index: faiss.Index, features: np.ndarray, depth: int, space: str = "input") -> None:
        super().__init__(index, features)
        self.depth, self.rerank_space = int(depth), space

    def space(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return apply_chain(self.index, vectors) if self.rerank_space == "index" else vectors

    def _search(self, queries: np.ndarray, k: int,
                selection: IdSelection | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = l2_normalize(queries)
        depth = min(self.index.ntotal, max(k, self.depth))
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if depth <= 0:
            return scores, ids
        _, cand = super()._search(queries, depth, selection)
        spaced = self.space(queries)
        for row, (q, c) in enumerate(zip(spaced, cand)):
            c = np.sort(c[c >= 0])  # ascending ids: sequential reads, ties broken by id
            if not len(c):
                continue
            sims = np.einsum("ij,j->i", self.space(unit_rows(self.features, c)), q)  # no BLAS threads
            top = np.argsort(-sims, kind="stable")[:k]
            scores[row, :len(top)], ids[row, :len(top)] = sims[top], c[top]
        return scores, ids


def searcher(index: faiss.Index, features: np.ndarray, spec: str, rerank: int | None) -> Searcher:
    """What search.py queries: the index, wrapped in exact re-ranking if `rerank`."""
    return RerankIndex(index, features, rerank, rerank_space(spec)) if rerank else Searcher(index, features)


def transform(index: faiss.Index | VectorIndex | None, vectors: np.ndarray) -> np.ndarray:
    """Vectors in the cosine space of `index`: after a FAISS index's own PCA/normalisation chain.

    Given what `Store.index` holds instead of a bare FAISS index - a searcher or a Milvus
    store - it returns that searcher's cosine space (where its scores are measured).
    """
    if isinstance(index, Searcher):
        return index.space(vectors)
    if isinstance(index, faiss.Index):
        return apply_chain(index, vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)

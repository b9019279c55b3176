"""Search: rank indexed images for query vectors by cosine, Euclidean distance, or a vote.

- cosine: inner product in the index's own space (after PCA/whitening, unit vectors) - the
  FAISS index answers it directly, exactly or through IVF clusters.
- euclidean: L2 distance between the *raw* backbone features. On unit vectors
  ||a-b||^2 = 2 - 2cos(a,b), so the two rank identically; raw CNN features have different
  norms (busy images have larger activations), which is where the rankings differ.
- vote: reciprocal-rank fusion (score = sum 1/(60 + rank)) of the cosine ranking, the
  Euclidean ranking and, for an ensemble `a+b`, each member's own cosine ranking.

Euclidean and vote rank a candidate set: every indexed image for an exact index, else the
top CANDIDATES of the cosine search (so they stay fast on a million images).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .embed import l2_normalize

METRICS = ("cosine", "euclidean", "vote")
RRF_K = 60
CANDIDATES = 1000


@dataclass(frozen=True)
class Hit:
    id: int
    score: float  # cosine: similarity (higher first); euclidean: distance (lower first); vote: RRF


@dataclass
class SearchSpace:
    """What ranking needs from an index: FAISS, raw features by id, ensemble member columns."""

    index: faiss.Index
    embeddings: np.ndarray  # (rows, dim) raw features, row = id
    members: list[tuple[int, int]]
    exact: bool


def search(space: SearchSpace, queries: np.ndarray, k: int, metric: str = "cosine") -> list[list[Hit]]:
    """Top-k hits for each row of `queries` (raw backbone features, shape (Q, dim))."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    total = space.index.ntotal
    k = max(0, min(k, total))
    if k == 0:
        return [[] for _ in range(len(queries))]
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if metric == "cosine":
        scores, ids = space.index.search(l2_normalize(queries), k)
        return [_hits(i, s) for i, s in zip(ids, scores)]
    depth = total if space.exact else min(total, max(CANDIDATES, 10 * k))
    cos_scores, cand = space.index.search(l2_normalize(queries), depth)
    return [_rank_candidates(space, q, c, s, k, metric) for q, c, s in zip(queries, cand, cos_scores)]


def _rank_candidates(space: SearchSpace, query: np.ndarray, cand: np.ndarray, cos: np.ndarray, k: int, metric: str) -> list[Hit]:
    keep = cand >= 0
    cand, cos = cand[keep], cos[keep]
    raw = np.asarray(space.embeddings[cand], dtype=np.float32)
    dist = euclidean(query, raw)
    if metric == "euclidean":
        order = np.argsort(dist, kind="stable")[:k]
        return _hits(cand[order], dist[order])
    rankings = [np.argsort(-cos, kind="stable"), np.argsort(dist, kind="stable")]
    if len(space.members) > 1:
        for start, stop in space.members:
            member_cos = l2_normalize(raw[:, start:stop]) @ l2_normalize(query[None, start:stop])[0]
            rankings.append(np.argsort(-member_cos, kind="stable"))
    fused = rrf(rankings, len(cand))
    order = np.argsort(-fused, kind="stable")[:k]
    return _hits(cand[order], fused[order])


def euclidean(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact L2 distances from one query to each row."""
    diff = rows - query[None, :]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def rrf(rankings: list[np.ndarray], n: int, k0: int = RRF_K) -> np.ndarray:
    """Reciprocal-rank fusion: each ranking (positions -> item index) adds 1/(k0 + rank)."""
    fused = np.zeros(n, np.float64)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    for order in rankings:
        fused[order] += 1.0 / (k0 + ranks)
    return fused


def _hits(ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
    return [Hit(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]

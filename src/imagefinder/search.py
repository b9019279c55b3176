"""Search: rank indexed images for query vectors by cosine, Euclidean distance, or a vote.

- cosine: inner product in the index's own space (after PCA/whitening, unit vectors) - the
  FAISS index answers it directly, exactly or through IVF clusters.
- euclidean: L2 distance between the *raw* backbone features. On unit vectors
  ||a-b||^2 = 2 - 2cos(a,b), so the two rank identically; raw CNN features have different
  norms (busy images have larger activations), which is where the rankings differ.
- vote: reciprocal-rank fusion (score = sum 1/(60 + rank)) of the cosine ranking, the
  Euclidean ranking and, for an ensemble `a+b`, each member's own cosine ranking.
- fusion: for an ensemble, weighted reciprocal-rank fusion of the members' own cosine
  rankings only (weights from the model spec, `a:1+b:0.5`) - the rank-level alternative to
  fusing by concatenation (which `cosine` on an ensemble index is).

Euclidean, vote and fusion rank a candidate set: every indexed image for an exact index, else
the top CANDIDATES of the cosine search (so they stay fast on a million images).

Query expansion (`qe=N`, cosine and fusion): alpha-QE (Radenovic et al.): the query is
replaced by the normalised sum of itself and its top N results, each weighted by
max(sim, 0)^alpha (alpha=0: plain average QE), and searched again. It is done in the index's
input space (L2-normalised backbone features), which works for every index type; with PCA
the chain is affine up to the final normalisation, so this is close to QE after PCA.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .embed import l2_normalize
from .index import VectorIndex
from .index.faiss_ops import IdSelection
from .presets import QE_METRICS

METRICS = ("cosine", "euclidean", "vote", "fusion")
RRF_K = 60
CANDIDATES = 1000


@dataclass(frozen=True)
class Hit:
    id: int
    score: float  # cosine: similarity (higher first); euclidean: distance (lower first); vote: RRF


@dataclass
class SearchSpace:
    """What ranking needs from an index: a vector index, raw features by id, ensemble member columns."""

    index: VectorIndex  # FAISS (through index.searcher), Milvus, or a bare faiss.Index
    embeddings: np.ndarray  # (rows, dim) raw features, row = id
    members: list[tuple[int, int]]
    exact: bool
    weights: list[float] | None = None  # ensemble member weights (for `fusion`), default all 1


def search(space: SearchSpace, queries: np.ndarray, k: int, metric: str = "cosine", *,
           qe: int = 0, qe_alpha: float = 3.0, allowed: np.ndarray | None = None) -> list[list[Hit]]:
    """Top-k hits for each row of `queries` (raw backbone features, shape (Q, dim)).

    `qe` > 0 expands each query with its top `qe` results (alpha-QE, `qe_alpha`) first (from the
    whole index: the expansion is about the query, the filter about the results).
    `allowed` (ascending ids, e.g. a metadata filter's matches): rank only these, inside the
    vector search, so k results come back whenever k images match.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if qe < 0:
        raise ValueError(f"qe must be >= 0, got {qe}")
    if qe and metric not in QE_METRICS:
        raise ValueError(f"query expansion works with the cosine and fusion metrics, not {metric!r}")
    total = space.index.ntotal if allowed is None else min(space.index.ntotal, len(allowed))
    k = max(0, min(k, total))
    if k == 0:
        return [[] for _ in range(len(queries))]
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if qe:
        queries = expand_queries(space, queries, qe, qe_alpha)
    if metric == "cosine":
        scores, ids = _search(space, l2_normalize(queries), k, allowed)
        return [_hits(i, s) for i, s in zip(ids, scores)]
    depth = total if space.exact else min(total, max(CANDIDATES, 10 * k))
    cos_scores, cand = _search(space, l2_normalize(queries), depth, allowed)
    return [_rank_candidates(space, q, c, s, k, metric) for q, c, s in zip(queries, cand, cos_scores)]


def _search(space: SearchSpace, queries: np.ndarray, k: int,
            allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The vector index's search, filtered when `allowed` is given (a bare faiss.Index takes no filter)."""
    if allowed is None:
        return space.index.search(queries, k)
    if isinstance(space.index, faiss.Index):
        return space.index.search(queries, k, params=IdSelection(space.index, allowed, space.index.ntotal).params)
    return space.index.search(queries, k, allowed)


def expand_queries(space: SearchSpace, queries: np.ndarray, n: int, alpha: float = 3.0) -> np.ndarray:
    """alpha-QE: q' = norm(q + sum_i max(s_i,0)^alpha x_i) over the top n results x_i (unit vectors)."""
    q = l2_normalize(np.atleast_2d(np.asarray(queries, np.float32)))
    n = min(n, space.index.ntotal)
    if n <= 0:
        return q
    scores, ids = space.index.search(q, n)
    return np.stack([_expand(space, row, i, s, alpha) for row, s, i in zip(q, scores, ids)])


def _expand(space: SearchSpace, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, alpha: float) -> np.ndarray:
    """norm(q + sum_i w_i x_i) over the results `ids` (-1: none), w_i = max(score_i, 0)^alpha (alpha 0: 1)."""
    keep = ids >= 0
    if not keep.any():
        return q
    neighbours = l2_normalize(np.asarray(space.embeddings[ids[keep]], np.float32))
    w = np.maximum(scores[keep], 0.0) ** alpha if alpha else np.ones(int(keep.sum()), np.float32)
    return l2_normalize((q + (w[:, None] * neighbours).sum(axis=0))[None])[0]


def verified_expansion(space: SearchSpace, query: np.ndarray, ranked: list[Hit], verified: list[int], k: int,
                       metric: str = "cosine", allowed: np.ndarray | None = None) -> list[Hit]:
    """Verified query expansion (Chum et al., "Total Recall", ICCV 2007): the query averaged with
    the results that passed spatial verification (`verified`, best first; plain average - their
    geometry, not their cosine, vouches for them), searched again. The verified results stay on
    top in `ranked`'s order; the second search's results follow. No verified result: `ranked`."""
    if not verified:
        return ranked
    q = l2_normalize(np.atleast_2d(np.asarray(query, np.float32)))[0]
    ids = np.asarray(verified, np.int64)
    expanded = _expand(space, q, ids, np.ones(len(ids), np.float32), 0.0)
    again = search(space, expanded[None], k, metric, allowed=allowed)[0]
    chosen = set(verified)
    head = [h for h in ranked if h.id in chosen]
    return head + [h for h in again if h.id not in chosen][:max(0, k - len(head))]


def augment_database(vectors: np.ndarray, n: int, alpha: float = 3.0) -> np.ndarray:
    """Database-side augmentation (DBA): each unit vector becomes the alpha-QE of itself.

    Exact (n_db x n_db) neighbour search: meant for evaluation and small exact indexes.
    """
    x = l2_normalize(np.asarray(vectors, np.float32))
    if n <= 0 or len(x) < 2:
        return x
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    scores, ids = flat.search(x, min(n + 1, len(x)))  # the vector itself comes first
    w = np.maximum(scores, 0.0) ** alpha if alpha else np.ones_like(scores)
    return l2_normalize(np.einsum("ij,ijd->id", w, x[ids]))


def _rank_candidates(space: SearchSpace, query: np.ndarray, cand: np.ndarray, cos: np.ndarray, k: int, metric: str) -> list[Hit]:
    keep = cand >= 0
    cand, cos = cand[keep], cos[keep]
    raw = np.asarray(space.embeddings[cand], dtype=np.float32)
    dist = euclidean(query, raw)
    if metric == "euclidean":
        order = np.argsort(dist, kind="stable")[:k]
        return _hits(cand[order], dist[order])
    if metric == "fusion":
        members = space.members if len(space.members) > 1 else [(0, raw.shape[1])]
        weights = list(space.weights or [1.0] * len(members))
        rankings = [np.argsort(-(l2_normalize(raw[:, a:b]) @ l2_normalize(query[None, a:b])[0]), kind="stable")
                    for a, b in members]
        fused = rrf(rankings, len(cand), weights=weights)
        order = np.argsort(-fused, kind="stable")[:k]
        return _hits(cand[order], fused[order])
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


def rrf(rankings: list[np.ndarray], n: int, k0: int = RRF_K, weights: list[float] | None = None) -> np.ndarray:
    """Reciprocal-rank fusion: each ranking (positions -> item index) adds w/(k0 + rank)."""
    fused = np.zeros(n, np.float64)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    for j, order in enumerate(rankings):
        fused[order] += (weights[j] if weights else 1.0) / (k0 + ranks)
    return fused


def _hits(ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
    return [Hit(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]

"""Tuning nprobe (IVF) / efSearch (HNSW) and the re-rank depth to a target recall@10.

Measured at build time against exact search, on queries drawn from the collection itself;
the measured recall and the whole curve are recorded in the manifest. Ground truth and the
recall measure are faiss.contrib's (`knn_ground_truth`, `knn_intersection_measure`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure
from faiss.contrib.exhaustive_search import knn_ground_truth

from .faiss_ops import ADD_CHUNK, hnsw_of, ivf_of, unit_rows
from .searcher import searcher, transform
from .spec import rerank_space

log = logging.getLogger(__name__)

TUNE_QUERIES = 500  # queries sampled from the collection to measure recall at build time
TUNE_MIN_ROWS = 2000  # smaller indexes keep the default nprobe (most lists are scanned anyway)
TUNE_K = 10
TUNE_MARGIN = 0.005  # ~ the standard error of recall@10 on 500 queries: new queries should meet the target too
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def exact_neighbours(index: faiss.Index, features: np.ndarray, ids: np.ndarray, query_ids: np.ndarray,
                     spec: str, k: int) -> np.ndarray:
    """Exact top-k ids (the query itself excluded) in the index's cosine space, by chunks."""
    in_index_space = rerank_space(spec) == "index"

    def spaced(rows: np.ndarray) -> np.ndarray:
        v = unit_rows(features, rows)
        return transform(index, v) if in_index_space else v

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(ids), ADD_CHUNK):
            yield spaced(ids[start:start + ADD_CHUNK])

    _, pos = knn_ground_truth(spaced(query_ids), chunks(), min(k + 1, len(ids)), faiss.METRIC_INNER_PRODUCT, ngpu=0)
    found = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
    return drop_self(found, query_ids, k, pad=-2)


def drop_self(found: np.ndarray, query_ids: np.ndarray, k: int, pad: int = -3) -> np.ndarray:
    """Each row's first k ids other than its query's own id (and -1), padded with `pad`.

    Truth and answers are padded differently, so that padding never counts as a match."""
    out = np.full((len(found), k), pad, np.int64)
    for row, (f, q) in enumerate(zip(found, query_ids)):
        kept = f[(f != q) & (f >= 0)][:k]
        out[row, :len(kept)] = kept
    return out


def _knob(index: faiss.Index) -> tuple[str, list[int], Callable[[int], None]] | None:
    """The search parameter to tune, the values to try, and how to set it."""
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    if ivf is not None:
        def set_nprobe(v: int) -> None:
            ivf.nprobe = v
        return "nprobe", [v for v in NPROBES if v < ivf.nlist] + [ivf.nlist], set_nprobe
    if hnsw is not None:
        def set_ef(v: int) -> None:
            hnsw.hnsw.efSearch = v
        return "ef_search", list(EF_SEARCHES), set_ef
    return None


def tune(index: faiss.Index, features: np.ndarray, ids: np.ndarray, spec: str, target: float,
         rerank: int, k: int = TUNE_K, queries: int = TUNE_QUERIES, seed: int = 7) -> dict[str, Any]:
    """Smallest nprobe (IVF) / efSearch (HNSW) reaching `target` recall@k, then the re-rank depth.

    Queries are vectors of the collection itself (as autofaiss does); each query's own id is
    excluded from both the exact and the approximate answers, so a hit on itself never counts.
    When even scanning many lists plateaus below the target, the re-rank depth doubles. The
    sample must beat the target by TUNE_MARGIN (its sampling error), so that queries from
    outside the sample meet the target too.
    Returns the chosen parameters, the measured recall and the whole curve (for the manifest).
    """
    start = time.perf_counter()
    knob = _knob(index)
    if knob is None:
        return {}
    name, values, apply = knob
    rng = np.random.default_rng(seed)
    qids = np.sort(rng.choice(ids, min(queries, len(ids)), replace=False)).astype(np.int64)
    truth = exact_neighbours(index, features, ids, qids, spec, k)
    qvec = unit_rows(features, qids)
    depths = [rerank, 2 * rerank, 4 * rerank, 8 * rerank] if rerank else [0]
    curve: list[list[float]] = []
    best = (0, values[-1], -1.0)
    for depth in depths:
        search = searcher(index, features, spec, depth)
        previous = -1.0
        for v in values:
            apply(v)
            _, found = search.search(qvec, k + 1)
            r = float(knn_intersection_measure(drop_self(found, qids, k), truth))
            curve.append([depth, v, round(r, 4)])
            if r > best[2] + 1e-9 or r >= target + TUNE_MARGIN:
                best = (depth, v, r)
            if r >= target + TUNE_MARGIN:
                break
            if r - previous < 0.002 and v >= 16:  # plateau: more lists won't help, re-rank deeper
                break
            previous = r
        if best[2] >= target + TUNE_MARGIN:
            break
    depth, value, r = best
    apply(value)
    if r < target:
        log.warning("tuning reached recall@%d %.3f < target %.2f (%s=%d, rerank=%d)", k, r, target, name, value, depth)
    return {name: int(value), "rerank": int(depth) or None,
            "tuning": {"target_recall": target, f"recall_at_{k}": round(r, 4),
                       "param": name, "value": int(value), "rerank": int(depth) or None, "queries": len(qids),
                       "k": k, "curve": curve, "seconds": round(time.perf_counter() - start, 2)}}

"""Reduce + index + the on-disk artifact.

The seed's PCA -> K-Means -> similarity chain is one FAISS factory string here:
`PCAW256,L2norm,IVF1024,Flat` whitens to 256 dims, normalises, and files every image under
its nearest of 1024 K-Means centroids (the IVF lists *are* the clusters). The string is
stored in the manifest, so an index is reproducible from its manifest alone.

Index chosen by size (`choose_spec`, overridable with a spec, recorded in the manifest):
exact (`Flat`) below EXACT_LIMIT images; above it `PCA256,IVF{4 sqrt n},PQ32np`: 40 bytes
of memory per image, whose candidates are re-ranked by exact cosine on the raw features of
`embeddings.f16` (memory-mapped, on disk). `nprobe` (IVF) or `efSearch` (HNSW) and the
re-ranking depth are tuned at build time to reach a target recall@10 against exact search,
measured on queries drawn from the collection itself (`tune`); the measured recall is
recorded. Why this default: benchmarks/scale.py (1M vectors on 2 cores).

Cosine space: what "exact" means for an index. A chain ending in `L2norm` (`PCAW256,L2norm,`
from `--pca`) defines a new space, and cosine is measured there. A PCA *without* a following
L2norm is compression only: the index ranks candidates by L2 in the centred PCA space (on unit
vectors that approximates cosine, where inner products of centred vectors would not), and
re-ranking restores exact cosine on the input features.

Artifact directory (written to a temp dir, then renamed into place: readers never see a
half-written index):
    manifest.json   format, model + weights hashes, preprocessing, spec, search parameters,
                    tuning (recall measured), training baseline (for drift), counts, versions
    vectors.G.faiss the FAISS index over live images of generation G, ids = item ids
                    (absent when vectors live in Milvus: manifest["store"])
    embeddings.f16  raw backbone features (float16, append-only), row = item id; for
                    euclidean/vote ranking, re-ranking, and retraining PCA/IVF without re-embedding
    centroids.npy   K-Means centroids when the index itself is flat (IVF keeps its own)
    items.sqlite    id -> source, cached file, size, sha256, status/error, cluster, metadata,
                    and the generations in which each row was added / removed
    thumbs/ID.jpg   thumbnails

Updates (add/remove/rebuild) never rewrite in place: they write generation G+1 beside G and
commit by replacing manifest.json, so a crash at any moment leaves generation G intact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np

from .embed import l2_normalize
from .models import DEFAULT_MODEL

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXACT_LIMIT = 50_000  # below this many images an exact (flat) index is fast enough
ANN_PCA = 256  # dims the auto ANN index compresses to before its coarse quantiser and PQ
PQ_DIMS_PER_BYTE = 8  # PQ sub-quantiser width: 256 dims -> PQ32 (32 bytes per image)
DEFAULT_RERANK = 100  # candidates re-scored exactly per query (tuning may raise it)
TARGET_RECALL = 0.95
TUNE_QUERIES = 500  # queries sampled from the collection to measure recall at build time
TUNE_MIN_ROWS = 2000  # smaller indexes keep the default nprobe (most lists are scanned anyway)
TUNE_K = 10
TUNE_MARGIN = 0.005  # ~ the standard error of recall@10 on 500 queries: new queries should meet the target too
TRAIN_POINTS_PER_LIST = 40  # FAISS wants >= 39 training points per IVF list
TRAIN_MAX = 256_000  # cap on training points (K-Means on 2 cores)
PCA_TRAIN = 20_000  # enough for a 1280x1280 covariance
ADD_CHUNK = 65_536  # vectors normalised + added at a time (bounded memory on 1M images)
DRIFT_SAMPLE = 2000
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.f16"
CENTROIDS = "centroids.npy"
ITEMS = "items.sqlite"
THUMBS = "thumbs"


class IndexError_(RuntimeError):
    """A missing, unreadable or incompatible index directory."""


@dataclass
class IndexConfig:
    """What the user chose; everything here is recorded in the manifest."""

    model: str = DEFAULT_MODEL
    pca: int | None = None
    whiten: bool = False
    clusters: int | None = None
    spec: str | None = None
    nprobe: int | None = None
    target_recall: float = TARGET_RECALL  # tuning goal for nprobe / efSearch / re-rank depth
    rerank: int | None = None  # candidates re-scored exactly; None: auto (on for compressed indexes), 0: off
    store: str | None = None  # vector store: None = FAISS in the artifact; "x.db" / "milvus://host:19530"

    @classmethod
    def from_manifest(cls, manifest: dict) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in manifest.get("config", {}).items() if k in known})


@dataclass
class Record:
    """One row of the id table."""

    id: int
    source: str
    status: str = "ok"  # ok | failed | removed
    error: str | None = None
    cached_path: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    cluster: int | None = None
    meta: dict = field(default_factory=dict)


# --- choosing the FAISS index -----------------------------------------------------------------


def choose_spec(n: int, dim: int, config: IndexConfig) -> str:
    """The factory string for `n` vectors: exact below EXACT_LIMIT, compressed IVF-PQ above."""
    if config.spec:
        return config.spec
    parts = []
    if config.pca:
        pca = min(config.pca, dim, max(n - 1, 1))
        if pca != config.pca:
            log.warning("--pca %d reduced to %d (needs fewer dims than images)", config.pca, pca)
        parts += [f"PCA{'W' if config.whiten else ''}{pca}", "L2norm"]
        dim = pca
    if config.clusters:
        return ",".join(parts + [f"IVF{min(config.clusters, max(n, 1))},Flat"])
    if n < EXACT_LIMIT or config.store:
        return ",".join(parts + ["Flat"])
    if not parts and dim > ANN_PCA:
        parts, dim = [f"PCA{ANN_PCA}"], ANN_PCA
    return ",".join(parts + [f"IVF{auto_clusters(n)}", f"PQ{pq_subquantizers(dim)}np"])


def auto_clusters(n: int) -> int:
    """About 4*sqrt(n) IVF lists, FAISS's guideline (1M images -> 4000 clusters)."""
    return max(1, int(4 * math.sqrt(n)))


def pq_subquantizers(dim: int) -> int:
    """One byte per PQ_DIMS_PER_BYTE dims, rounded to a divisor of dim (FAISS needs one)."""
    target = max(1, dim // PQ_DIMS_PER_BYTE)
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: (abs(m - target), -m))


def is_exact(spec: str) -> bool:
    """True for brute-force specs (optional PCA/normalisation, then Flat)."""
    return re.fullmatch(r"((PCAW?\d+|PCAR?\d+|L2norm|IDMap2?),)*Flat", spec) is not None


_TRANSFORM = re.compile(r"(PCAW?R?\d+|L2norm|OPQ\d+(_\d+)?|RR\d+|ITQ\d*(_\d+)?)")


def _transforms(spec: str) -> list[str]:
    out = []
    for token in spec.split(","):
        if not _TRANSFORM.fullmatch(token):
            break
        out.append(token)
    return out


def compresses(spec: str) -> bool:
    """A PCA not followed by L2norm: compression of the input space, not a new cosine space."""
    chain = _transforms(spec)
    return any(t.startswith("PCA") for t in chain) and chain[-1] != "L2norm"


def spec_metric(spec: str) -> int:
    """L2 for compressing chains (centred vectors), inner product (= cosine on unit vectors) else."""
    return faiss.METRIC_L2 if compresses(spec) else faiss.METRIC_INNER_PRODUCT


def rerank_space(spec: str) -> str:
    """'index': cosine after the spec's own chain (it ends in L2norm); 'input': on the raw features."""
    chain = _transforms(spec)
    return "index" if chain and chain[-1] == "L2norm" else "input"


def is_lossy(spec: str) -> bool:
    """Codes (PQ, SQ, ...) or compression whose scores are not exact cosine: re-rank them."""
    return compresses(spec) or re.search(r"(^|,)(IVF\d+(_HNSW\d+)?,)?(PQ|SQ|RQ|LSH|PRQ|ZnLattice)", spec) is not None


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, nlist // 32))


# --- training and filling the FAISS index -----------------------------------------------------


def new_index(spec: str, dim: int) -> faiss.Index:
    """An empty index for `spec`, with ids, on the metric the spec calls for."""
    index = faiss.index_factory(dim, spec, spec_metric(spec))
    if not _supports_ids(index):
        index = faiss.IndexIDMap2(index)
    pca = _pca_of(index)
    if pca is not None:  # a 1280x1280 covariance is well estimated from ~20k points; more only costs time
        pca.max_points_per_d = max(1, PCA_TRAIN // pca.d_in)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        ivf.cp.max_points_per_centroid = 1 << 30  # we pass our own bounded sample
        if isinstance(ivf, faiss.IndexIVFPQ):  # codes only pick candidates: fast PQ training
            ivf.pq.cp.niter = 15
            ivf.pq.cp.max_points_per_centroid = 64
    return index


def train_rows(spec: str, n: int) -> int:
    """Training sample size: enough points per IVF list and for the PCA, bounded for 2 cores."""
    nlist = int(m.group(1)) if (m := re.search(r"IVF(\d+)", spec)) else 0
    want = max(TRAIN_POINTS_PER_LIST * nlist, PCA_TRAIN if "PCA" in spec else 0, 10_000 if nlist else 0)
    return min(n, max(want, 1), TRAIN_MAX)


def unit_rows(features: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of raw features (float16 memmap or float32) as float32 unit vectors."""
    return l2_normalize(np.asarray(features[ids], dtype=np.float32))


def build_faiss(vectors: np.ndarray, ids: np.ndarray, spec: str, nprobe: int | None) -> faiss.Index:
    """Train (PCA, K-Means) and fill an index on unit vectors (all in memory)."""
    index = new_index(spec, vectors.shape[1])
    if not index.is_trained:
        index.train(_sample(vectors, train_rows(spec, len(vectors))))
    index.add_with_ids(vectors, ids.astype(np.int64))
    set_nprobe(index, nprobe)
    return index


def train_and_fill(features: np.ndarray, ids: np.ndarray, spec: str, seed: int = 1234) -> faiss.Index:
    """`build_faiss` over raw features by id, chunk by chunk: a 1M x 1280 collection never sits in RAM twice."""
    index = new_index(spec, features.shape[1])
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(seed).choice(ids, train_rows(spec, len(ids)), replace=False))
        index.train(unit_rows(features, sample))
    for start in range(0, len(ids), ADD_CHUNK):
        chunk = ids[start:start + ADD_CHUNK]
        index.add_with_ids(unit_rows(features, chunk), chunk.astype(np.int64))
    return index


def _sample(vectors: np.ndarray, size: int, seed: int = 1234) -> np.ndarray:
    if size >= len(vectors):
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))]


def _supports_ids(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    inner = faiss.downcast_index(index)
    while True:
        if isinstance(inner, faiss.IndexHNSW):
            return inner
        if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            inner = faiss.downcast_index(inner.index)
        else:
            return None


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, nprobe or default_nprobe(ivf.nlist))


def set_search_params(index: faiss.Index, manifest: dict) -> None:
    """Apply the manifest's tuned nprobe / efSearch to a freshly read index."""
    set_nprobe(index, manifest.get("nprobe"))
    hnsw = hnsw_of(index)
    if hnsw is not None and manifest.get("ef_search"):
        hnsw.hnsw.efSearch = int(manifest["ef_search"])


def transform(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """Apply the index's own PCA/normalisation chain: the space the clusters live in.

    Given what `Store.index` holds instead of a FAISS index - a re-ranking wrapper or a Milvus
    store - it returns that searcher's cosine space (where its scores are measured).
    """
    if isinstance(index, RerankIndex):
        return index._space(np.ascontiguousarray(vectors, dtype=np.float32))
    if isinstance(index, Searcher):
        index = index.index
    if not isinstance(index, faiss.Index):
        return np.ascontiguousarray(vectors, dtype=np.float32)
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    inner = faiss.downcast_index(inner)
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            out = inner.chain.at(i).apply(out)
    return out


def _pca_of(index: faiss.Index) -> faiss.PCAMatrix | None:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform) and inner.chain.size():
        first = faiss.downcast_VectorTransform(inner.chain.at(0))
        if isinstance(first, faiss.PCAMatrix):
            return first
    return None


# --- searching: single queries, re-ranking ------------------------------------------------------


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


class Searcher:
    """What `Store.index` holds: a FAISS index to search.py (`search`, `ntotal`, `d`, ...).

    Single queries run on one thread (see `single_thread`); batches use every core.
    """

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    def __getattr__(self, name: str):  # d, ntotal, is_trained, ... of the wrapped index
        return getattr(self.index, name)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(queries) > 1:
            return self._search(queries, k)
        with single_thread():
            return self._search(queries, k)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)


class RerankIndex(Searcher):
    """FAISS candidates re-scored by exact cosine on the stored raw features.

    Compressed codes pick `depth` candidates, then their float16 rows of embeddings.f16
    (memory-mapped: page cache, not index memory) are compared exactly, in the cosine space
    of the spec.
    """

    def __init__(self, index: faiss.Index, features: np.ndarray, depth: int, space: str = "input") -> None:
        super().__init__(index)
        self.features, self.depth, self.space = features, int(depth), space

    def _space(self, vectors: np.ndarray) -> np.ndarray:
        return transform(self.index, vectors) if self.space == "index" else vectors

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = l2_normalize(queries)
        depth = min(self.index.ntotal, max(k, self.depth))
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if depth <= 0:
            return scores, ids
        _, cand = self.index.search(queries, depth)
        spaced = self._space(queries)
        for row, (q, c) in enumerate(zip(spaced, cand)):
            c = np.sort(c[c >= 0])  # ascending ids: sequential reads, ties broken by id
            if not len(c):
                continue
            sims = np.einsum("ij,j->i", self._space(unit_rows(self.features, c)), q)  # no BLAS threads
            top = np.argsort(-sims, kind="stable")[:k]
            scores[row, :len(top)], ids[row, :len(top)] = sims[top], c[top]
        return scores, ids


def searcher(index: faiss.Index, features: np.ndarray, spec: str, rerank: int | None) -> Searcher:
    """What search.py queries: the index, wrapped in exact re-ranking if `rerank`."""
    return RerankIndex(index, features, rerank, rerank_space(spec)) if rerank else Searcher(index)


# --- tuning nprobe / efSearch / re-rank depth -----------------------------------------------


def exact_neighbours(index: faiss.Index, features: np.ndarray, ids: np.ndarray, query_ids: np.ndarray,
                     spec: str, k: int) -> np.ndarray:
    """Exact top-k ids (the query itself excluded) in the index's cosine space, by chunks."""
    space = rerank_space(spec)

    def spaced(rows: np.ndarray) -> np.ndarray:
        v = unit_rows(features, rows)
        return transform(index, v) if space == "index" else v

    q = spaced(query_ids)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start in range(0, len(ids), ADD_CHUNK):
        chunk = ids[start:start + ADD_CHUNK]
        s = q @ spaced(chunk).T
        s[query_ids[:, None] == chunk[None, :]] = -np.inf
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(chunk, s.shape)], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def tune(index: faiss.Index, features: np.ndarray, ids: np.ndarray, spec: str, target: float,
         rerank: int, k: int = TUNE_K, queries: int = TUNE_QUERIES, seed: int = 7) -> dict:
    """Smallest nprobe (IVF) / efSearch (HNSW) reaching `target` recall@k, then the re-rank depth.

    Queries are vectors of the collection itself (as autofaiss does); each query's own id is
    excluded from both the exact and the approximate answers, so a hit on itself never counts.
    When even scanning many lists plateaus below the target, the re-rank depth doubles. The
    sample must beat the target by TUNE_MARGIN (its sampling error), so that queries from
    outside the sample meet the target too.
    Returns the chosen parameters, the measured recall and the whole curve (for the manifest).
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    qids = np.sort(rng.choice(ids, min(queries, len(ids)), replace=False)).astype(np.int64)
    truth = exact_neighbours(index, features, ids, qids, spec, k)
    qvec = unit_rows(features, qids)
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    if ivf is not None:
        name, values = "nprobe", [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
                                  if v < ivf.nlist] + [ivf.nlist]

        def apply(v: int) -> None:
            ivf.nprobe = v
    elif hnsw is not None:
        name, values = "ef_search", [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]

        def apply(v: int) -> None:
            hnsw.hnsw.efSearch = v
    else:
        return {}
    depths = [rerank, 2 * rerank, 4 * rerank, 8 * rerank] if rerank else [0]
    curve, best = [], None
    for depth in depths:
        search = searcher(index, features, spec, depth)
        previous = -1.0
        for v in values:
            apply(v)
            _, found = search.search(qvec, k + 1)
            found = [f[(f != q) & (f >= 0)][:k] for f, q in zip(found, qids)]
            r = recall_at(found, truth, k)
            curve.append([depth, v, round(r, 4)])
            if best is None or r > best[2] + 1e-9:
                best = (depth, v, r)
            if r >= target + TUNE_MARGIN:
                best = (depth, v, r)
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


# --- drift: how well the trained parts still fit the collection ----------------------------------


def list_size_cv(index: faiss.Index | None) -> float | None:
    """Coefficient of variation of IVF list sizes (0 = perfectly balanced)."""
    ivf = ivf_of(index) if index is not None else None
    if ivf is None:
        return None
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.float64)
    return float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else None


def fit_stats(index: faiss.Index | None, vectors: np.ndarray) -> dict:
    """How well the trained PCA and coarse quantiser fit `vectors` (unit rows).

    pca_residual: mean share of each centred vector's energy the PCA drops;
    coarse_distance: mean squared distance to the nearest IVF centroid (in the IVF's space).
    Both grow when new images come from a distribution the training never saw.
    """
    out: dict = {}
    if index is None or not len(vectors):
        return out
    pca = _pca_of(index)
    if pca is not None:
        mean = faiss.vector_to_array(pca.mean)
        proj = faiss.vector_to_array(pca.PCAMat).reshape(-1, pca.d_in)[:pca.d_out]
        centred = vectors - mean
        total = np.einsum("ij,ij->i", centred, centred)
        kept = np.einsum("ij,ij->i", centred @ proj.T, centred @ proj.T)
        out["pca_residual"] = float(np.mean((total - kept) / np.maximum(total, 1e-12)))
    ivf = ivf_of(index)
    if ivf is not None:
        reduced = transform(index, vectors)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        d2 = (np.einsum("ij,ij->i", reduced, reduced)[:, None] - 2 * reduced @ centroids.T
              + np.einsum("ij,ij->i", centroids, centroids)[None, :])
        out["coarse_distance"] = float(np.maximum(d2.min(axis=1), 0).mean())
    return out


def training_baseline(index: faiss.Index | None, features: np.ndarray, ids: np.ndarray, rows: int,
                      generation: int, seconds: float) -> dict:
    """What the manifest keeps about the training, to compare later additions with."""
    sample = np.sort(np.random.default_rng(3).choice(ids, min(DRIFT_SAMPLE, len(ids)), replace=False)) if len(ids) else ids
    return {"rows": int(rows), "live": len(ids), "generation": int(generation), "seconds": round(seconds, 2),
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "ivf_cv": list_size_cv(index), **fit_stats(index, unit_rows(features, sample) if len(sample) else sample)}


REBUILD_RATIOS = {"ivf_cv": 1.5, "pca_residual": 1.2, "coarse_distance": 1.2}
REBUILD_GROWTH = 2.0  # collection doubled since training


# --- building the vector part of an artifact -------------------------------------------------


@dataclass
class Clusters:
    labels: np.ndarray
    k: int
    source: str  # "ivf" (the index's own lists) or "kmeans" (fitted beside a flat index)
    centroids: np.ndarray | None = None


def cluster_labels(index: faiss.Index, vectors: np.ndarray, k: int | None) -> Clusters:
    """Cluster of each vector: its IVF list, or for a flat index a K-Means fit (k ~ sqrt n)."""
    reduced = transform(index, vectors)
    ivf = ivf_of(index)
    if ivf is not None:
        return Clusters(ivf.quantizer.assign(reduced, 1).ravel(), ivf.nlist, "ivf")
    k = min(k or max(1, int(math.sqrt(len(reduced)))), len(reduced))
    if k < 2:
        return Clusters(np.zeros(len(reduced), np.int64), 1, "kmeans")
    km = faiss.Kmeans(reduced.shape[1], k, niter=20, seed=1234, spherical=True,
                       max_points_per_centroid=256, min_points_per_centroid=1)
    km.train(reduced)
    return Clusters(km.index.search(reduced, 1)[1].ravel(), k, "kmeans", km.centroids)


def cluster_labels_by_id(index: faiss.Index, features: np.ndarray, ids: np.ndarray, k: int | None) -> Clusters:
    """`cluster_labels` over raw features by id; big collections fit K-Means on a sample, assign in chunks."""
    if len(ids) <= ADD_CHUNK:
        return cluster_labels(index, unit_rows(features, ids), k)
    ivf = ivf_of(index)
    if ivf is not None:
        labels = np.concatenate([ivf.quantizer.assign(transform(index, unit_rows(features, ids[s:s + ADD_CHUNK])), 1).ravel()
                                 for s in range(0, len(ids), ADD_CHUNK)])
        return Clusters(labels, ivf.nlist, "ivf")
    k = k or max(1, int(math.sqrt(len(ids))))
    sample = np.sort(np.random.default_rng(1234).choice(ids, min(len(ids), 256 * k), replace=False))
    fit = cluster_labels(index, unit_rows(features, sample), k)
    assign = faiss.IndexFlatIP(fit.centroids.shape[1])
    assign.add(fit.centroids)
    labels = np.concatenate([assign.search(transform(index, unit_rows(features, ids[s:s + ADD_CHUNK])), 1)[1].ravel()
                             for s in range(0, len(ids), ADD_CHUNK)])
    return Clusters(labels, k, "kmeans", fit.centroids)


@dataclass
class BuiltVectors:
    """The vector side of an artifact: index (None for an external store), labels, manifest fields."""

    spec: str
    index: faiss.Index | None
    clusters: Clusters | None
    fields: dict


def build_vectors(features: np.ndarray, ids: np.ndarray, config: IndexConfig, rows: int, generation: int = 0,
                  *, labels: bool = True, tune_queries: int = TUNE_QUERIES) -> BuiltVectors:
    """Choose, train, fill and tune the index over the live rows `ids` of raw `features`."""
    start = time.perf_counter()
    ids = np.asarray(ids, np.int64)
    dim = features.shape[1]
    spec = choose_spec(len(ids), dim, config)
    if not len(ids):
        return BuiltVectors(spec, None, None, {"clusters": 0})
    if config.store:
        if not is_exact(spec) or "PCA" in spec:
            raise IndexError_(f"the {config.store} store holds raw unit vectors: use it without --pca/--index "
                              f"(got {spec}); Milvus builds its own ANN index")
        index = faiss.IndexFlatIP(dim)  # for the K-Means labels only; the vectors go to the store
        clusters = cluster_labels_by_id(index, features, ids, config.clusters) if labels else None
        return BuiltVectors(spec, None, clusters, {
            "clusters": int(clusters.k) if clusters else 0, "cluster_source": clusters.source if clusters else None,
            "nprobe": None, "metric": "ip", "rerank": None})
    index = train_and_fill(features, ids, spec)
    stages = {"train_and_fill": round(time.perf_counter() - start, 2)}
    set_nprobe(index, config.nprobe)
    rerank = config.rerank if config.rerank is not None else (DEFAULT_RERANK if is_lossy(spec) else 0)
    out: dict = {"metric": "l2" if spec_metric(spec) == faiss.METRIC_L2 else "ip", "rerank": rerank or None}
    approximate = not is_exact(spec)
    if approximate and len(ids) >= TUNE_MIN_ROWS and not config.nprobe:
        out.update(tune(index, features, ids, spec, config.target_recall, rerank, queries=tune_queries))
        stages["tune"] = out["tuning"]["seconds"]
    elif hnsw_of(index) is not None:
        out["ef_search"] = int(hnsw_of(index).hnsw.efSearch)
    ivf = ivf_of(index)
    out["nprobe"] = int(ivf.nprobe) if ivf is not None else None
    mark = time.perf_counter()
    clusters = cluster_labels_by_id(index, features, ids, config.clusters) if labels else None
    stages["labels"] = round(time.perf_counter() - mark, 2)
    out.update(clusters=int(clusters.k) if clusters else (int(ivf.nlist) if ivf is not None else 0),
               cluster_source=clusters.source if clusters else ("ivf" if ivf is not None else None))
    out["training"] = training_baseline(index, features, ids, rows, generation, time.perf_counter() - start)
    out["training"]["stages"] = stages
    return BuiltVectors(spec, index, clusters, out)


# --- the artifact on disk -----------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    cached_path TEXT, width INTEGER, height INTEGER, sha256 TEXT, cluster INTEGER, meta TEXT,
    added_gen INTEGER NOT NULL DEFAULT 0, removed_gen INTEGER
);
CREATE INDEX IF NOT EXISTS items_status ON items(status);
CREATE INDEX IF NOT EXISTS items_sha ON items(sha256);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
"""
_COLUMNS = "id, source, status, error, cached_path, width, height, sha256, cluster, meta, added_gen"


def library_versions() -> dict[str, str]:
    names = ["imagefinder", "faiss-cpu", "onnxruntime", "numpy", "pillow", "ray", "pymilvus", "milvus-lite"]
    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def vectors_file(generation: int) -> str:
    return f"vectors.{generation}.faiss"


class ArtifactWriter:
    """Builds a new index directory beside its destination and swaps it in on `commit`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        restore_interrupted_swap(self.out_dir)
        if self.out_dir.exists() and not (self.out_dir / MANIFEST).is_file() and any(self.out_dir.iterdir()):
            raise IndexError_(f"{self.out_dir} exists and is not an ImageFinder index; refusing to replace it")
        self._lock = _BuildLock(self.out_dir)
        _clear_debris(self.out_dir)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        (self.tmp / THUMBS).mkdir(parents=True)

    @property
    def thumbs(self) -> Path:
        return self.tmp / THUMBS

    @property
    def journal_path(self) -> Path:
        """Where the pipeline journals finished items of this build (beside the index: it outlives a crash)."""
        return self.out_dir.parent / f".{self.out_dir.name}.journal.sqlite"

    def commit(self, records: list[Record], embeddings: np.ndarray, index: faiss.Index | None, manifest: dict,
               centroids: np.ndarray | None = None) -> Path:
        append_embeddings(self.tmp / EMBEDDINGS, embeddings, rows_before=0)
        if centroids is not None:
            np.save(self.tmp / CENTROIDS, centroids)
        if index is not None:
            faiss.write_index(index, str(self.tmp / vectors_file(0)))
        insert_records(self.tmp / ITEMS, records, generation=0)
        manifest.update(generation=0, rows=len(embeddings))
        write_json(self.tmp / MANIFEST, manifest)
        fsync_dir(self.tmp)
        replaced = _store_of(self.out_dir)
        swap_into_place(self.tmp, self.out_dir)
        self._lock.release()
        if replaced and replaced != manifest.get("store"):
            _drop_store_quietly(replaced)
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._lock.release()


class _BuildLock:
    """One build per destination; the OS drops the lock when its process dies, even by kill -9.

    The lock file is deleted on release, so nothing is left beside the index; a process that
    locked a file just deleted by the previous holder notices (other inode) and tries again.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir.parent / f".{out_dir.name}.build.lock"
        while True:
            self._f = open(self.path, "a+")  # noqa: SIM115 - held until release
            try:
                fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._f.close()
                raise IndexError_(f"another build is writing {out_dir}; wait for it to finish") from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(self._f.fileno()).st_ino:
                    return
            self._f.close()

    def release(self) -> None:
        if not self._f.closed:
            self.path.unlink(missing_ok=True)
            self._f.close()


def _clear_debris(out_dir: Path) -> None:
    """Staging and replaced directories of builds that were killed (we hold the build lock)."""
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for debris in out_dir.parent.glob(pattern):
            log.info("removing %s, left by an interrupted build", debris)
            shutil.rmtree(debris, ignore_errors=True)


def restore_interrupted_swap(dest: Path) -> None:
    """A crash between `swap_into_place`'s two renames leaves no `dest`: put the previous index back."""
    if dest.exists():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for old in reversed(olds):
        if (old / MANIFEST).is_file():
            with contextlib.suppress(FileNotFoundError):  # another process may restore it first
                os.rename(old, dest)
                log.warning("restored %s from %s: a build was interrupted while swapping it in", dest, old)
            return


def _store_of(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("store")
    except (OSError, ValueError):
        return None


def _drop_store_quietly(store: dict) -> None:
    """The replaced index's Milvus collection: nothing refers to it any more."""
    try:
        from .stores import open_vector_store

        open_vector_store(store).drop()
    except Exception as exc:  # noqa: BLE001 - a leaked collection must not fail a finished build
        log.warning("could not drop the replaced index's collection %s: %s", store.get("collection"), exc)


def swap_into_place(new: Path, dest: Path) -> None:
    """Replace `dest` with `new` by renames; the old index is deleted only once `new` is in."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
    os.rename(new, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def append_embeddings(path: Path, rows: np.ndarray, rows_before: int, chunk: int = ADD_CHUNK) -> None:
    """Raw float16 rows, append-only: rows past the manifest's count are debris of a crash."""
    width = rows.shape[1] if rows.ndim == 2 else 0
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(rows_before * width * 2)
        f.seek(0, os.SEEK_END)
        f.writelines(np.ascontiguousarray(rows[start:start + chunk], dtype=np.float16).tobytes() for start in range(0, len(rows), chunk))
        f.flush()
        os.fsync(f.fileno())


def insert_records(path: Path, records: list[Record], generation: int) -> None:
    con = sqlite3.connect(path)
    try:
        con.executescript(_SCHEMA)
        with con:
            con.executemany(
                f"INSERT INTO items ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (r.id, r.source, r.status, r.error, r.cached_path, r.width, r.height, r.sha256,
                     r.cluster, json.dumps(r.meta) if r.meta else None, generation)
                    for r in records
                ],
            )
    finally:
        con.close()


def write_json(path: Path, data: dict) -> None:
    """Write JSON durably and atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_manifest(config: IndexConfig, members: list, spec: str, dim: int, counts: dict, extra: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": config.model,
        "members": [asdict(m) if not isinstance(m, dict) else m for m in members],
        "embedding_dim": dim,
        "index_spec": spec,
        "config": asdict(config),
        "counts": counts,
        "versions": library_versions(),
        **extra,
    }


# --- reading an index back ------------------------------------------------------------


def _is_hot_journal(exc: sqlite3.OperationalError) -> bool:
    return "readonly database" in str(exc)


def roll_back_hot_journal(db: Path) -> None:
    """A writer killed mid-transaction leaves a journal that a read-only connection cannot roll back
    (it fails with 'attempt to write a readonly database'); a writable one does so on its first read.
    SQLite only treats the journal as hot when no live writer holds the database, so this is safe."""
    log.warning("rolling back the unfinished transaction of a crashed writer in %s", db)
    con = sqlite3.connect(db)
    try:
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()
    finally:
        con.close()


def read_manifest(path: Path) -> dict:
    restore_interrupted_swap(Path(path).absolute())
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise IndexError_(f"{path}: not an ImageFinder index (no {MANIFEST}); build one with `imagefinder index`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexError_(f"{file}: unreadable manifest: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexError_(
            f"{path}: index format {manifest.get('format_version')} is not supported "
            f"(this version reads {FORMAT_VERSION}); rebuild it with `imagefinder index`"
        )
    return manifest


def _visible(generation: int) -> str:
    """SQL condition for rows that exist in `generation` (later ones are uncommitted)."""
    return f"added_gen <= {int(generation)} AND (removed_gen IS NULL OR removed_gen > {int(generation)})"


def read_faiss(path: Path, generation: int, mmap: bool = False) -> faiss.Index | None:
    """The generation's FAISS file; memory-mapped (opens instantly, pages in on demand) if asked."""
    file = Path(path) / vectors_file(generation)
    if not file.exists():
        return None
    try:
        return faiss.read_index(str(file), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError:
        if not file.exists():  # deleted by a writer's commit between the check and the read
            raise FileNotFoundError(file) from None
        raise


class Store:
    """Read access to one committed generation: manifest, vector index, raw features, id table.

    `index` is what search.py queries: the FAISS index (memory-mapped above EXACT_LIMIT, so a
    big index opens instantly), wrapped in exact re-ranking when the manifest says so, or a
    Milvus collection when the manifest names one. `faiss` is the bare FAISS index (or None).
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
        self._lock = threading.Lock()

    def _open(self, mmap: bool | None) -> None:
        m = self.manifest
        self.generation = int(m.get("generation", 0))
        rows, dim = int(m["rows"]), int(m["embedding_dim"])
        self.embeddings = (np.memmap(self.path / EMBEDDINGS, np.float16, "r", shape=(rows, dim)) if rows
                           else np.zeros((0, dim), np.float16))
        indexed = int(m["counts"]["indexed"])
        self.faiss: faiss.Index | None = None
        if m.get("store"):
            from .stores import open_vector_store

            self.index = open_vector_store(m["store"], rows=rows, ntotal=indexed) if indexed else None
        else:
            vectors = self.path / vectors_file(self.generation)
            if indexed or vectors.exists():
                if not vectors.exists():
                    raise FileNotFoundError(vectors)
                self.faiss = read_faiss(self.path, self.generation, mmap if mmap is not None else indexed > EXACT_LIMIT)
                set_search_params(self.faiss, m)
            self.index = (searcher(self.faiss, self.embeddings, m["index_spec"], m.get("rerank"))
                          if self.faiss is not None else None)
        self._db = sqlite3.connect(f"file:{self.path / ITEMS}?mode=ro", uri=True, check_same_thread=False)
        self._db.row_factory = sqlite3.Row

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    def _query(self, sql: str, params: list | tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_hot_journal(exc):
                    raise
                roll_back_hot_journal(self.path / ITEMS)
                return self._db.execute(sql, params).fetchall()

    def records(self, ids: list[int]) -> dict[int, dict]:
        """Visible rows by id (failed ones included: their status says so)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT * FROM items WHERE id IN ({marks}) AND {_visible(self.generation)}",
                           [int(i) for i in ids])
        return {row["id"]: _row_dict(row) for row in rows}

    def failures(self, limit: int | None = 20) -> list[dict]:
        """Failed rows by id; all of them when `limit` is None."""
        rows = self._query(f"SELECT * FROM items WHERE status='failed' AND {_visible(self.generation)} "
                           "ORDER BY id LIMIT ?", (-1 if limit is None else limit,))
        return [_row_dict(r) for r in rows]

    def ids_by_source(self) -> dict[str, int]:
        rows = self._query(f"SELECT id, source FROM items WHERE status='ok' AND {_visible(self.generation)}")
        return {s: i for i, s in rows}

    def live_ids(self, since: int = 0, limit: int | None = None) -> np.ndarray:
        """Ids of indexed images (id >= since), ascending; the `limit` most recent if given."""
        sql = f"SELECT id FROM items WHERE status='ok' AND id >= ? AND {_visible(self.generation)} ORDER BY id"
        if limit is not None:
            sql = f"SELECT id FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY id"
        return np.array([r[0] for r in self._query(sql, (int(since),))], np.int64)

    def thumbnail_path(self, item_id: int) -> Path:
        return self.path / THUMBS / f"{int(item_id)}.jpg"

    def close(self) -> None:
        self._db.close()

    def close_later(self) -> None:
        """Leave closing to garbage collection: a search in flight may still hold this store."""


def _row_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["meta"] = json.loads(out["meta"]) if out.get("meta") else {}
    out.pop("added_gen", None)
    out.pop("removed_gen", None)
    return out


# --- drift -------------------------------------------------------------------------------------


def drift_report(store: Store) -> dict:
    """Has the collection drifted from what the PCA / coarse quantiser were trained on?

    Compares images added since training with the training baseline in the manifest:
    IVF list-size imbalance (coefficient of variation now vs at training), PCA residual and
    distance to the nearest centroid (recent additions vs training sample), and growth. Any
    ratio past REBUILD_RATIOS, a doubled collection, or an auto-chosen spec that no longer fits
    the size (e.g. a Flat index grown past EXACT_LIMIT) recommends `imagefinder rebuild`.
    """
    m = store.manifest
    base = m.get("training") or {}
    trained_rows = int(base.get("rows", m.get("trained_rows", _rows_of_generation(store, 0))))
    trained_live = int(base.get("live", 0)) or None
    indexed = int(m["counts"]["indexed"])
    recent = store.live_ids(since=trained_rows)
    report: dict = {
        "index_spec": m["index_spec"], "trained_at": base.get("at", m.get("created_at")),
        "trained_on": trained_live, "indexed": indexed, "added_since_training": len(recent),
        "growth": round(indexed / trained_live, 3) if trained_live else None, "signals": {}, "reasons": [],
    }
    if m.get("store"):
        report["note"] = "vectors live in Milvus, which trains its own index as segments grow"
    now = {"ivf_cv": list_size_cv(store.faiss)}
    if len(recent) >= 50 and store.faiss is not None:
        sample = recent[-DRIFT_SAMPLE:]
        now.update(fit_stats(store.faiss, unit_rows(store.embeddings, sample)))
    for key, limit in REBUILD_RATIOS.items():
        before, after = base.get(key), now.get(key)
        if before is None or after is None:
            continue
        ratio = after / before if before > 1e-12 else float("inf")
        report["signals"][key] = {"at_training": round(before, 5), "now" if key == "ivf_cv" else "recent": round(after, 5),
                                  "ratio": round(ratio, 3), "limit": limit}
        if ratio >= limit:
            report["reasons"].append(f"{key} is {ratio:.2f}x its value at training (limit {limit})")
    if trained_live and indexed >= REBUILD_GROWTH * trained_live:
        report["reasons"].append(f"the collection grew {indexed / trained_live:.1f}x since training")
    config = IndexConfig.from_manifest(m)
    if not config.spec and not m.get("store"):
        fits = choose_spec(indexed, int(m["embedding_dim"]), config)
        if _kind(fits) != _kind(m["index_spec"]):
            report["reasons"].append(f"{indexed} images call for {fits} (now {m['index_spec']})")
            report["would_use"] = fits
    report["rebuild_recommended"] = bool(report["reasons"])
    return report


def _kind(spec: str) -> str:
    return "exact" if is_exact(spec) else re.sub(r"\d+", "", spec)


def _rows_of_generation(store: Store, generation: int) -> int:
    row = store._query("SELECT COALESCE(MAX(id) + 1, 0) FROM items WHERE added_gen <= ?", (int(generation),))
    return int(row[0][0])


# --- updating an index in place -----------------------------------------------------


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """One writer per index directory across processes (CLI, API workers)."""
    with open(Path(path) / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recover(path: Path, manifest: dict) -> None:
    """Undo what an interrupted update wrote past the committed generation, finish what it committed."""
    gen = int(manifest.get("generation", 0))
    con = sqlite3.connect(path / ITEMS)
    try:
        with con:
            con.execute("DELETE FROM items WHERE added_gen > ?", (gen,))
            con.execute("UPDATE items SET removed_gen = NULL WHERE removed_gen > ?", (gen,))
        removed_now = [r[0] for r in con.execute("SELECT id FROM items WHERE removed_gen = ?", (gen,))]
    finally:
        con.close()
    for stale in path.glob("vectors.*.faiss"):
        if stale.name != vectors_file(gen):
            stale.unlink(missing_ok=True)
    keep = manifest.get("centroids", CENTROIDS)
    for stale in path.glob("centroids.*.npy"):
        if stale.name != keep:
            stale.unlink(missing_ok=True)
    if manifest.get("store"):
        from .stores import open_vector_store

        vs = open_vector_store(manifest["store"])
        vs.delete_from(int(manifest["rows"]))  # inserted by an update that never committed
        if removed_now:
            vs.delete(removed_now)  # committed removals whose deletes may not have reached Milvus
    if manifest.get("labels_stale"):
        _relabel(path, manifest)


def commit_update(path: Path, add: list[Record], add_raw: np.ndarray, remove: list[int]) -> dict:
    """Add records (ids already assigned from manifest['rows']) and remove ids, as one new generation.

    Order makes a crash at any point harmless: features are appended past the committed row
    count, rows are inserted under the next generation, the FAISS file gets a new name, and
    only the final manifest rename makes all of it visible. The PCA and coarse quantiser are
    reused as trained (`rebuild` retrains them). With a Milvus store, inserts go in before the
    commit (readers only see ids below the committed row count) and deletes after it
    (`recover` repeats them if a crash came in between).
    """
    path = Path(path)
    manifest = read_manifest(path)
    gen, rows = int(manifest.get("generation", 0)), int(manifest["rows"])
    new_gen = gen + 1
    ok = [r for r in add if r.status == "ok"]
    vectors = l2_normalize(add_raw[[r.id - rows for r in ok]]) if ok else None
    ids = np.array([r.id for r in ok], np.int64)
    removed = 0
    vstore = None
    index = None
    if manifest.get("store"):
        from .stores import open_vector_store

        vstore = open_vector_store(manifest["store"])
        if ok:
            for r, label in zip(ok, assign_clusters(path, None, vectors, manifest)):
                r.cluster = int(label)
            vstore.insert(ids, vectors)
        removed = len(remove)
    else:
        index = read_faiss(path, gen)
        if remove and index is not None:
            removed = _remove_ids(path, manifest, index, remove)
        if ok:
            if index is None:
                raise IndexError_(f"{path}: index has no trained vectors; rebuild it with `imagefinder index`")
            for r, label in zip(ok, assign_clusters(path, index, vectors, manifest)):
                r.cluster = int(label)
            index.add_with_ids(vectors, ids)
    if len(add):
        append_embeddings(path / EMBEDDINGS, add_raw, rows_before=rows)
    insert_records(path / ITEMS, add, generation=new_gen)
    _mark_removed(path / ITEMS, remove, new_gen)
    if index is not None:
        faiss.write_index(index, str(path / vectors_file(new_gen)))
    counts = dict(manifest["counts"])
    counts["items"] += len(add)
    counts["indexed"] = (int(index.ntotal) if index is not None else
                         counts["indexed"] + len(ok) - removed if vstore is not None else 0)
    counts["failed"] += len(add) - len(ok)
    counts["removed"] = counts.get("removed", 0) + removed
    manifest.update(generation=new_gen, rows=rows + len(add), counts=counts,
                    updated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_json(path / MANIFEST, manifest)
    fsync_dir(path)
    (path / vectors_file(gen)).unlink(missing_ok=True)
    if vstore is not None and remove:
        vstore.delete([int(i) for i in remove])
    return manifest


def _remove_ids(path: Path, manifest: dict, index: faiss.Index, remove: list[int]) -> int:
    """Delete ids from the index; HNSW cannot delete in FAISS, so its graph is rebuilt without them.

    The rebuild reuses the trained PCA (the graph is reset, not the transform) and reads the
    live rows from embeddings.f16: no re-embedding, but O(n) work - logged with its duration.
    """
    drop = np.array(sorted({int(i) for i in remove}), np.int64)
    if hnsw_of(index) is None:
        return int(index.remove_ids(drop))
    start = time.perf_counter()
    present = faiss.vector_to_array(index.id_map)
    keep = np.sort(present[~np.isin(present, drop)])
    features = np.memmap(path / EMBEDDINGS, np.float16, "r", shape=(int(manifest["rows"]), int(manifest["embedding_dim"])))
    index.reset()
    for s in range(0, len(keep), ADD_CHUNK):
        index.add_with_ids(unit_rows(features, keep[s:s + ADD_CHUNK]), keep[s:s + ADD_CHUNK])
    log.warning("FAISS HNSW cannot delete ids: rebuilt the graph over %d images without %d (%.1f s)",
                len(keep), len(present) - len(keep), time.perf_counter() - start)
    return int(len(present) - len(keep))


def _mark_removed(db: Path, ids: list[int], generation: int) -> None:
    if not ids:
        return
    con = sqlite3.connect(db)
    try:
        with con:
            con.executemany("UPDATE items SET removed_gen = ? WHERE id = ? AND removed_gen IS NULL",
                            [(generation, int(i)) for i in ids])
    finally:
        con.close()


def assign_clusters(path: Path, index: faiss.Index | None, vectors: np.ndarray, manifest: dict | None = None) -> np.ndarray:
    """Cluster labels for new vectors: the IVF list, or the nearest stored K-Means centroid."""
    reduced = transform(index, vectors) if index is not None else vectors
    ivf = ivf_of(index) if index is not None else None
    if ivf is not None:
        return ivf.quantizer.assign(reduced, 1).ravel()
    centroids_file = path / ((manifest or {}).get("centroids") or CENTROIDS)
    if not centroids_file.exists():
        return np.zeros(len(vectors), np.int64)
    centroids = np.load(centroids_file)
    return np.argmax(reduced @ centroids.T, axis=1)


# --- rebuild: retrain PCA / coarse quantiser from the stored features -------------------------


def rebuild(path: Path | str, config: IndexConfig | None = None) -> dict:
    """Retrain the index from embeddings.f16 (no re-embedding) as a new generation.

    The spec is re-chosen for today's size unless one was given (a Flat index grown past
    EXACT_LIMIT becomes IVF-PQ), then trained, filled and tuned like a fresh build. Ids stay.
    Cluster labels change with the training: they are rewritten right after the commit
    (`labels_stale` in the manifest makes `recover` finish that if interrupted).
    """
    path = Path(path)
    with writer_lock(path):
        manifest = read_manifest(path)
        recover(path, manifest)
        manifest = read_manifest(path)
        if manifest.get("store"):
            raise IndexError_(f"{path}: its vectors live in Milvus ({manifest['store'].get('uri')}), which builds "
                              "and rebalances its own index; there is nothing to retrain here")
        store = Store(path, mmap=True)
        try:
            before = drift_report(store)
            live = store.live_ids()
            features = store.embeddings
            gen, rows = store.generation, int(manifest["rows"])
            config = config or IndexConfig.from_manifest(manifest)
            start = time.perf_counter()
            built = build_vectors(features, live, config, rows, gen + 1)
        finally:
            store.close()
        new_gen = gen + 1
        if built.index is not None:
            faiss.write_index(built.index, str(path / vectors_file(new_gen)))
        extra = dict(built.fields)
        if built.clusters is not None and built.clusters.centroids is not None:
            name = f"centroids.{new_gen}.npy"
            np.save(path / name, built.clusters.centroids)
            extra["centroids"] = name
        else:
            extra["centroids"] = None
        previous = {k: manifest.get(k) for k in ("index_spec", "nprobe", "ef_search", "rerank")}
        for key in ("nprobe", "ef_search", "rerank", "tuning", "metric"):
            manifest.pop(key, None)
        manifest.update(extra, generation=new_gen, index_spec=built.spec, config=asdict(config), labels_stale=True,
                        rebuilt_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        write_json(path / MANIFEST, manifest)
        fsync_dir(path)
        (path / vectors_file(gen)).unlink(missing_ok=True)
        if built.clusters is not None:
            _write_labels(path, live, built.clusters.labels)
        manifest.pop("labels_stale", None)
        write_json(path / MANIFEST, manifest)
        recover(path, manifest)  # drops the previous generation's centroids file
    return {"path": str(path), "generation": new_gen, "previous": previous, "index_spec": built.spec,
            "nprobe": manifest.get("nprobe"), "ef_search": manifest.get("ef_search"), "rerank": manifest.get("rerank"),
            "tuning": {k: v for k, v in (manifest.get("tuning") or {}).items() if k != "curve"},
            "indexed": len(live), "seconds": round(time.perf_counter() - start, 2), "drift_before": before}


def _write_labels(path: Path, ids: np.ndarray, labels: np.ndarray) -> None:
    con = sqlite3.connect(path / ITEMS)
    try:
        with con:
            con.executemany("UPDATE items SET cluster = ? WHERE id = ?",
                            zip((int(x) for x in labels), (int(i) for i in ids)))
    finally:
        con.close()


def _relabel(path: Path, manifest: dict) -> None:
    """Finish an interrupted rebuild: cluster labels from the committed index (no retraining)."""
    store = Store(path, mmap=True)
    try:
        live = store.live_ids()
        labels = np.concatenate([assign_clusters(path, store.faiss, unit_rows(store.embeddings, live[s:s + ADD_CHUNK]),
                                                 manifest) for s in range(0, len(live), ADD_CHUNK)]) if len(live) else []
    finally:
        store.close()
    _write_labels(path, live, np.asarray(labels))
    manifest.pop("labels_stale", None)
    write_json(path / MANIFEST, manifest)

"""Free functions over FAISS indexes: make, train and fill one, reach its parts, set search parameters.

Every index carries item ids (IVF natively, others inside an IndexIDMap2), is trained on a
bounded sample (K-Means and PCA on 2 cores), and is filled chunk by chunk from the raw
float16 features, so a 1M x 1280 collection never sits in RAM twice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..embed import l2_normalize
from .layout import vectors_file
from .spec import default_nprobe, spec_metric

TRAIN_POINTS_PER_LIST = 40  # FAISS wants >= 39 training points per IVF list
TRAIN_MAX = 256_000  # cap on training points (K-Means on 2 cores)
PCA_TRAIN = 20_000  # enough for a 1280x1280 covariance
ADD_CHUNK = 65_536  # vectors normalised + added at a time (bounded memory on 1M images)


def new_index(spec: str, dim: int) -> faiss.Index:
    """An empty index for `spec`, with ids, on the metric the spec calls for."""
    index = faiss.index_factory(dim, spec, spec_metric(spec))
    if ivf_of(index) is None:  # IVF indexes keep ids themselves
        index = faiss.IndexIDMap2(index)
    pca = pca_of(index)
    if pca is not None:  # a 1280x1280 covariance is well estimated from ~20k points; more only costs time
        pca.max_points_per_d = max(1, PCA_TRAIN // pca.d_in)
    found = ivf_of(index)
    if found is not None:
        ivf: Any = faiss.downcast_index(found)
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


def _unwrapped(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap2) else index)


def pca_of(index: faiss.Index) -> faiss.PCAMatrix | None:
    inner = _unwrapped(index)
    chain: Any = inner.chain if isinstance(inner, faiss.IndexPreTransform) else None
    if chain is not None and chain.size():
        first = faiss.downcast_VectorTransform(chain.at(0))
        if isinstance(first, faiss.PCAMatrix):
            return first
    return None


def apply_chain(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """The index's own PCA/normalisation chain applied to `vectors`: the space its clusters live in."""
    inner = _unwrapped(index)
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(inner, faiss.IndexPreTransform):
        chain: Any = inner.chain  # a SWIG vector (the stubs say list)
        for i in range(chain.size()):
            out = chain.at(i).apply(out)
    return out


class IdSelection:
    """FAISS search parameters that rank only `allowed` ids (row numbers), for one filtered search.

    A bitmap selector (one bit per row: constant-time membership, unlike IDSelectorArray's scan);
    the object holds the bitmap, which FAISS only points to. Approximate indexes look further in
    proportion to how much the filter leaves out (nprobe / efSearch divided by the matching
    fraction, up to exhaustive), so a narrow filter still finds its k best matches.
    """

    def __init__(self, index: faiss.Index, allowed: np.ndarray, rows: int) -> None:
        allowed = np.asarray(allowed, np.int64)
        rows = max(int(rows), int(allowed.max()) + 1 if len(allowed) else 0)
        bits = np.zeros(rows, bool)
        bits[allowed] = True
        self.bitmap = np.packbits(bits, bitorder="little")  # bit i of byte i // 8 = id i, as FAISS reads it
        self.selector = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(self.bitmap))
        fraction = max(len(allowed), 1) / max(int(index.ntotal), 1)
        ivf, hnsw = ivf_of(index), hnsw_of(index)
        # built by attribute: the faiss type stubs predate selectors on search parameters
        params: Any
        if ivf is not None:
            params = faiss.SearchParametersIVF()
            params.nprobe = min(ivf.nlist, int(np.ceil(ivf.nprobe / min(fraction, 1.0))))
            params.max_codes = ivf.max_codes
        elif hnsw is not None:
            ef = hnsw.hnsw.efSearch
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(ef, int(min(index.ntotal, np.ceil(ef / min(fraction, 1.0)))))
        else:
            params = faiss.SearchParameters()
        params.sel = self.selector
        self.params: faiss.SearchParameters = params


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, nprobe or default_nprobe(ivf.nlist))


def set_search_params(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> None:
    """Apply a manifest's tuned nprobe / efSearch to a freshly read index."""
    set_nprobe(index, nprobe)
    hnsw = hnsw_of(index)
    if hnsw is not None and ef_search:
        hnsw.hnsw.efSearch = int(ef_search)


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

"""The vector side of a build or rebuild: choose, train, fill and tune the index, label clusters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from .clusters import Clusters, cluster_labels_by_id
from .drift import training_baseline
from .faiss_ops import hnsw_of, ivf_of, set_nprobe, train_and_fill
from .layout import IndexError_
from .spec import DEFAULT_RERANK, IndexConfig, choose_spec, is_exact, is_lossy, spec_metric
from .tuning import TUNE_MIN_ROWS, TUNE_QUERIES, tune


@dataclass
class BuiltVectors:
    """The vector side of an artifact: index (None for an external store), labels, manifest fields."""

    spec: str
    index: faiss.Index | None
    clusters: Clusters | None
    fields: dict[str, Any]  # Manifest fields: clusters, cluster_source, nprobe, ef_search, metric, rerank, tuning, ...


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
        return _for_store(features, ids, config, spec, labels)
    index = train_and_fill(features, ids, spec)
    stages = {"train_and_fill": round(time.perf_counter() - start, 2)}
    set_nprobe(index, config.nprobe)
    rerank = config.rerank if config.rerank is not None else (DEFAULT_RERANK if is_lossy(spec) else 0)
    out: dict[str, Any] = {"metric": "l2" if spec_metric(spec) == faiss.METRIC_L2 else "ip", "rerank": rerank or None}
    hnsw = hnsw_of(index)
    if not is_exact(spec) and len(ids) >= TUNE_MIN_ROWS and not config.nprobe:
        out.update(tune(index, features, ids, spec, config.target_recall, rerank, queries=tune_queries))
        stages["tune"] = out["tuning"]["seconds"]
    elif hnsw is not None:
        out["ef_search"] = int(hnsw.hnsw.efSearch)
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


def _for_store(features: np.ndarray, ids: np.ndarray, config: IndexConfig, spec: str, labels: bool) -> BuiltVectors:
    """An external store holds raw unit vectors and builds its own index: only K-Means labels are made here."""
    if not is_exact(spec) or "PCA" in spec:
        raise IndexError_(f"the {config.store} store holds raw unit vectors: use it without --pca/--index "
                          f"(got {spec}); Milvus builds its own ANN index")
    index = faiss.IndexFlatIP(features.shape[1])  # for the K-Means labels only; the vectors go to the store
    clusters = cluster_labels_by_id(index, features, ids, config.clusters) if labels else None
    return BuiltVectors(spec, None, clusters, {
        "clusters": int(clusters.k) if clusters else 0, "cluster_source": clusters.source if clusters else None,
        "nprobe": None, "metric": "ip", "rerank": None})

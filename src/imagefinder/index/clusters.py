"""Cluster labels: an IVF index's own lists, or K-Means fitted beside a flat index."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .faiss_ops import ADD_CHUNK, apply_chain, ivf_of, unit_rows
from .layout import CENTROIDS


@dataclass
class Clusters:
    labels: np.ndarray
    k: int
    source: str  # "ivf" (the index's own lists) or "kmeans" (fitted beside a flat index)
    centroids: np.ndarray | None = None


def cluster_labels(index: faiss.Index, vectors: np.ndarray, k: int | None) -> Clusters:
    """Cluster of each vector: its IVF list, or for a flat index a K-Means fit (k ~ sqrt n)."""
    reduced = apply_chain(index, vectors)
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


def _chunked(index: faiss.Index, features: np.ndarray, ids: np.ndarray, assign: faiss.Index) -> np.ndarray:
    return np.concatenate([assign.search(apply_chain(index, unit_rows(features, ids[s:s + ADD_CHUNK])), 1)[1].ravel()
                           for s in range(0, len(ids), ADD_CHUNK)])


def cluster_labels_by_id(index: faiss.Index, features: np.ndarray, ids: np.ndarray, k: int | None) -> Clusters:
    """`cluster_labels` over raw features by id; big collections fit K-Means on a sample, assign in chunks."""
    if len(ids) <= ADD_CHUNK:
        return cluster_labels(index, unit_rows(features, ids), k)
    ivf = ivf_of(index)
    if ivf is not None:
        labels = np.concatenate([ivf.quantizer.assign(apply_chain(index, unit_rows(features, ids[s:s + ADD_CHUNK])), 1)
                                 .ravel() for s in range(0, len(ids), ADD_CHUNK)])
        return Clusters(labels, ivf.nlist, "ivf")
    k = k or max(1, int(math.sqrt(len(ids))))
    sample = np.sort(np.random.default_rng(1234).choice(ids, min(len(ids), 256 * k), replace=False))
    fit = cluster_labels(index, unit_rows(features, sample), k)
    if fit.centroids is None:  # k < 2: one cluster
        return Clusters(np.zeros(len(ids), np.int64), 1, "kmeans")
    assign = faiss.IndexFlatIP(fit.centroids.shape[1])
    assign.add(fit.centroids)
    return Clusters(_chunked(index, features, ids, assign), k, "kmeans", fit.centroids)


def assign_clusters(path: Path, index: faiss.Index | None, vectors: np.ndarray, centroids: str | None) -> np.ndarray:
    """Cluster labels for new vectors: the IVF list, or the nearest stored K-Means centroid (file `centroids`)."""
    reduced = apply_chain(index, vectors) if index is not None else vectors
    ivf = ivf_of(index) if index is not None else None
    if ivf is not None:
        return ivf.quantizer.assign(reduced, 1).ravel()
    centroids_file = path / (centroids or CENTROIDS)
    if not centroids_file.exists():
        return np.zeros(len(vectors), np.int64)
    return np.argmax(reduced @ np.load(centroids_file).T, axis=1)

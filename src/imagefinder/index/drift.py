"""Drift: how well the trained PCA and coarse quantiser still fit the collection.

A build records a training baseline in the manifest (`training_baseline`); `drift_report`
compares images added since with it and says when `imagefinder rebuild` is due.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist_sizes

from .faiss_ops import apply_chain, ivf_of, pca_of, unit_rows
from .manifest import utc_now
from .spec import IndexConfig, choose_spec, kind

if TYPE_CHECKING:
    from .store import Store

DRIFT_SAMPLE = 2000
REBUILD_RATIOS = {"ivf_cv": 1.5, "pca_residual": 1.2, "coarse_distance": 1.2}
REBUILD_GROWTH = 2.0  # collection doubled since training


def list_size_cv(index: faiss.Index | None) -> float | None:
    """Coefficient of variation of IVF list sizes (0 = perfectly balanced)."""
    ivf = ivf_of(index) if index is not None else None
    if ivf is None:
        return None
    sizes = get_invlist_sizes(ivf.invlists).astype(np.float64)
    return float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else None


def fit_stats(index: faiss.Index | None, vectors: np.ndarray) -> dict[str, float]:
    """How well the trained PCA and coarse quantiser fit `vectors` (unit rows).

    pca_residual: mean share of each centred vector's energy the PCA drops;
    coarse_distance: mean squared distance to the nearest IVF centroid (in the IVF's space).
    Both grow when new images come from a distribution the training never saw.
    """
    out: dict[str, float] = {}
    if index is None or not len(vectors):
        return out
    pca = pca_of(index)
    if pca is not None:
        mean = faiss.vector_to_array(pca.mean)
        proj = faiss.vector_to_array(pca.PCAMat).reshape(-1, pca.d_in)[:pca.d_out]
        centred = vectors - mean
        total = np.einsum("ij,ij->i", centred, centred)
        kept = np.einsum("ij,ij->i", centred @ proj.T, centred @ proj.T)
        out["pca_residual"] = float(np.mean((total - kept) / np.maximum(total, 1e-12)))
    ivf = ivf_of(index)
    if ivf is not None:
        reduced = apply_chain(index, vectors)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        d2 = (np.einsum("ij,ij->i", reduced, reduced)[:, None] - 2 * reduced @ centroids.T
              + np.einsum("ij,ij->i", centroids, centroids)[None, :])
        out["coarse_distance"] = float(np.maximum(d2.min(axis=1), 0).mean())
    return out


def training_baseline(index: faiss.Index | None, features: np.ndarray, ids: np.ndarray, rows: int,
                      generation: int, seconds: float) -> dict[str, Any]:
    """What the manifest keeps about the training, to compare later additions with."""
    sample = np.sort(np.random.default_rng(3).choice(ids, min(DRIFT_SAMPLE, len(ids)), replace=False)) if len(ids) else ids
    return {"rows": int(rows), "live": len(ids), "generation": int(generation), "seconds": round(seconds, 2),
            "at": utc_now(),
            "ivf_cv": list_size_cv(index), **fit_stats(index, unit_rows(features, sample) if len(sample) else sample)}


def drift_report(store: Store) -> dict[str, Any]:
    """Has the collection drifted from what the PCA / coarse quantiser were trained on?

    Compares images added since training with the training baseline in the manifest:
    IVF list-size imbalance (coefficient of variation now vs at training), PCA residual and
    distance to the nearest centroid (recent additions vs training sample), and growth. Any
    ratio past REBUILD_RATIOS, a doubled collection, or an auto-chosen spec that no longer fits
    the size (e.g. a Flat index grown past EXACT_LIMIT) recommends `imagefinder rebuild`.
    """
    m = store.manifest
    base = m.training or {}
    trained_rows = int(base.get("rows", m.extra.get("trained_rows", store.items.rows_of_generation(0))))
    trained_live = int(base.get("live", 0)) or None
    indexed = m.counts.indexed
    recent = store.live_ids(since=trained_rows)
    report: dict[str, Any] = {
        "index_spec": m.index_spec, "trained_at": base.get("at", m.created_at),
        "trained_on": trained_live, "indexed": indexed, "added_since_training": len(recent),
        "growth": round(indexed / trained_live, 3) if trained_live else None, "signals": {}, "reasons": [],
    }
    if m.store:
        report["note"] = "vectors live in Milvus, which trains its own index as segments grow"
    now: dict[str, float | None] = {"ivf_cv": list_size_cv(store.faiss)}
    if len(recent) >= 50 and store.faiss is not None:
        now.update(fit_stats(store.faiss, unit_rows(store.embeddings, recent[-DRIFT_SAMPLE:])))
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
    if not config.spec and not m.store:
        fits = choose_spec(indexed, m.embedding_dim, config)
        if kind(fits) != kind(m.index_spec):
            report["reasons"].append(f"{indexed} images call for {fits} (now {m.index_spec})")
            report["would_use"] = fits
    report["rebuild_recommended"] = bool(report["reasons"])
    return report

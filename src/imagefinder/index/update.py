"""Updating an index in place: add, remove, recover from a crash, rebuild.

Updates never rewrite in place: they write generation G+1 beside G and commit by replacing
manifest.json, so a crash at any moment leaves generation G intact; `recover` (run under the
writer lock before every update) removes what an uncommitted update left and finishes what a
committed one had left to do.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..atomic import fsync_dir
from ..embed import l2_normalize
from .artifact import append_embeddings, writer_lock
from .clusters import assign_clusters
from .drift import drift_report
from .faiss_ops import ADD_CHUNK, hnsw_of, read_faiss, unit_rows
from .items import Items, Record
from .layout import EMBEDDINGS, ITEMS, IndexError_, vectors_file
from .manifest import Counts, Manifest, read_manifest, utc_now, write_manifest
from .spec import IndexConfig
from .store import Store
from .vectors import build_vectors

log = logging.getLogger(__name__)


def recover(path: Path, manifest: Manifest) -> None:
    """Undo what an interrupted update wrote past the committed generation, finish what it committed."""
    gen = manifest.generation
    with Items.writer(path / ITEMS) as items:
        removed_now = items.discard_after(gen)
    for stale in path.glob("vectors.*.faiss"):
        if stale.name != vectors_file(gen):
            stale.unlink(missing_ok=True)
    for stale in path.glob("centroids.*.npy"):
        if stale.name != manifest.centroids:
            stale.unlink(missing_ok=True)
    if manifest.store:
        from ..stores import open_vector_store

        vs = open_vector_store(manifest.store)
        vs.delete_from(manifest.rows)  # inserted by an update that never committed
        if removed_now:
            vs.delete(removed_now)  # committed removals whose deletes may not have reached Milvus
    if manifest.labels_stale:
        _relabel(path, manifest)


def commit_update(path: Path, add: list[Record], add_raw: np.ndarray, remove: list[int]) -> Manifest:
    """Add records (ids already assigned from manifest.rows) and remove ids, as one new generation.

    Order makes a crash at any point harmless: features are appended past the committed row
    count, rows are inserted under the next generation, the FAISS file gets a new name, and
    only the final manifest rename makes all of it visible. The PCA and coarse quantiser are
    reused as trained (`rebuild` retrains them). With a Milvus store, inserts go in before the
    commit (readers only see ids below the committed row count) and deletes after it
    (`recover` repeats them if a crash came in between).
    """
    path = Path(path)
    manifest = read_manifest(path)
    gen, rows = manifest.generation, manifest.rows
    new_gen = gen + 1
    ok = [r for r in add if r.status == "ok"]
    vectors = l2_normalize(add_raw[[r.id - rows for r in ok]]) if ok else None
    ids = np.array([r.id for r in ok], np.int64)
    removed = 0
    vstore = None
    index = None
    if manifest.store:
        from ..stores import open_vector_store

        vstore = open_vector_store(manifest.store)
        if vectors is not None:
            for r, label in zip(ok, assign_clusters(path, None, vectors, manifest.centroids)):
                r.cluster = int(label)
            vstore.insert(ids, vectors)
        removed = len(remove)
    else:
        index = read_faiss(path, gen)
        if remove and index is not None:
            removed = _remove_ids(path, manifest, index, remove)
        if vectors is not None:
            if index is None:
                raise IndexError_(f"{path}: index has no trained vectors; rebuild it with `imagefinder index`")
            for r, label in zip(ok, assign_clusters(path, index, vectors, manifest.centroids)):
                r.cluster = int(label)
            index.add_with_ids(vectors, ids)
    if len(add):
        append_embeddings(path / EMBEDDINGS, add_raw, rows_before=rows)
    with Items.writer(path / ITEMS) as items:
        items.insert(add, generation=new_gen)
        items.mark_removed(remove, new_gen)
    if index is not None:
        faiss.write_index(index, str(path / vectors_file(new_gen)))
    c = manifest.counts
    indexed = (int(index.ntotal) if index is not None else
               c.indexed + len(ok) - removed if vstore is not None else 0)
    counts = Counts(items=c.items + len(add), indexed=indexed, failed=c.failed + len(add) - len(ok),
                    removed=c.removed + removed)
    manifest = manifest.stamped(generation=new_gen, rows=rows + len(add), counts=counts)
    write_manifest(path, manifest)
    fsync_dir(path)
    (path / vectors_file(gen)).unlink(missing_ok=True)
    if vstore is not None and remove:
        vstore.delete([int(i) for i in remove])
    return manifest


def _remove_ids(path: Path, manifest: Manifest, index: Any, remove: list[int]) -> int:
    """Delete ids from the index; HNSW cannot delete in FAISS, so its graph is rebuilt without them.

    The rebuild reuses the trained PCA (the graph is reset, not the transform) and reads the
    live rows from embeddings.f16: no re-embedding, but O(n) work - logged with its duration.
    """
    # `index` is Any: the SWIG wrappers take arrays and reach id_map where the stubs do not say so
    drop = np.array(sorted({int(i) for i in remove}), np.int64)
    if hnsw_of(index) is None:
        return int(index.remove_ids(drop))
    start = time.perf_counter()
    present = faiss.vector_to_array(index.id_map)
    keep = np.sort(present[~np.isin(present, drop)])
    features = np.memmap(path / EMBEDDINGS, np.float16, "r", shape=(manifest.rows, manifest.embedding_dim))
    index.reset()
    for s in range(0, len(keep), ADD_CHUNK):
        index.add_with_ids(unit_rows(features, keep[s:s + ADD_CHUNK]), keep[s:s + ADD_CHUNK])
    log.warning("FAISS HNSW cannot delete ids: rebuilt the graph over %d images without %d (%.1f s)",
                len(keep), len(present) - len(keep), time.perf_counter() - start)
    return int(len(present) - len(keep))


def rebuild(path: Path | str, config: IndexConfig | None = None) -> dict[str, Any]:
    """Retrain the index from embeddings.f16 (no re-embedding) as a new generation.

    The spec is re-chosen for today's size unless one was given (a Flat index grown past
    EXACT_LIMIT becomes IVF-PQ), then trained, filled and tuned like a fresh build. Ids stay.
    Cluster labels change with the training: they are rewritten right after the commit
    (`labels_stale` in the manifest makes `recover` finish that if interrupted).
    """
    path = Path(path)
    with writer_lock(path):
        recover(path, read_manifest(path))
        manifest = read_manifest(path)
        if manifest.store:
            raise IndexError_(f"{path}: its vectors live in Milvus ({manifest.store.get('uri')}), which builds "
                              "and rebalances its own index; there is nothing to retrain here")
        store = Store(path, mmap=True)
        try:
            before = drift_report(store)
            live = store.live_ids()
            gen = store.generation
            config = config or IndexConfig.from_manifest(manifest)
            start = time.perf_counter()
            built = build_vectors(store.embeddings, live, config, manifest.rows, gen + 1)
        finally:
            store.close()
        new_gen = gen + 1
        if built.index is not None:
            faiss.write_index(built.index, str(path / vectors_file(new_gen)))
        centroids = None
        if built.clusters is not None and built.clusters.centroids is not None:
            centroids = f"centroids.{new_gen}.npy"
            np.save(path / centroids, built.clusters.centroids)
        previous = {"index_spec": manifest.index_spec, "nprobe": manifest.nprobe, "ef_search": manifest.ef_search,
                    "rerank": manifest.rerank}
        fields: dict[str, Any] = {"nprobe": None, "ef_search": None, "rerank": None, "tuning": None, "metric": None,
                                  **built.fields}
        manifest = manifest.replace(**fields, centroids=centroids, generation=new_gen, index_spec=built.spec,
                                    config=config, labels_stale=True,
                                    rebuilt_at=utc_now())
        write_manifest(path, manifest)
        fsync_dir(path)
        (path / vectors_file(gen)).unlink(missing_ok=True)
        if built.clusters is not None:
            with Items.writer(path / ITEMS) as items:
                items.set_clusters(live, built.clusters.labels)
        manifest = manifest.replace(labels_stale=False)
        write_manifest(path, manifest)
        recover(path, manifest)  # drops the previous generation's centroids file
    return {"path": str(path), "generation": new_gen, "previous": previous, "index_spec": built.spec,
            "nprobe": manifest.nprobe, "ef_search": manifest.ef_search, "rerank": manifest.rerank,
            "tuning": {k: v for k, v in (manifest.tuning or {}).items() if k != "curve"},
            "indexed": len(live), "seconds": round(time.perf_counter() - start, 2), "drift_before": before}


def _relabel(path: Path, manifest: Manifest) -> None:
    """Finish an interrupted rebuild: cluster labels from the committed index (no retraining)."""
    store = Store(path, mmap=True)
    try:
        live = store.live_ids()
        labels = np.concatenate([assign_clusters(path, store.faiss, unit_rows(store.embeddings, live[s:s + ADD_CHUNK]),
                                                 manifest.centroids) for s in range(0, len(live), ADD_CHUNK)]) \
            if len(live) else np.zeros(0, np.int64)
    finally:
        store.close()
    with Items.writer(path / ITEMS) as items:
        items.set_clusters(live, labels)
    write_manifest(path, manifest.replace(labels_stale=False))

"""Reduce + index + the on-disk artifact.

The seed's PCA -> K-Means -> similarity chain is one FAISS factory string here:
`PCAW256,L2norm,IVF1024,Flat` whitens to 256 dims, normalises, and files every image under
its nearest of 1024 K-Means centroids (the IVF lists *are* the clusters). The string is
stored in the manifest, so an index is reproducible from its manifest alone.

Artifact directory (written to a temp dir, then renamed into place: readers never see a
half-written index):
    manifest.json   format, model + weights hashes, preprocessing, spec, counts, versions
    vectors.G.faiss the FAISS index over live images of generation G, ids = item ids
    embeddings.f16  raw backbone features (float16, append-only), row = item id; for
                    euclidean/vote ranking and for retraining PCA/IVF without re-embedding
    centroids.npy   K-Means centroids when the index itself is flat (IVF keeps its own)
    items.sqlite    id -> source, cached file, size, sha256, status/error, cluster, metadata,
                    and the generations in which each row was added / removed
    thumbs/ID.jpg   thumbnails

Updates (add/remove) never rewrite in place: they write generation G+1 beside G and commit
by replacing manifest.json, so a crash at any moment leaves generation G intact.
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
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np

from .embed import l2_normalize
from .models import DEFAULT_MODEL

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXACT_LIMIT = 50_000  # below this many images an exact (flat) index is fast enough
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


# --- choosing and training the FAISS index -----------------------------------------------


def choose_spec(n: int, dim: int, config: IndexConfig) -> str:
    """The factory string for `n` vectors: exact below EXACT_LIMIT, IVF (K-Means) above."""
    if config.spec:
        return config.spec
    parts = []
    if config.pca:
        pca = min(config.pca, dim, max(n - 1, 1))
        if pca != config.pca:
            log.warning("--pca %d reduced to %d (needs fewer dims than images)", config.pca, pca)
        parts += [f"PCA{'W' if config.whiten else ''}{pca}", "L2norm"]
    clusters = config.clusters or (auto_clusters(n) if n >= EXACT_LIMIT else None)
    parts.append(f"IVF{min(clusters, max(n, 1))},Flat" if clusters else "Flat")
    return ",".join(parts)


def auto_clusters(n: int) -> int:
    """About 4*sqrt(n) IVF lists, FAISS's guideline (1M images -> 4000 clusters)."""
    return max(1, int(4 * math.sqrt(n)))


def is_exact(spec: str) -> bool:
    """True for brute-force specs (optional PCA/normalisation, then Flat)."""
    return re.fullmatch(r"((PCAW?\d+|PCAR?\d+|L2norm|IDMap2?),)*Flat", spec) is not None


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, nlist // 32))


def build_faiss(vectors: np.ndarray, ids: np.ndarray, spec: str, nprobe: int | None) -> faiss.Index:
    """Train (PCA, K-Means) and fill an inner-product index on unit vectors."""
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not _supports_ids(index):
        index = faiss.IndexIDMap2(index)
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, ids.astype(np.int64))
    set_nprobe(index, nprobe)
    return index


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


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, nprobe or default_nprobe(ivf.nlist))


def transform(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """Apply the index's own PCA/normalisation chain: the space the clusters live in."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    inner = faiss.downcast_index(inner)
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            out = inner.chain.at(i).apply(out)
    return out


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
    names = ["imagefinder", "faiss-cpu", "onnxruntime", "numpy", "pillow"]
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def vectors_file(generation: int) -> str:
    return f"vectors.{generation}.faiss"


class ArtifactWriter:
    """Builds a new index directory beside its destination and swaps it in on `commit`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.out_dir.exists() and not (self.out_dir / MANIFEST).is_file() and any(self.out_dir.iterdir()):
            raise IndexError_(f"{self.out_dir} exists and is not an ImageFinder index; refusing to replace it")
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        (self.tmp / THUMBS).mkdir(parents=True)

    @property
    def thumbs(self) -> Path:
        return self.tmp / THUMBS

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
        swap_into_place(self.tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


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


def append_embeddings(path: Path, rows: np.ndarray, rows_before: int) -> None:
    """Raw float16 rows, append-only: rows past the manifest's count are debris of a crash."""
    data = np.ascontiguousarray(rows, dtype=np.float16)
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(rows_before * data.shape[1] * 2 if data.ndim == 2 else 0)
        f.seek(0, os.SEEK_END)
        f.write(data.tobytes())
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
        "members": [asdict(m) for m in members],
        "embedding_dim": dim,
        "index_spec": spec,
        "config": asdict(config),
        "counts": counts,
        "versions": library_versions(),
        **extra,
    }


# --- reading an index back ------------------------------------------------------------


def read_manifest(path: Path) -> dict:
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


class Store:
    """Read access to one committed generation: manifest, FAISS index, raw features, id table."""

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
        flags = faiss.IO_FLAG_MMAP if (mmap if mmap is not None else m["counts"]["indexed"] > EXACT_LIMIT) else 0
        vectors = self.path / vectors_file(self.generation)
        self.index = faiss.read_index(str(vectors), flags) if m["counts"]["indexed"] or vectors.exists() else None
        if self.index is not None:
            set_nprobe(self.index, m.get("nprobe"))
        rows, dim = int(m["rows"]), int(m["embedding_dim"])
        self.embeddings = (np.memmap(self.path / EMBEDDINGS, np.float16, "r", shape=(rows, dim)) if rows
                           else np.zeros((0, dim), np.float16))
        self._db = sqlite3.connect(f"file:{self.path / ITEMS}?mode=ro", uri=True, check_same_thread=False)
        self._db.row_factory = sqlite3.Row

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    def _query(self, sql: str, params: list | tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def records(self, ids: list[int]) -> dict[int, dict]:
        """Visible rows by id (failed ones included: their status says so)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT * FROM items WHERE id IN ({marks}) AND {_visible(self.generation)}",
                           [int(i) for i in ids])
        return {row["id"]: _row_dict(row) for row in rows}

    def failures(self, limit: int = 20) -> list[dict]:
        rows = self._query(f"SELECT * FROM items WHERE status='failed' AND {_visible(self.generation)} "
                           "ORDER BY id LIMIT ?", (limit,))
        return [_row_dict(r) for r in rows]

    def ids_by_source(self) -> dict[str, int]:
        rows = self._query(f"SELECT id, source FROM items WHERE status='ok' AND {_visible(self.generation)}")
        return {s: i for i, s in rows}

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
    """Undo what an interrupted update wrote past the committed generation."""
    gen = int(manifest.get("generation", 0))
    con = sqlite3.connect(path / ITEMS)
    try:
        with con:
            con.execute("DELETE FROM items WHERE added_gen > ?", (gen,))
            con.execute("UPDATE items SET removed_gen = NULL WHERE removed_gen > ?", (gen,))
    finally:
        con.close()
    for stale in path.glob("vectors.*.faiss"):
        if stale.name != vectors_file(gen):
            stale.unlink(missing_ok=True)


def commit_update(path: Path, add: list[Record], add_raw: np.ndarray, remove: list[int]) -> dict:
    """Add records (ids already assigned from manifest['rows']) and remove ids, as one new generation.

    Order makes a crash at any point harmless: features are appended past the committed row
    count, rows are inserted under the next generation, the FAISS file gets a new name, and
    only the final manifest rename makes all of it visible.
    """
    path = Path(path)
    manifest = read_manifest(path)
    gen, rows = int(manifest.get("generation", 0)), int(manifest["rows"])
    new_gen = gen + 1
    index = faiss.read_index(str(path / vectors_file(gen))) if (path / vectors_file(gen)).exists() else None
    ok = [r for r in add if r.status == "ok"]
    if ok:
        if index is None:
            raise IndexError_(f"{path}: index has no trained vectors; rebuild it with `imagefinder index`")
        vectors = l2_normalize(add_raw[[r.id - rows for r in ok]])
        ids = np.array([r.id for r in ok], np.int64)
        for r, label in zip(ok, assign_clusters(path, index, vectors)):
            r.cluster = int(label)
        index.add_with_ids(vectors, ids)
    removed = 0
    if remove and index is not None:
        removed = int(index.remove_ids(np.array(remove, np.int64)))
    if len(add):
        append_embeddings(path / EMBEDDINGS, add_raw, rows_before=rows)
    insert_records(path / ITEMS, add, generation=new_gen)
    _mark_removed(path / ITEMS, remove, new_gen)
    if index is not None:
        faiss.write_index(index, str(path / vectors_file(new_gen)))
    counts = dict(manifest["counts"])
    counts["items"] += len(add)
    counts["indexed"] = 0 if index is None else int(index.ntotal)
    counts["failed"] += len(add) - len(ok)
    counts["removed"] = counts.get("removed", 0) + removed
    manifest.update(generation=new_gen, rows=rows + len(add), counts=counts,
                    updated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_json(path / MANIFEST, manifest)
    fsync_dir(path)
    (path / vectors_file(gen)).unlink(missing_ok=True)
    return manifest


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


def assign_clusters(path: Path, index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """Cluster labels for new vectors: the IVF list, or the nearest stored K-Means centroid."""
    reduced = transform(index, vectors)
    ivf = ivf_of(index)
    if ivf is not None:
        return ivf.quantizer.assign(reduced, 1).ravel()
    centroids_file = path / CENTROIDS
    if not centroids_file.exists():
        return np.zeros(len(vectors), np.int64)
    centroids = np.load(centroids_file)
    return np.argmax(reduced @ centroids.T, axis=1)

"""Reduce + index + the on-disk artifact.

The seed's PCA -> K-Means -> similarity chain is one FAISS factory string here:
`PCAW256,L2norm,IVF1024,Flat` whitens to 256 dims, normalises, and files every image under
its nearest of 1024 K-Means centroids (the IVF lists *are* the clusters). The string is
stored in the manifest, so an index is reproducible from its manifest alone.

Artifact directory (written to a temp dir, then renamed into place: readers never see a
half-written index):
    manifest.json   format, model + weights hashes, preprocessing, spec, counts, versions
    vectors.faiss   the FAISS index over live images, ids = item ids
    embeddings.npy  raw backbone features (float16), row = item id; for euclidean/vote
                    ranking and for retraining PCA/IVF without re-embedding
    items.sqlite    id -> source, cached file, size, sha256, status/error, cluster, metadata
    thumbs/ID.jpg   thumbnails
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np

from .models import DEFAULT_MODEL

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXACT_LIMIT = 50_000  # below this many images an exact (flat) index is fast enough
MANIFEST = "manifest.json"
VECTORS = "vectors.faiss"
EMBEDDINGS = "embeddings.npy"
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


def cluster_labels(index: faiss.Index, vectors: np.ndarray, k: int | None) -> tuple[np.ndarray, int, str]:
    """Cluster of each vector: its IVF list, or for a flat index a K-Means fit (k ~ sqrt n)."""
    reduced = transform(index, vectors)
    ivf = ivf_of(index)
    if ivf is not None:
        return ivf.quantizer.assign(reduced, 1).ravel(), ivf.nlist, "ivf"
    k = min(k or max(1, int(math.sqrt(len(reduced)))), len(reduced))
    if k < 2:
        return np.zeros(len(reduced), np.int64), 1, "kmeans"
    km = faiss.Kmeans(reduced.shape[1], k, niter=20, seed=1234, spherical=True,
                       max_points_per_centroid=256, min_points_per_centroid=1)
    km.train(reduced)
    return km.index.search(reduced, 1)[1].ravel(), k, "kmeans"


# --- the artifact on disk -----------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    cached_path TEXT, width INTEGER, height INTEGER, sha256 TEXT, cluster INTEGER, meta TEXT
);
CREATE INDEX IF NOT EXISTS items_status ON items(status);
CREATE INDEX IF NOT EXISTS items_sha ON items(sha256);
"""


def library_versions() -> dict[str, str]:
    names = ["imagefinder", "faiss-cpu", "onnxruntime", "numpy", "pillow"]
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class ArtifactWriter:
    """Builds an index directory beside its destination and swaps it in on `commit`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        (self.tmp / THUMBS).mkdir(parents=True)

    def add_thumbnail(self, item_id: int, jpeg: bytes) -> None:
        (self.tmp / THUMBS / f"{item_id}.jpg").write_bytes(jpeg)

    def commit(self, records: list[Record], embeddings: np.ndarray, index: faiss.Index | None, manifest: dict) -> Path:
        np.save(self.tmp / EMBEDDINGS, embeddings.astype(np.float16))
        if index is not None:
            faiss.write_index(index, str(self.tmp / VECTORS))
        write_records(self.tmp / ITEMS, records)
        _write_json(self.tmp / MANIFEST, manifest)
        _fsync_dir(self.tmp)
        swap_into_place(self.tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def swap_into_place(new: Path, dest: Path) -> None:
    """Replace `dest` with `new` by renames; the old index is deleted only once `new` is in."""
    old = None
    if dest.exists():
        if not (dest / MANIFEST).is_file() and any(dest.iterdir()):
            raise IndexError_(f"{dest} exists and is not an ImageFinder index; refusing to replace it")
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
    os.rename(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_records(path: Path, records: list[Record]) -> None:
    con = sqlite3.connect(path)
    try:
        con.executescript(_SCHEMA)
        con.executemany(
            "INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (r.id, r.source, r.status, r.error, r.cached_path, r.width, r.height, r.sha256,
                 r.cluster, json.dumps(r.meta) if r.meta else None)
                for r in records
            ],
        )
        con.commit()
    finally:
        con.close()


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
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


class Store:
    """Read access to an artifact: manifest, FAISS index, raw embeddings, id table."""

    def __init__(self, path: Path | str, mmap: bool | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        n = self.manifest["counts"].get("indexed", 0)
        flags = faiss.IO_FLAG_MMAP if (mmap if mmap is not None else n > EXACT_LIMIT) else 0
        vectors = self.path / VECTORS
        self.index = faiss.read_index(str(vectors), flags) if vectors.is_file() else None
        if self.index is not None:
            set_nprobe(self.index, self.manifest.get("nprobe"))
        self.embeddings = np.load(self.path / EMBEDDINGS, mmap_mode="r")
        self._db = sqlite3.connect(f"file:{self.path / ITEMS}?mode=ro", uri=True, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    def records(self, ids: list[int]) -> dict[int, dict]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM items WHERE id IN ({marks})", [int(i) for i in ids]).fetchall()
        return {row["id"]: _row_dict(row) for row in rows}

    def failures(self, limit: int = 20) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM items WHERE status='failed' ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [_row_dict(r) for r in rows]

    def ids_by_source(self) -> dict[str, int]:
        with self._lock:
            return {s: i for i, s in self._db.execute("SELECT id, source FROM items WHERE status='ok'")}

    def thumbnail_path(self, item_id: int) -> Path:
        return self.path / THUMBS / f"{int(item_id)}.jpg"

    def close(self) -> None:
        self._db.close()


def _row_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["meta"] = json.loads(out["meta"]) if out.get("meta") else {}
    return out

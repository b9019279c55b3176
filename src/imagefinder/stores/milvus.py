"""Milvus as the vector store: `pymilvus` talks to Milvus Lite (a local file) or a cluster alike.

Collection layout: `id` INT64 primary key (= item id) and `vector` FLOAT_VECTOR (the unit
input features, so inner product = cosine), metric IP. Exact search uses a FLAT index (same
ids and order as FAISS Flat, ties aside); on a cluster, `milvus://host:19530?index=HNSW` (or
IVF_FLAT) picks an ANN index instead, with the defaults below (recorded in the manifest).
Milvus Lite is slow (a test double, see DESIGN.md), never the default.

Cluster setup: run Milvus standalone or distributed (its docker-compose / Helm chart), then
`imagefinder index photos/ --out idx --store milvus://milvus-host:19530` (`milvus+https://`
for TLS; MILVUS_TOKEN="user:password" if authentication is on). The artifact directory keeps
the id table, features and thumbnails; only the vectors live in Milvus.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import StoreError

log = logging.getLogger(__name__)

INSERT_BATCH = 5_000
MAX_TOPK = 16_384  # Milvus's limit on `limit`
# A Milvus server's default consistency, Bounded, hides writes of the last ~5 s (its
# common.gracefulTime) from searches; Milvus Lite is always current. Strong waits for the next
# time tick, ~200 ms per search (benchmarks/SCALE.md), and Session misses deletes. So a search
# is Strong while this process wrote to the collection within BOUNDED_LAG_S (the API's own adds
# and deletes are visible to its next search), Bounded otherwise (other processes' writes show
# within ~5 s). Counts are Strong (once per open). Passed per request, not set on collections.
BOUNDED_LAG_S = 6.0
_last_write: dict[tuple[str, str], float] = {}  # (uri, collection) -> time.monotonic() of our last write
INDEX_PARAMS = {"FLAT": {}, "IVF_FLAT": {"nlist": 1024}, "HNSW": {"M": 32, "efConstruction": 200}}
SEARCH_PARAMS = {"FLAT": {}, "IVF_FLAT": {"nprobe": 32}, "HNSW": {"ef": 128}}
_clients: dict[str, Any] = {}  # one client per URI per process (Milvus Lite holds the file)
_loaded: set[tuple[str, str]] = set()  # collections this process has loaded for search
_clients_lock = threading.Lock()


def split_uri(uri: str) -> tuple[str, str]:
    """'milvus://h:p?index=HNSW' -> ('milvus://h:p', 'HNSW'); FLAT (exact) by default."""
    base, _, query = uri.partition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    index_type = options.get("index", "FLAT").upper()
    if index_type not in INDEX_PARAMS:
        raise StoreError(f"{uri}: index={index_type} is not one of {', '.join(INDEX_PARAMS)}")
    return base, index_type


def client_uri(uri: str) -> str:
    """milvus://h:p -> http://h:p, milvus+https://h:p -> https://h:p, a .db path -> its absolute path."""
    for prefix, scheme in (("milvus+https://", "https://"), ("milvus+http://", "http://"), ("milvus://", "http://")):
        if uri.startswith(prefix):
            return scheme + uri[len(prefix):]
    if uri.startswith(("http://", "https://")):
        return uri
    return str(Path(uri).expanduser().absolute())


def _client(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the milvus store needs `pip install pymilvus==3.0.2 milvus-lite==3.2.2`") from exc
    if not uri.startswith(("http://", "https://")):
        # Milvus Lite's embedded server lacks AllocTimestamp, which pymilvus probes on connect:
        # grpc logs a harmless traceback for it on every new client otherwise.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    with _clients_lock:
        if uri not in _clients:
            token = os.environ.get("MILVUS_TOKEN", "")
            _clients[uri] = MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
        return _clients[uri]


class MilvusVectors:
    """One collection = the vectors of one index; an `index.VectorIndex`, like the FAISS searchers."""

    def __init__(self, info: dict[str, Any], rows: int | None = None, ntotal: int | None = None) -> None:
        self.info = info
        self.uri = info["uri"]
        self.collection = info["collection"]
        self.d = int(info["dim"])
        self.rows = rows
        self._ntotal = ntotal
        self.client = _client(self.uri)

    @classmethod
    def create(cls, uri: str, dim: int, index_dir: Path) -> MilvusVectors:
        from pymilvus import DataType, MilvusClient

        base, index_type = split_uri(uri)
        resolved = client_uri(base)
        name = f"imagefinder_{Path(index_dir).name}_{uuid.uuid4().hex[:8]}"
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
        client = _client(resolved)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=INDEX_PARAMS[index_type])
        client.create_collection(name, schema=schema, index_params=params)
        info = {"kind": "milvus", "uri": resolved, "given_uri": uri, "collection": name, "dim": int(dim),
                "metric": "IP", "index_type": index_type, "search_params": SEARCH_PARAMS[index_type]}
        return cls(info)

    # --- writing ----------------------------------------------------------------------

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32)
        for start in range(0, len(ids), INSERT_BATCH):
            rows = [{"id": int(i), "vector": v} for i, v in zip(ids[start:start + INSERT_BATCH],
                                                                 vectors[start:start + INSERT_BATCH].tolist())]
            self.client.upsert(self.collection, rows)  # upsert: repeating an interrupted insert is harmless
            self._wrote()

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), INSERT_BATCH):
            self.client.delete(self.collection, ids=[int(i) for i in ids[start:start + INSERT_BATCH]])
            self._wrote()

    def delete_from(self, first_id: int) -> None:
        """Drop ids >= first_id: inserts of an update that never committed."""
        self.client.delete(self.collection, filter=f"id >= {int(first_id)}")
        self._wrote()

    def _wrote(self) -> None:
        _last_write[(self.uri, self.collection)] = time.monotonic()

    def _consistency(self) -> str:
        """Strong shortly after this process's own writes, Bounded (fast) otherwise."""
        last = _last_write.get((self.uri, self.collection))
        return "Strong" if last is not None and time.monotonic() - last < BOUNDED_LAG_S else "Bounded"

    def drop(self) -> None:
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        _loaded.discard((self.uri, self.collection))

    # --- reading: the VectorIndex protocol that search.py uses ----------------------------

    @property
    def ntotal(self) -> int:
        if self._ntotal is None:
            self._load()
            stats = self.client.query(self.collection, filter="", output_fields=["count(*)"],
                                      consistency_level="Strong")
            self._ntotal = int(stats[0]["count(*)"])
        return self._ntotal

    def _load(self) -> None:
        """A collection is searchable once loaded; Milvus releases it when its last client goes."""
        key = (self.uri, self.collection)
        if key not in _loaded:
            self.client.load_collection(self.collection)
            with _clients_lock:
                _loaded.add(key)

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`allowed`: rank only these ids (a metadata filter), as a Milvus filter expression."""
        self._load()
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        limit = min(int(k), MAX_TOPK)
        if limit < k:
            log.warning("Milvus returns at most %d results per query (asked %d)", MAX_TOPK, k)
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if limit <= 0 or not len(queries):
            return scores, ids
        found = self.client.search(
            self.collection, data=queries.tolist(), limit=limit, output_fields=[],
            search_params={"metric_type": "IP", "params": self.info.get("search_params", {})},
            filter=self._filter(allowed), consistency_level=self._consistency(),
        )
        for row, hits in enumerate(found):
            for col, hit in enumerate(hits):
                ids[row, col], scores[row, col] = int(hit["id"]), float(hit["distance"])
        return scores, ids

    def _filter(self, allowed: np.ndarray | None) -> str:
        """Ids this generation may return: below its row count (later rows are uncommitted), and `allowed`."""
        parts = [f"id < {int(self.rows)}"] if self.rows is not None else []
        if allowed is not None:
            parts.append(f"id in [{','.join(str(int(i)) for i in allowed)}]")
        return " and ".join(parts)

"""Vector stores other than the FAISS file inside the artifact, chosen by a URI.

    --store ./vectors.db            Milvus Lite, embedded (a test double for a cluster: slow)
    --store milvus://host:19530     a Milvus server or cluster (milvus+https://host:443 for TLS)

Only the vectors move: the id table, manifest, raw features and thumbnails stay in the
artifact directory, and the manifest's "store" entry tells `Store` where to search. A store
is an `index.VectorIndex` to search.py, like the FAISS searchers: `search(queries, k) -> (scores,
ids)`, `ntotal`, `d`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImageFinderError

if TYPE_CHECKING:
    from .milvus import MilvusVectors


class StoreError(ImageFinderError, ValueError):
    """A vector store URI or manifest entry this version cannot use."""


def is_milvus_uri(uri: str) -> bool:
    return uri.startswith(("milvus://", "milvus+http://", "milvus+https://", "http://", "https://")) or uri.endswith(".db")


def create_vector_store(uri: str, dim: int, index_dir: Path) -> MilvusVectors:
    """A new, empty collection for an index being built at `index_dir`."""
    if not is_milvus_uri(uri):
        raise StoreError(f"unknown vector store {uri!r}: use a Milvus Lite file (name.db) or milvus://host:19530")
    from .milvus import MilvusVectors

    return MilvusVectors.create(uri, dim, index_dir)


def open_vector_store(info: dict[str, Any], rows: int | None = None, ntotal: int | None = None) -> MilvusVectors:
    """The store a manifest's "store" entry names; `rows` hides ids of uncommitted updates."""
    kind = info.get("kind")
    if kind != "milvus":
        raise StoreError(f"unknown vector store kind {kind!r} in the manifest")
    from .milvus import MilvusVectors

    return MilvusVectors(info, rows=rows, ntotal=ntotal)

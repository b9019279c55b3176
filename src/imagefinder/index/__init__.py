"""Reduce + index + the on-disk artifact, one module per concern.

    spec        which FAISS index for how many images (factory strings), IndexConfig
    faiss_ops   make / train / fill a FAISS index, reach its parts, set search parameters
    searcher    the VectorIndex protocol search.py queries; FAISS searchers, exact re-ranking
    tuning      nprobe / efSearch / re-rank depth tuned to a target recall (faiss.contrib)
    clusters    cluster labels: IVF lists or K-Means beside a flat index
    drift       training baseline, drift report, when to rebuild
    vectors     the vector side of a build: choose, train, fill, tune, label
    layout      file names in an index directory, swapping a directory into place
    manifest    the typed, versioned manifest.json
    items       items.sqlite, the id table (one class, versioned schema)
    artifact    writing a new index directory (staging, build lock, swap)
    store       reading one committed generation
    update      add / remove / recover / rebuild in place, generation by generation

Other modules import from here; tests and benchmarks may reach into the submodules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .faiss_ops import unit_rows
from .items import Record
from .layout import EMBEDDINGS, MANIFEST, THUMBS, IndexError_
from .manifest import Counts, Manifest, make_manifest, read_manifest
from .searcher import VectorIndex, transform
from .spec import IndexConfig, is_exact
from .store import Store

if TYPE_CHECKING:
    from .artifact import ArtifactWriter, ServeLock, writer_lock
    from .drift import drift_report
    from .update import commit_update, rebuild, recover
    from .vectors import build_vectors

# The write side is imported on first use (PEP 562): a search opens a Store and needs none of
# it (nor filelock, K-Means, tuning); `imagefinder search` starts faster for it.
_LAZY = {"ArtifactWriter": "artifact", "ServeLock": "artifact", "writer_lock": "artifact", "drift_report": "drift",
         "commit_update": "update", "rebuild": "update", "recover": "update", "build_vectors": "vectors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EMBEDDINGS", "MANIFEST", "THUMBS", "ArtifactWriter", "Counts", "IndexConfig", "IndexError_", "Manifest",
    "Record", "ServeLock", "Store", "VectorIndex", "build_vectors", "commit_update", "drift_report", "is_exact", "make_manifest",
    "read_manifest", "rebuild", "recover", "transform", "unit_rows", "writer_lock",
]

"""Where an index's files live, and how a new index directory replaces an old one.

Artifact directory (written to a temp dir, then renamed into place: readers never see a
half-written index):
    manifest.json   format, model + weights hashes, preprocessing, spec, search parameters,
                    tuning (recall measured), training baseline (for drift), counts, versions
    vectors.G.faiss the FAISS index over live images of generation G, ids = item ids
                    (absent when vectors live in Milvus: the manifest's `store`)
    embeddings.f16  raw backbone features (float16, append-only), row = item id; for
                    euclidean/vote ranking, re-ranking, and retraining PCA/IVF without re-embedding
    centroids.npy   K-Means centroids when the index itself is flat (IVF keeps its own)
    items.sqlite    id -> source, cached file, size, sha256, status/error, cluster, metadata,
                    and the generations in which each row was added / removed
    thumbs/ID.jpg   thumbnails
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

from ..atomic import fsync_dir
from ..errors import ImageFinderError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.f16"
CENTROIDS = "centroids.npy"
ITEMS = "items.sqlite"
THUMBS = "thumbs"


class IndexError_(ImageFinderError, RuntimeError):
    """A missing, unreadable or incompatible index directory."""


def vectors_file(generation: int) -> str:
    return f"vectors.{generation}.faiss"


def restore_interrupted_swap(dest: Path) -> None:
    """A crash between `swap_into_place`'s two renames leaves no `dest`: put the previous index back."""
    if dest.exists():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for old in reversed(olds):
        if (old / MANIFEST).is_file():
            with contextlib.suppress(FileNotFoundError):  # another process may restore it first
                os.rename(old, dest)
                log.warning("restored %s from %s: a build was interrupted while swapping it in", dest, old)
            return


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

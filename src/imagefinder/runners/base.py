"""The runner interface: the contract between the pipeline and whoever executes the stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ..embed import Embedder
from ..ingest.download import DownloadConfig
from ..ingest.sources import Item
from ..ingest.stages import Loaded


class Runner(Protocol):
    """Embeds `items` as ids first_id.. and calls `on_loaded` on the caller's thread for each one.

    Returns the (len(items), dim) raw features, a zero row for each failed item; `on_loaded`
    gets every item (failed ones too) with its record, thumbnail and (when embedded) vector,
    in any order, so what happens after embedding is the same whichever runner ran.
    """

    def run(self, items: Sequence[Item], first_id: int, embedder: Embedder, download: DownloadConfig,
            batch_size: int, on_loaded: Callable[[Loaded], None], progress: bool) -> np.ndarray: ...


def embed_batch(batch: Sequence[Loaded], embedder: Embedder, embeddings: np.ndarray, first_id: int) -> int:
    """Embed the loaded items of `batch` in one model call: rows of `embeddings` by id, each item's
    `vector` set; returns how many were embedded (the rest failed to load)."""
    good = [x for x in batch if x.prepared is not None]
    if good:
        vectors = embedder.embed_prepared([x.prepared for x in good if x.prepared is not None])
        embeddings[[x.record.id - first_id for x in good]] = vectors
        for x, vector in zip(good, vectors):
            x.vector = vector
    return len(good)

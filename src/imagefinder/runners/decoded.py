"""A runner for items the caller has already decoded: the API decodes each upload once, to check it.

Without it, adding an upload would decode it twice (once to check it, once in `load_item`),
and keep two images per upload in memory. Items it holds no image for are loaded as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..embed import Embedder
from ..index import Record
from ..ingest.decode import Decoded
from ..ingest.download import DownloadConfig
from ..ingest.sources import Item
from ..ingest.stages import Loaded, load_decoded, load_item
from .base import embed_batch


@dataclass
class DecodedRunner:
    """Embeds `decoded` images (by item source) on the caller's thread, in batches."""

    decoded: Mapping[str, Decoded] = field(default_factory=dict)

    def load(self, item_id: int, item: Item, embedder: Embedder) -> Loaded:
        image = self.decoded.get(item.source)
        if image is None:
            return load_item(item_id, item, embedder, None)
        record = Record(id=item_id, source=item.source, meta=dict(item.meta), cached_path=item.source)
        return load_decoded(record, image, embedder)

    def run(self, items: Sequence[Item], first_id: int, embedder: Embedder, download: DownloadConfig,
            batch_size: int, on_loaded: Callable[[Loaded], None], progress: bool) -> np.ndarray:
        embeddings = np.zeros((len(items), embedder.dim), np.float32)
        for start in range(0, len(items), batch_size):
            batch = [self.load(first_id + start + n, item, embedder)
                     for n, item in enumerate(items[start:start + batch_size])]
            embed_batch(batch, embedder, embeddings, first_id)
            for x in batch:
                on_loaded(x)
        return embeddings

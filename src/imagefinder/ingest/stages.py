"""The per-item ingest stage every runner executes: fetch (if a URL) + decode + preprocess.

A plain function over one item, so the local thread pool and the Ray Data pipeline run the
same code (runners/); what they do with the result - batching it into the embedder, writing
records and thumbnails - is theirs. Every failure becomes a recorded reason, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..embed import Embedder
from ..errors import ImageFinderError
from ..index import Record
from .decode import THUMBNAIL_SIZE, Decoded, ImageError, open_image, thumbnail_jpeg
from .download import Downloader
from .sources import Item


@dataclass
class Loaded:
    """One item after fetch + decode: its id-table record and model inputs (None if failed)."""

    record: Record
    prepared: list[list[np.ndarray]] | None = None  # `Embedder.prepare` output: per member, per scale
    thumbnail: bytes | None = None
    vector: np.ndarray | None = None  # raw features, set by the runner once embedded


class FetchFailed(ImageFinderError, RuntimeError):
    """An item whose file could not be had: a failed download, or a source row that could not be read."""


def load_item(item_id: int, item: Item, embedder: Embedder, downloader: Downloader | None) -> Loaded:
    """Fetch (if a URL) and decode one item; every failure becomes a recorded reason."""
    record = Record(id=item_id, source=item.source, meta=dict(item.meta))
    try:
        path = fetch_item(item, downloader)
        record.cached_path = str(path)
        return load_decoded(record, open_image(path, draft_size=decode_size(embedder)), embedder)
    except (ImageError, FetchFailed) as exc:
        record.status, record.error = "failed", str(exc)
        return Loaded(record)


def decode_size(embedder: Embedder) -> int:
    """The smallest side a decode may reduce an image to: what the model and the thumbnail resize from."""
    return max([m.backbone.preprocess.size for m in embedder.members] + [THUMBNAIL_SIZE])


def load_decoded(record: Record, decoded: Decoded, embedder: Embedder) -> Loaded:
    """An image already decoded (by `load_item`, or by the API when it checked an upload) -> model inputs."""
    record.width, record.height, record.sha256 = decoded.width, decoded.height, decoded.sha256
    return Loaded(record, embedder.prepare(decoded.image), thumbnail_jpeg(decoded.image))


def fetch_item(item: Item, downloader: Downloader | None) -> Path:
    """The local file of an item: its own path, or its download (FetchFailed with the reason)."""
    if item.error is not None:
        raise FetchFailed(item.error)
    if not item.is_url:
        return Path(item.source)
    if downloader is None:
        raise FetchFailed("no downloader configured for URLs")
    result = downloader.fetch(item.source)
    if result.path is None or not result.ok:
        raise FetchFailed(result.error or "download failed")
    return result.path

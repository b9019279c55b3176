"""The training images: the index build's sources, fetch and decode, cached once as uint8 pixels.

Decoding is the slow part of a small fine-tuning run, so every image is decoded once, squashed
to S x S (as `Preprocess(resize="squash")` does at inference) and kept in memory for all epochs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..ingest.decode import ImageError, open_image
from ..ingest.sources import Item, SourceError, expand_nonempty
from ..ingest.stages import FetchFailed, fetch_item
from ..pipeline import default_download_config
from ..runners.local import local_workers
from .config import TrainError

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Decoded training images, squashed to S x S uint8 once."""

    pixels: np.ndarray  # (N, 3, S, S) uint8
    sources: list[str]
    sha256: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # source -> reason

    @property
    def data_hash(self) -> str:
        """sha256 of the sorted image sha256s: the same images give the same hash in any order."""
        return hashlib.sha256("\n".join(sorted(self.sha256)).encode()).hexdigest()

    def subset(self, indices: Sequence[int]) -> ImageSet:
        idx = list(indices)
        return ImageSet(self.pixels[idx], [self.sources[i] for i in idx], [self.sha256[i] for i in idx])


def cache_size(image_size: int) -> int:
    """Cached side: the usual 256/224 margin, so crops and resizes start from more pixels."""
    return round(image_size * 256 / 224)


def load_images(sources: Sequence[str], size: int, *, workers: int | None = None, progress: bool = False) -> ImageSet:
    """All images of `sources` (folders, CSVs, lists, URLs) decoded once to (N, 3, size, size) uint8.

    The index build's own source expansion, downloader and decoder; unreadable images are
    skipped and reported, as `build_index` records them.
    """
    items = expand_nonempty(sources)
    has_urls = any(item.is_url for item in items)
    download = default_download_config()
    downloader = None
    if has_urls:
        from ..ingest.download import Downloader

        downloader = Downloader(download)

    def load(item: Item) -> tuple[np.ndarray, str] | str:
        try:
            decoded = open_image(fetch_item(item, downloader), draft_size=size)
        except (ImageError, FetchFailed) as exc:
            return str(exc)
        img = decoded.image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), decoded.sha256

    pixels, kept, hashes, failed = [], [], [], {}
    try:
        with ThreadPoolExecutor(max_workers=local_workers(download, has_urls, workers)) as pool:
            for item, out in tqdm(zip(items, pool.map(load, items)), total=len(items), unit="img",
                                  desc="decoding", disable=not progress):
                if isinstance(out, str):
                    failed[item.source] = out
                else:
                    pixels.append(out[0])
                    hashes.append(out[1])
                    kept.append(item.source)
    finally:
        if downloader is not None:
            downloader.close()
    if failed:
        log.warning("%d of %d images could not be read and are left out of training (first: %s: %s)",
                    len(failed), len(items), *next(iter(failed.items())))
    if not pixels:
        raise SourceError(f"none of the {len(items)} images of {', '.join(map(str, sources))} could be read")
    return ImageSet(np.stack(pixels), kept, hashes, failed)


def split(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of range(n); validation gets round(n * val_split), at least 1."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_split <= 0 else max(1, round(n * val_split))
    if n - n_val < 2:
        raise TrainError(f"{n} images leave fewer than 2 to train on with val split {val_split}: add images")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


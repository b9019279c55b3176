"""Build an index: sources -> fetch -> decode/preprocess -> embed -> reduce/index -> artifact.

Stages are plain functions over items and batches (`load_item`, `Embedder.embed_prepared`);
the local runner below overlaps them with a thread pool: downloads and JPEG decoding release
the GIL, so they proceed while onnxruntime runs the previous batch on all cores.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from .download import DownloadConfig, Downloader
from .embed import Embedder, l2_normalize
from .images import THUMBNAIL_SIZE, ImageError, open_image, thumbnail_jpeg
from .index import (
    THUMBS, ArtifactWriter, IndexConfig, IndexError_, Record, Store, build_faiss, choose_spec, cluster_labels,
    commit_update, ivf_of, make_manifest, read_manifest, recover, writer_lock,
)
from .models import registry
from .sources import Item, SourceError, expand_sources

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """One item after fetch + decode: its id-table record and model inputs (None if failed)."""

    record: Record
    prepared: list[np.ndarray] | None = None
    thumbnail: bytes | None = None


@dataclass
class BuildReport:
    path: Path
    items: int
    indexed: int
    failed: int
    failure_reasons: dict[str, int]
    index_spec: str
    seconds: float
    images_per_second: float
    failures: list[dict] = field(default_factory=list)


def default_download_config() -> DownloadConfig:
    return DownloadConfig(cache_dir=registry.cache_dir() / "downloads")


def load_item(item_id: int, item: Item, embedder: Embedder, downloader: Downloader | None) -> Loaded:
    """Fetch (if a URL) and decode one item; every failure becomes a recorded reason."""
    record = Record(id=item_id, source=item.source, meta=dict(item.meta))
    try:
        path = _fetch(item, downloader)
        record.cached_path = str(path)
        draft = max([m.backbone.preprocess.size for m in embedder.members] + [THUMBNAIL_SIZE])
        decoded = open_image(path, draft_size=draft)
        record.width, record.height, record.sha256 = decoded.width, decoded.height, decoded.sha256
        return Loaded(record, embedder.prepare(decoded.image), thumbnail_jpeg(decoded.image))
    except (ImageError, FetchFailed) as exc:
        record.status, record.error = "failed", str(exc)
        return Loaded(record)


class FetchFailed(RuntimeError):
    pass


def _fetch(item: Item, downloader: Downloader | None) -> Path:
    if not item.is_url:
        return Path(item.source)
    if downloader is None:
        raise FetchFailed("no downloader configured for URLs")
    result = downloader.fetch(item.source)
    if not result.ok:
        raise FetchFailed(result.error or "download failed")
    assert result.path is not None
    return result.path


def ordered_map(fn: Callable, items: Iterable, executor: Executor, ahead: int) -> Iterator:
    """executor.map that keeps at most `ahead` tasks in flight (bounded memory on 1M items)."""
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_local(
    items: Sequence[Item], embedder: Embedder, downloader: Downloader | None,
    batch_size: int, workers: int, on_loaded: Callable[[Loaded], None], progress: bool, first_id: int = 0,
) -> np.ndarray:
    """Embed every item as ids first_id..; returns (len(items), dim) raw features, zero rows for failures."""
    embeddings = np.zeros((len(items), embedder.dim), np.float32)
    bar = tqdm(total=len(items), unit="img", desc="indexing", disable=not progress, smoothing=0.1)
    failed = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
        loaded = ordered_map(lambda pair: load_item(pair[0], pair[1], embedder, downloader),
                             enumerate(items, first_id), pool, ahead=max(4 * batch_size, 2 * workers))
        for batch in batched(loaded, batch_size):
            good = [x for x in batch if x.prepared is not None]
            if good:
                vectors = embedder.embed_prepared([x.prepared for x in good])
                embeddings[[x.record.id - first_id for x in good]] = vectors
            for x in batch:
                on_loaded(x)
            failed += len(batch) - len(good)
            bar.update(len(batch))
            bar.set_postfix(failed=failed, refresh=False)
    bar.close()
    return embeddings


def build_index(
    sources: Sequence[str],
    out: Path | str,
    config: IndexConfig | None = None,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    download: DownloadConfig | None = None,
    embedder: Embedder | None = None,
) -> BuildReport:
    """Index every image of `sources` into the directory `out` (replaced atomically)."""
    config = config or IndexConfig()
    start = time.perf_counter()
    items = _expand_nonempty(sources)
    embedder = embedder or Embedder(config.model)
    writer = ArtifactWriter(Path(out))
    try:
        records, raw = embed_items(items, 0, embedder, writer.thumbs, batch_size=batch_size, workers=workers,
                                   progress=progress, download=download)
        return _finish(writer, records, raw, config, embedder, start)
    except BaseException:
        writer.abort()
        raise


def _expand_nonempty(sources: Sequence[str]) -> list[Item]:
    items = expand_sources(sources)
    if not items:
        raise SourceError(f"no images found in {', '.join(map(str, sources))}")
    return items


def embed_items(
    items: Sequence[Item], first_id: int, embedder: Embedder, thumbs: Path, *, batch_size: int = 32,
    workers: int | None = None, progress: bool = False, download: DownloadConfig | None = None,
) -> tuple[list[Record], np.ndarray]:
    """Fetch, decode and embed `items` as ids first_id.. ; thumbnails go to `thumbs`."""
    records: list[Record] = []

    def on_loaded(x: Loaded) -> None:
        records.append(x.record)
        if x.thumbnail is not None:
            (thumbs / f"{x.record.id}.jpg").write_bytes(x.thumbnail)

    config = download or default_download_config()
    downloader = Downloader(config) if any(i.is_url for i in items) else None
    # Downloads wait on the network, decoding on the CPU: size the pool for whichever dominates.
    workers = workers or (config.workers if downloader else max(4, (os.cpu_count() or 2) * 2))
    try:
        raw = run_local(items, embedder, downloader, batch_size, workers, on_loaded, progress, first_id)
    finally:
        if downloader is not None:
            downloader.close()
    return records, raw


def add_to_index(path: Path | str, sources: Sequence[str], *, embedder: Embedder | None = None,
                 skip_existing: bool = True, progress: bool = False, download: DownloadConfig | None = None,
                 batch_size: int = 32) -> BuildReport:
    """Add images to an existing index without rebuilding it: same PCA, same clusters, new ids."""
    path = Path(path)
    start = time.perf_counter()
    items = _expand_nonempty(sources)
    with writer_lock(path):
        manifest = read_manifest(path)
        recover(path, manifest)
        if skip_existing:
            store = Store(path)
            known = store.ids_by_source()
            store.close()
            items = [i for i in items if i.source not in known]
        embedder = embedder or Embedder(manifest["model"])
        if embedder.model != manifest["model"]:
            raise IndexError_(f"{path} was built with {manifest['model']}, not {embedder.model}")
        records, raw = embed_items(items, int(manifest["rows"]), embedder, path / THUMBS, batch_size=batch_size,
                                   progress=progress, download=download)
        manifest = commit_update(path, records, raw, [])
    return _report(path, records, manifest["index_spec"], time.perf_counter() - start)


def remove_from_index(path: Path | str, ids: Sequence[int]) -> int:
    """Remove ids from the index (their rows stay in the id table, marked removed). Returns count."""
    path = Path(path)
    with writer_lock(path):
        manifest = read_manifest(path)
        recover(path, manifest)
        store = Store(path)
        live = [i for i, r in store.records(list(ids)).items() if r["status"] == "ok"]
        store.close()
        if live:
            commit_update(path, [], np.zeros((0, int(manifest["embedding_dim"])), np.float32), live)
    return len(live)


def _finish(writer: ArtifactWriter, records: list[Record], raw: np.ndarray, config: IndexConfig,
            embedder: Embedder, start: float) -> BuildReport:
    """Reduce + index the good vectors, label clusters, write the artifact."""
    ok = np.array([r.id for r in records if r.status == "ok"], dtype=np.int64)
    spec = choose_spec(len(ok), embedder.dim, config)
    index, clusters, extra = None, None, {"clusters": 0}
    if len(ok):
        vectors = l2_normalize(raw[ok])
        index = build_faiss(vectors, ok, spec, config.nprobe)
        clusters = cluster_labels(index, vectors, config.clusters)
        for rid, label in zip(ok, clusters.labels):
            records[rid].cluster = int(label)
        extra = {"clusters": int(clusters.k), "cluster_source": clusters.source, "nprobe": _nprobe(index)}
    report = _report(writer.out_dir, records, spec, time.perf_counter() - start)
    counts = {"items": report.items, "indexed": report.indexed, "failed": report.failed, "removed": 0}
    extra["build_seconds"] = round(report.seconds, 3)
    manifest = make_manifest(config, embedder.info(), spec, embedder.dim, counts,
                             {**extra, "member_slices": embedder.member_slices,
                              "failure_reasons": report.failure_reasons})
    writer.commit(records, raw, index, manifest, clusters.centroids if clusters else None)
    log.info("indexed %d of %d images into %s (%d failed)", report.indexed, report.items, writer.out_dir,
             report.failed)
    return report


def _report(path: Path, records: list[Record], spec: str, seconds: float) -> BuildReport:
    failed = [r for r in records if r.status == "failed"]
    return BuildReport(path, len(records), len(records) - len(failed), len(failed), failure_reasons(failed), spec,
                       seconds, len(records) / seconds if seconds else 0.0,
                       [{"id": r.id, "source": r.source, "error": r.error} for r in failed[:20]])


def _nprobe(index: faiss.Index) -> int | None:
    ivf = ivf_of(index)
    return int(ivf.nprobe) if ivf is not None else None


def failure_reasons(failed: Iterable[Record]) -> dict[str, int]:
    """Failures grouped by the reason's leading phrase ('HTTP 404', 'corrupt or truncated image')."""
    counts: dict[str, int] = {}
    for r in failed:
        key = (r.error or "unknown").split(":")[0].strip()
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

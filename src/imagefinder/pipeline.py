"""Build an index: sources -> fetch -> decode/preprocess -> embed -> reduce/index -> artifact.

Stages are plain functions over items and batches (`load_item`, `Embedder.embed_prepared`);
a runner executes them (runners.py): the local one (`run_local`, below) overlaps them with a
thread pool - downloads and JPEG decoding release the GIL, so they proceed while onnxruntime
runs the previous batch on all cores - and the Ray one runs the same functions as a Ray Data
pipeline, on this machine or a cluster. Everything after the features (index choice,
training, tuning, the artifact) is the same whichever runner embedded them.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from .download import DownloadConfig, Downloader
from .embed import Embedder
from .images import THUMBNAIL_SIZE, ImageError, open_image, thumbnail_jpeg
from .index import (
    THUMBS,
    ArtifactWriter,
    Counts,
    IndexConfig,
    IndexError_,
    Record,
    Store,
    build_vectors,
    commit_update,
    drift_report,
    make_manifest,
    read_manifest,
    rebuild,
    recover,
    writer_lock,
)
from .journal import Journal, model_fingerprint
from .models import registry
from .sources import Item, SourceError, expand_sources

if TYPE_CHECKING:
    from .runners import Runner

log = logging.getLogger(__name__)

ADD_JOURNAL = "add.journal.sqlite"  # inside the index: embedded items of an `add` not yet committed


@dataclass
class Loaded:
    """One item after fetch + decode: its id-table record and model inputs (None if failed)."""

    record: Record
    prepared: list[np.ndarray] | None = None
    thumbnail: bytes | None = None
    vector: np.ndarray | None = None  # raw features, set by the runner once embedded


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
    resumed: int = 0  # items taken from an interrupted run's journal instead of embedded again


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
                for x, vector in zip(good, vectors):
                    x.vector = vector
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
    runner: Runner | None = None,
) -> BuildReport:
    """Index every image of `sources` into the directory `out` (replaced atomically).

    `runner` executes fetch/decode/embed: `LocalRunner()` (default, threads) or
    `RayRunner(address)` (runners.py); the resulting artifact is the same. Embedded items are
    journalled beside `out` as they finish, so a re-run after a crash or Ctrl-C resumes.
    """
    config = config or IndexConfig()
    start = time.perf_counter()
    items = _expand_nonempty(sources)
    embedder = embedder or Embedder(config.model)
    writer = ArtifactWriter(Path(out))
    with resume_journal(writer.journal_path, embedder) as journal:
        try:
            records, raw, resumed = embed_items(items, 0, embedder, writer.thumbs, batch_size=batch_size,
                                                workers=workers, progress=progress, download=download,
                                                runner=runner, journal=journal)
            report = _finish(writer, records, raw, config, embedder, start)
        except BaseException:
            writer.abort()
            raise
    report.resumed = resumed
    return report


@contextmanager
def resume_journal(path: Path, embedder: Embedder) -> Iterator[Journal]:
    """The journal of `embedder`'s items at `path`: kept if the block fails, deleted once it succeeds."""
    journal = Journal(path, model_fingerprint([asdict(m) for m in embedder.info()]), embedder.dim)
    try:
        yield journal
    except BaseException:
        journal.close()  # kept: the next run over these sources resumes from it
        raise
    journal.delete()


def _expand_nonempty(sources: Sequence[str]) -> list[Item]:
    items = expand_sources(sources)
    if not items:
        raise SourceError(f"no images found in {', '.join(map(str, sources))}")
    return items


def embed_items(
    items: Sequence[Item], first_id: int, embedder: Embedder, thumbs: Path, *, batch_size: int = 32,
    workers: int | None = None, progress: bool = False, download: DownloadConfig | None = None,
    runner: Runner | None = None, journal: Journal | None = None,
) -> tuple[list[Record], np.ndarray, int]:
    """Fetch, decode and embed `items` as ids first_id.. ; thumbnails go to `thumbs`.

    Items the `journal` already holds are taken from it; the others are embedded and added to
    it as they finish. Returns records, raw features (row = id - first_id) and the resumed count.
    """
    from .runners import LocalRunner

    done = journal.finished(list(items)) if journal is not None else {}
    todo = [pos for pos in range(len(items)) if pos not in done] if done else range(len(items))
    records: list[Record] = []

    def keep(record: Record, thumbnail: bytes | None) -> None:
        records.append(record)
        if thumbnail is not None:
            (thumbs / f"{record.id}.jpg").write_bytes(thumbnail)

    def on_loaded(x: Loaded) -> None:
        pos = todo[x.record.id]  # the runner numbers the items it is given from 0
        x.record.id = first_id + pos
        keep(x.record, x.thumbnail)
        if journal is not None and x.vector is not None:
            journal.add(items[pos], x.record, x.vector, x.thumbnail)

    if done:
        log.info("resuming: %d of %d images were embedded by an interrupted run", len(done), len(items))
    for pos, finished in done.items():
        finished.record.id = first_id + pos
        keep(finished.record, finished.thumbnail)
    raw = np.zeros((len(items), embedder.dim), np.float32) if done or not todo else None
    if todo:
        runner = runner or LocalRunner(workers=workers)
        embedded = runner.run([items[pos] for pos in todo], 0, embedder, download or default_download_config(),
                              batch_size, on_loaded, progress)
        if raw is None:
            raw = embedded
        else:
            raw[todo] = embedded
    if journal is not None:
        journal.flush()
    for pos, finished in done.items():
        raw[pos] = finished.vector
    records.sort(key=lambda r: r.id)  # a distributed runner hands results back in any order
    return records, raw, len(done)


def local_workers(download: DownloadConfig, has_urls: bool, workers: int | None) -> int:
    """Downloads wait on the network, decoding on the CPU: size the pool for whichever dominates."""
    return workers or (download.workers if has_urls else max(4, (os.cpu_count() or 2) * 2))


def add_to_index(path: Path | str, sources: Sequence[str], *, embedder: Embedder | None = None,
                 skip_existing: bool = True, progress: bool = False, download: DownloadConfig | None = None,
                 batch_size: int = 32, runner: Runner | None = None) -> BuildReport:
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
        embedder = embedder or Embedder.for_manifest(manifest)
        if embedder.model != manifest.model:
            raise IndexError_(f"{path} was built with {manifest.model}, not {embedder.model}")
        with resume_journal(path / ADD_JOURNAL, embedder) as journal:
            records, raw, resumed = embed_items(items, manifest.rows, embedder, path / THUMBS,
                                                batch_size=batch_size, progress=progress, download=download,
                                                runner=runner, journal=journal)
            manifest = commit_update(path, records, raw, [])
    report = _report(path, records, manifest.index_spec, time.perf_counter() - start)
    report.resumed = resumed
    return report


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
            commit_update(path, [], np.zeros((0, manifest.embedding_dim), np.float32), live)
    return len(live)


def _finish(writer: ArtifactWriter, records: list[Record], raw: np.ndarray, config: IndexConfig,
            embedder: Embedder, start: float) -> BuildReport:
    """Reduce + index the good vectors, label clusters, write the artifact."""
    return finish_artifact(writer, records, raw, config, embedder.info(), embedder.member_slices, embedder.dim, start)


def finish_artifact(writer: ArtifactWriter, records: list[Record], raw: np.ndarray, config: IndexConfig,
                    members: list, member_slices: list, dim: int, start: float) -> BuildReport:
    """Everything after the features: choose/train/tune the index (or fill the Milvus store), write."""
    ok = np.array([r.id for r in records if r.status == "ok"], dtype=np.int64)
    built = build_vectors(raw, ok, config, rows=len(records))
    extra = dict(built.fields)
    if config.store and len(ok):
        from .index import unit_rows
        from .stores import create_vector_store

        vstore = create_vector_store(config.store, dim, writer.out_dir)
        try:
            for s in range(0, len(ok), 65_536):
                vstore.insert(ok[s:s + 65_536], unit_rows(raw, ok[s:s + 65_536]))
        except BaseException:
            vstore.drop()
            raise
        extra["store"] = vstore.info
    if built.clusters is not None:
        for rid, label in zip(ok, built.clusters.labels):
            records[rid].cluster = int(label)
    report = _report(writer.out_dir, records, built.spec, time.perf_counter() - start)
    counts = Counts(items=report.items, indexed=report.indexed, failed=report.failed)
    extra["build_seconds"] = round(report.seconds, 3)
    manifest = make_manifest(config, members, built.spec, dim, counts,
                             {**extra, "member_slices": [list(s) for s in member_slices],
                              "failure_reasons": report.failure_reasons})
    try:
        writer.commit(records, raw, built.index, manifest, built.clusters.centroids if built.clusters else None)
    except BaseException:
        if extra.get("store"):
            from .stores import open_vector_store

            open_vector_store(extra["store"]).drop()
        raise
    log.info("indexed %d of %d images into %s (%s, %d failed)", report.indexed, report.items, writer.out_dir,
             built.spec, report.failed)
    return report


def index_features(out: Path | str, features: np.ndarray, config: IndexConfig | None = None, *,
                   sources: Sequence[str] | None = None, members: list | None = None) -> BuildReport:
    """An artifact from features computed elsewhere (benchmarks, migrations): no images, no thumbnails.

    `features` are raw backbone features, row = id (float16/float32, memory-mapped is fine).
    The index, tuning and manifest are built exactly as by `build_index`.
    """
    config = config or IndexConfig()
    start = time.perf_counter()
    sources = sources if sources is not None else [f"vector:{i}" for i in range(len(features))]
    records = [Record(id=i, source=str(src)) for i, src in enumerate(sources)]
    writer = ArtifactWriter(Path(out))
    try:
        return finish_artifact(writer, records, features, config, members or [], [[0, features.shape[1]]],
                               features.shape[1], start)
    except BaseException:
        writer.abort()
        raise


def rebuild_index(path: Path | str, config: IndexConfig | None = None, check: bool = False) -> dict:
    """`imagefinder rebuild`: retrain PCA / coarse quantiser from stored features, or only report drift."""
    if check:
        store = Store(path)
        try:
            return drift_report(store)
        finally:
            store.close()
    return rebuild(Path(path), config)


def _report(path: Path, records: list[Record], spec: str, seconds: float) -> BuildReport:
    failed = [r for r in records if r.status == "failed"]
    return BuildReport(path, len(records), len(records) - len(failed), len(failed), failure_reasons(r.error for r in failed), spec,
                       seconds, len(records) / seconds if seconds else 0.0,
                       [{"id": r.id, "source": r.source, "error": r.error} for r in failed[:20]])


def failure_reasons(errors: Iterable[str | None]) -> dict[str, int]:
    """Failures' errors grouped by the reason's leading phrase ('HTTP 404', 'corrupt or truncated image')."""
    return dict(Counter((error or "unknown").split(":")[0].strip() for error in errors).most_common())

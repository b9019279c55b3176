"""Build an index: sources -> fetch -> decode/preprocess -> embed -> reduce/index -> artifact.

This module orchestrates only. The stages are plain functions over items and batches
(`ingest.stages.load_item`, `Embedder.embed_prepared`); a runner executes them (runners/):
the local one overlaps them on a thread pool, the Ray one runs them as a Ray Data pipeline,
on this machine or a cluster. Around the runner: the resume journal (ingest/journal.py), and
everything after the features (index choice, training, tuning, the artifact), which is the
same whichever runner embedded them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .embed import Embedder
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
from .ingest.decode import path_text
from .ingest.download import DownloadConfig
from .ingest.journal import Journal, model_fingerprint
from .ingest.sources import Item, expand_nonempty, is_url
from .ingest.stages import Loaded
from .models import registry
from .presets import DEFAULT_PRESET, get_preset
from .runners.base import Runner
from .runners.local import LocalRunner

log = logging.getLogger(__name__)

ADD_JOURNAL = "add.journal.sqlite"  # inside the index: embedded items of an `add` not yet committed


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


def default_config(embedder: Embedder | None = None) -> IndexConfig:
    """A build's choices when none are given: the default preset's, as `imagefinder index` makes them.

    With an `embedder` the caller has chosen the model, so no preset applies.
    """
    return IndexConfig() if embedder is not None else IndexConfig.from_preset(get_preset(DEFAULT_PRESET))


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
    `RayRunner(address)` (runners/); the resulting artifact is the same. Embedded items are
    journalled beside `out` as they finish, so a re-run after a crash or Ctrl-C resumes.
    """
    config = config or default_config(embedder)
    start = time.perf_counter()
    items = expand_nonempty(sources)
    embedder = embedder or Embedder(config.model, precision=config.precision)
    writer = ArtifactWriter(Path(out))
    with resume_journal(writer.journal_path, embedder) as journal:
        try:
            records, raw, resumed = embed_items(items, 0, embedder, writer.thumbs, batch_size=batch_size,
                                                workers=workers, progress=progress, download=download,
                                                runner=runner, journal=journal)
            report = _finish(writer, records, raw, config, embedder, start, folders_of(sources))
        except BaseException:
            writer.abort()
            raise
    report.resumed = resumed
    return report


@contextmanager
def resume_journal(path: Path, embedder: Embedder) -> Iterator[Journal]:
    """The journal of `embedder`'s items at `path`: kept if the block fails, deleted once it succeeds."""
    info: list[dict] = [asdict(m) for m in embedder.info()]
    if embedder.precision != "fp32":  # (fp32 journals keep the fingerprint they had before precision existed)
        info.append({"precision": embedder.precision})
    journal = Journal(path, model_fingerprint(info), embedder.dim)
    try:
        yield journal
    except BaseException:
        journal.close()  # kept: the next run over these sources resumes from it
        raise
    journal.delete()


def embed_items(
    items: Sequence[Item], first_id: int, embedder: Embedder, thumbs: Path, *, batch_size: int = 32,
    workers: int | None = None, progress: bool = False, download: DownloadConfig | None = None,
    runner: Runner | None = None, journal: Journal | None = None,
) -> tuple[list[Record], np.ndarray, int]:
    """Fetch, decode and embed `items` as ids first_id.. ; thumbnails go to `thumbs`.

    Items the `journal` already holds are taken from it; the others are embedded and added to
    it as they finish. Returns records, raw features (row = id - first_id) and the resumed count.
    """
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
    embedded = None
    if todo:
        runner = runner or LocalRunner(workers=workers)
        embedded = runner.run([items[pos] for pos in todo], 0, embedder, download or default_download_config(),
                              batch_size, on_loaded, progress)
    if journal is not None:
        journal.flush()
    if embedded is not None and not done:
        raw = embedded  # the usual case: no copy of a (1M, dim) array
    else:
        raw = np.zeros((len(items), embedder.dim), np.float32)
        if embedded is not None:
            raw[todo] = embedded
        for pos, finished in done.items():
            raw[pos] = finished.vector
    records.sort(key=lambda r: r.id)  # a distributed runner hands results back in any order
    return records, raw, len(done)


def add_to_index(path: Path | str, sources: Sequence[str], *, embedder: Embedder | None = None,
                 skip_existing: bool = True, progress: bool = False, download: DownloadConfig | None = None,
                 batch_size: int = 32, runner: Runner | None = None) -> BuildReport:
    """Add images to an existing index without rebuilding it: same PCA, same clusters, new ids."""
    path = Path(path)
    start = time.perf_counter()
    items = expand_nonempty(sources)
    with writer_lock(path):
        manifest = read_manifest(path)
        recover(path, manifest)
        if skip_existing:
            store = Store(path)
            known = store.ids_by_source()
            store.close()
            items = [i for i in items if i.source not in known]
        embedder = embedder or Embedder.for_manifest(manifest)
        if embedder.model != manifest.model or embedder.precision != manifest.precision:
            raise IndexError_(f"{path} was built with {manifest.model} ({manifest.precision}), not {embedder.model} "
                              f"({embedder.precision})")
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


def folders_of(sources: Sequence[str]) -> list[str]:
    """The folders among `sources`, absolute: what `imagefinder sync` re-scans later."""
    return [path_text(Path(s).expanduser().resolve()) for s in sources if not is_url(s) and Path(s).expanduser().is_dir()]


def _finish(writer: ArtifactWriter, records: list[Record], raw: np.ndarray, config: IndexConfig,
            embedder: Embedder, start: float, folders: list[str] | None = None) -> BuildReport:
    """Reduce + index the good vectors, label clusters, write the artifact."""
    return finish_artifact(writer, records, raw, config, embedder.info(), embedder.member_slices, embedder.dim, start,
                           folders, precision=embedder.precision)


def finish_artifact(writer: ArtifactWriter, records: list[Record], raw: np.ndarray, config: IndexConfig,
                    members: list, member_slices: list, dim: int, start: float,
                    folders: list[str] | None = None, *, precision: str = "fp32") -> BuildReport:
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
    if folders:
        extra["folders"] = folders
    manifest = make_manifest(config, members, built.spec, dim, counts,
                             {**extra, "member_slices": [list(s) for s in member_slices], "precision": precision,
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
                   sources: Sequence[str] | None = None, members: list | None = None,
                   metas: Sequence[dict] | None = None) -> BuildReport:
    """An artifact from features computed elsewhere (benchmarks, migrations): no images, no thumbnails.

    `features` are raw backbone features, row = id (float16/float32, memory-mapped is fine);
    `metas`, one dict per row, the metadata columns recorded with them.
    The index, tuning and manifest are built exactly as by `build_index`.
    """
    config = config or IndexConfig()
    start = time.perf_counter()
    sources = sources if sources is not None else [f"vector:{i}" for i in range(len(features))]
    records = [Record(id=i, source=str(src), meta=dict(metas[i]) if metas else {}) for i, src in enumerate(sources)]
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

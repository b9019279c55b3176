"""`imagefinder sync`: bring an index in line with its folders, as rclip does on every run.

The folders are those the index was built from (recorded in its manifest) plus any given.
One scan of them finds:

- new files: embedded and added;
- changed files: modified since the last sync (or the build) *and* with other contents than
  indexed (SHA-256), so a file that was only touched is left alone: re-embedded under a new id,
  the old id removed;
- deleted files: removed.

Everything lands as one new generation through `commit_update` (index/update.py): a crash
leaves the index as it was, and embedded items are journalled so a re-run resumes. A recorded
folder that is missing (an unmounted disk) stops the sync instead of removing its images.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .embed import Embedder
from .index import THUMBS, IndexError_, Store, commit_update, read_manifest, recover, writer_lock
from .index.manifest import write_manifest
from .ingest.sources import Item, expand_sources
from .pipeline import embed_items, folders_of, resume_journal

SYNC_JOURNAL = "sync.journal.sqlite"  # inside the index: embedded items of a sync not yet committed
MTIME_SLACK_S = 2.0  # file systems with coarse timestamps (FAT: 2 s) must not hide a change


class SyncError(IndexError_):
    """A sync that cannot run as asked; the message says why and what to do."""


@dataclass
class SyncReport:
    folders: list[str]
    added: int = 0  # new files indexed
    changed: int = 0  # files re-embedded (their old id removed)
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync_index(path: Path | str, folders: Sequence[str] = (), *, embedder: Embedder | None = None,
               progress: bool = False, dry_run: bool = False) -> SyncReport:
    """Re-scan the index's folders (and `folders`): add new files, re-embed changed ones, remove deleted ones."""
    path = Path(path)
    start = time.perf_counter()
    with writer_lock(path):
        manifest = read_manifest(path)
        recover(path, manifest)
        scanned = _folders(path, list(manifest.folders or []), folders)
        since = manifest.synced_at if manifest.synced_at is not None else _build_time(path)
        scan_started = time.time()  # before the scan: a file changed while it runs is checked next time
        store = Store(path)
        try:
            indexed = {s: i for s, i in store.ids_by_source().items() if _under(s, scanned)}
            on_disk = [item for folder in scanned for item in expand_sources([folder])]
            changed = _changed(store, indexed, on_disk, since)
        finally:
            store.close()
        present = {item.source for item in on_disk}
        new = [item for item in on_disk if item.source not in indexed]
        gone = [i for s, i in indexed.items() if s not in present]
        report = SyncReport(scanned, changed=len(changed), removed=len(gone),
                            unchanged=len(present) - len(new) - len(changed))
        report.added = len(new)
        if not dry_run and (new or changed or gone):
            failed = _commit(path, new + list(changed), gone + list(changed.values()), embedder, progress)
            report.failed, report.failures = len(failed), failed[:20]
            failed_new = {f["source"] for f in failed} & {item.source for item in new}
            report.added -= len(failed_new)
        if not dry_run:  # the folders and the scan time, for the next sync
            latest = read_manifest(path)
            write_manifest(path, latest.replace(folders=scanned, synced_at=scan_started))
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _folders(path: Path, recorded: list[str], given: Sequence[str]) -> list[str]:
    for folder in given:
        if not Path(folder).expanduser().is_dir():
            raise SyncError(f"{folder}: not a folder")
    folders = list(dict.fromkeys([*recorded, *folders_of(list(given))]))
    if not folders:
        raise SyncError(f"{path} records no folders to sync (it was built from files, a CSV, URLs or by an older "
                        "ImageFinder): name them once, `imagefinder sync INDEX FOLDER...`, and they are recorded")
    missing = [f for f in folders if not Path(f).is_dir()]
    if missing:
        raise SyncError(f"folder {missing[0]} is missing (an unmounted disk?): nothing was changed; mount it, or "
                        "rebuild the index without it")
    return folders


def _under(source: str, folders: list[str]) -> bool:
    return any(source.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)


def _build_time(path: Path) -> float:
    """When the index was first built: files modified after it are checked for changes."""
    created = read_manifest(path).created_at
    try:
        return datetime.fromisoformat(created).timestamp()
    except ValueError:
        return 0.0  # unknown: every file is checked (by content, so nothing is re-embedded needlessly)


def _changed(store: Store, indexed: dict[str, int], on_disk: list[Item], since: float) -> dict[Item, int]:
    """Indexed files modified since `since` whose contents differ from what was indexed (-> their old id)."""
    candidates: dict[Item, int] = {}
    for item in on_disk:
        image_id = indexed.get(item.source)
        if image_id is None:
            continue
        try:
            modified = os.stat(_file(item.source)).st_mtime
        except OSError:
            continue
        if modified >= since - MTIME_SLACK_S:
            candidates[item] = image_id
    if not candidates:
        return {}
    records = store.records(list(candidates.values()))
    return {item: i for item, i in candidates.items() if records.get(i, {}).get("sha256") != _sha256(item.source)}


def _file(source: str) -> Path:
    # a name recorded with \xNN escapes (not UTF-8) does not stat: it is never seen as changed
    return Path(source)


def _sha256(source: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(_file(source), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _commit(path: Path, items: list[Item], remove: list[int], embedder: Embedder | None,
            progress: bool) -> list[dict[str, Any]]:
    """Embed `items` as new ids and remove `remove`, as one generation; the items that failed."""
    manifest = read_manifest(path)
    embedder = embedder or Embedder.for_manifest(manifest)
    if embedder.model != manifest.model or embedder.precision != manifest.precision:
        raise SyncError(f"{path} was built with {manifest.model} ({manifest.precision}), not {embedder.model} "
                        f"({embedder.precision})")
    with resume_journal(path / SYNC_JOURNAL, embedder) as journal:
        if items:
            records, raw, _ = embed_items(items, manifest.rows, embedder, path / THUMBS, progress=progress,
                                          journal=journal)
        else:
            records, raw = [], np.zeros((0, manifest.embedding_dim), np.float32)
        commit_update(path, records, raw, sorted(set(remove)))
    return [{"source": r.source, "error": r.error} for r in records if r.status != "ok"]


"""Resume journal: what an interrupted ingest already finished, so a re-run does only the rest.

Downloads are cached already (ingest/download.py); this keeps the expensive part, the embedding.
Every embedded item - its id-table record, raw feature vector and thumbnail - is written to
a small SQLite file beside the index as it is produced, committed every few items, so a
crash, kill -9 or Ctrl-C loses at most the last few seconds of work. A re-run over the same
sources with the same model takes those items from the journal instead of embedding them
again; the journal is deleted once the index that holds them is committed.

Items are keyed by source, plus size and modification time for local files (an edited file
is embedded again). A journal written for another model (weights, preprocessing or pooling)
is discarded. Failed items are not journalled: a re-run retries them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..index import Record
from .sources import Item

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 1.0  # at most this much finished work is lost to a crash
COMMIT_EVERY_ITEMS = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, record TEXT NOT NULL, vector BLOB NOT NULL,
                                 thumbnail BLOB);
"""


@dataclass
class Finished:
    """One item taken from the journal: everything `embed_items` would have produced for it."""

    record: Record
    vector: np.ndarray
    thumbnail: bytes | None


def item_key(item: Item) -> str | None:
    """Source, plus size and mtime for files; None when a file cannot be stat'ed (not journalled)."""
    if item.is_url:
        return item.source
    try:
        st = os.stat(item.source)
    except OSError:
        return None
    return f"{item.source}\0{st.st_size}\0{st.st_mtime_ns}"


def model_fingerprint(embedder_info: list[dict]) -> str:
    return hashlib.sha256(json.dumps(embedder_info, sort_keys=True).encode()).hexdigest()


class Journal:
    def __init__(self, path: Path, fingerprint: str, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._pending: list[tuple] = []
        self._last_commit = time.monotonic()
        try:
            self._con = self._open()
        except sqlite3.DatabaseError as exc:  # not a journal (or damaged beyond SQLite's recovery): start afresh
            log.warning("discarding unreadable %s: %s", self.path, exc)
            self._remove_files()
            self._con = self._open()
        row = self._con.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        with self._con:
            if row is not None and row[0] != fingerprint:
                log.info("discarding %s: it was written for another model", self.path)
                self._con.execute("DELETE FROM done")
            self._con.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (fingerprint,))

    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, check_same_thread=False)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; fsyncs only at checkpoints
            con.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            con.close()
            raise
        return con

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def __len__(self) -> int:
        return self._con.execute("SELECT COUNT(*) FROM done").fetchone()[0]

    def finished(self, items: list[Item]) -> dict[int, Finished]:
        """Position in `items` -> what the journal holds for it."""
        found: dict[int, Finished] = {}
        if not len(self):  # the usual case: nothing to look up, item by item, in a million
            return found
        for pos, item in enumerate(items):
            key = item_key(item)
            if key is None:
                continue
            row = self._con.execute("SELECT record, vector, thumbnail FROM done WHERE key = ?", (key,)).fetchone()
            if row is None:
                continue
            vector = np.frombuffer(row[1], np.float32)
            if vector.shape != (self.dim,):
                continue
            record = Record(**json.loads(row[0]))
            record.meta = dict(item.meta)  # the listing's metadata may have changed; it is not embedded
            found[pos] = Finished(record, vector, row[2])
        return found

    def add(self, item: Item, record: Record, vector: np.ndarray, thumbnail: bytes | None) -> None:
        key = item_key(item)
        if key is None or record.status != "ok":
            return
        self._pending.append((key, json.dumps(asdict(record)), np.asarray(vector, np.float32).tobytes(), thumbnail))
        if len(self._pending) >= COMMIT_EVERY_ITEMS or time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            with self._con:
                self._con.executemany("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?)", self._pending)
            self._pending.clear()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Keep what was finished for the next run (an empty journal is not kept)."""
        self.flush()
        if not len(self):
            self.delete()
        else:
            self._con.close()

    def delete(self) -> None:
        """After the index holding these items is committed."""
        self._con.close()
        self._remove_files()

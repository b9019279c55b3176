"""items.sqlite, the id table: one class owns every SQL statement on it.

A row per item id: source, cached file, size, sha256, status/error, cluster, metadata, and
the generations in which it was added / removed (rows of later generations are uncommitted,
see update.py). The schema version is SQLite's `PRAGMA user_version`; opening a table for
writing brings it up to SCHEMA_VERSION through MIGRATIONS, one step at a time. Readers open it
read-only (never writing the file) and accept any version up to SCHEMA_VERSION.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .filters import Condition, Filter
from .layout import IndexError_

log = logging.getLogger(__name__)

_CREATE = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    cached_path TEXT, width INTEGER, height INTEGER, sha256 TEXT, cluster INTEGER, meta TEXT,
    added_gen INTEGER NOT NULL DEFAULT 0, removed_gen INTEGER
);
CREATE INDEX IF NOT EXISTS items_status ON items(status);
CREATE INDEX IF NOT EXISTS items_sha ON items(sha256);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
"""
_COLUMNS = "id, source, status, error, cached_path, width, height, sha256, cluster, meta, added_gen"


@dataclass
class Record:
    """One row of the id table."""

    id: int
    source: str
    status: str = "ok"  # ok | failed | removed
    error: str | None = None
    cached_path: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    cluster: int | None = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Record:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["meta"] = json.loads(row["meta"]) if row["meta"] else {}
        return cls(**values)


def _v0_to_v1(con: sqlite3.Connection) -> None:
    """Version 0 (no user_version): tables written before versioning; generations may be missing."""
    con.executescript(_CREATE.split(";")[0])
    have = {r[1] for r in con.execute("PRAGMA table_info(items)")}
    if "added_gen" not in have:
        con.execute("ALTER TABLE items ADD COLUMN added_gen INTEGER NOT NULL DEFAULT 0")
    if "removed_gen" not in have:
        con.execute("ALTER TABLE items ADD COLUMN removed_gen INTEGER")
    con.executescript(_CREATE)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _v0_to_v1}  # from version N to N+1
SCHEMA_VERSION = 1


def _visible(generation: int) -> str:
    """SQL condition for rows that exist in `generation` (later ones are uncommitted)."""
    return f"added_gen <= {int(generation)} AND (removed_gen IS NULL OR removed_gen > {int(generation)})"


def _condition_sql(c: Condition, v: str) -> tuple[str, list[Any]]:
    """One metadata condition on the column `v` (the value as text, NULL when the row lacks it)."""
    if c.op == "=":
        return f"{v} = ?", [c.value]
    if c.op == "!=":  # rows without the column are "not equal" too
        return f"{v} IS NOT ?", [c.value]
    if c.number is None:  # text order (ISO dates sort as dates)
        return f"{v} {c.op} ?", [c.value]
    # numbers: only values that look like one (CAST would read 'abc' as 0)
    return f"({v} GLOB '*[0-9]*' AND {v} NOT GLOB '*[^0-9.eE+-]*' AND CAST({v} AS REAL) {c.op} ?)", [c.number]


def filtered_ids_sql(visible: str, flt: Filter) -> tuple[str, list[Any]]:
    """SELECT of the ids `flt` matches among rows where `visible` holds, ascending.

    Each condition's value is extracted from the JSON once per row, in a materialised CTE
    (a numeric test reads it three times; SQLite would re-parse the JSON for each). The JSON
    path is a parameter, never spliced into the SQL."""
    columns, column_params, conditions, params = [], [], [], []
    if flt.source_prefix:
        conditions.append("substr(source, 1, ?) = ?")
        params += [len(flt.source_prefix), flt.source_prefix]
    for i, condition in enumerate(flt.conditions):
        columns.append(f", trim(CAST(json_extract(meta, ?) AS TEXT)) AS c{i}")
        column_params.append(f'$."{condition.column}"')
        sql, values = _condition_sql(condition, f"c{i}")
        conditions.append(sql)
        params += values
    where = " AND ".join(conditions) or "1"
    # MATERIALIZED: SQLite >= 3.35 (Debian 12 has 3.40)
    cte = f"WITH m AS MATERIALIZED (SELECT id, source{''.join(columns)} FROM items WHERE {visible})"
    return f"{cte} SELECT id FROM m WHERE {where} ORDER BY id", [*column_params, *params]


def _is_hot_journal(exc: sqlite3.OperationalError) -> bool:
    return "readonly database" in str(exc)


def roll_back_hot_journal(db: Path) -> None:
    """A writer killed mid-transaction leaves a journal that a read-only connection cannot roll back
    (it fails with 'attempt to write a readonly database'); a writable one does so on its first read.
    SQLite only treats the journal as hot when no live writer holds the database, so this is safe."""
    log.warning("rolling back the unfinished transaction of a crashed writer in %s", db)
    con = sqlite3.connect(db)
    try:
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()
    finally:
        con.close()


class Items:
    """The id table of one index: typed rows in, typed rows out; reads are thread-safe."""

    def __init__(self, db: Path, *, readonly: bool = True) -> None:
        self.db = Path(db)
        self._lock = threading.Lock()
        if readonly:
            self._con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._con = sqlite3.connect(self.db, check_same_thread=False)
        self._con.row_factory = sqlite3.Row
        version = self.version()
        if version > SCHEMA_VERSION:
            self._con.close()
            raise IndexError_(f"{self.db}: id table version {version} is newer than this ImageFinder "
                              f"reads ({SCHEMA_VERSION}); upgrade ImageFinder")
        if not readonly:
            self._migrate(version)

    @classmethod
    @contextmanager
    def writer(cls, db: Path) -> Iterator[Items]:
        """A writable table (created or migrated to SCHEMA_VERSION), closed on exit."""
        items = cls(db, readonly=False)
        try:
            yield items
        finally:
            items.close()

    def _migrate(self, version: int) -> None:
        if version == 0 and not self._query("SELECT name FROM sqlite_master WHERE name='items'"):
            self._con.executescript(_CREATE)  # a new table: created at the current version directly
            version = SCHEMA_VERSION
        while version < SCHEMA_VERSION:
            log.info("migrating %s from version %d", self.db, version)
            MIGRATIONS[version](self._con)
            version += 1
        with self._con:
            self._con.execute(f"PRAGMA user_version = {int(version)}")

    def version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._con.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_hot_journal(exc):
                    raise
                roll_back_hot_journal(self.db)
                return self._con.execute(sql, params).fetchall()

    def close(self) -> None:
        self._con.close()

    # --- writing ---------------------------------------------------------------------------

    def insert(self, records: Sequence[Record], generation: int) -> None:
        with self._lock, self._con:
            self._con.executemany(
                f"INSERT INTO items ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(r.id, r.source, r.status, r.error, r.cached_path, r.width, r.height, r.sha256,
                  r.cluster, json.dumps(r.meta) if r.meta else None, generation) for r in records])

    def mark_removed(self, ids: Sequence[int], generation: int) -> None:
        with self._lock, self._con:
            self._con.executemany("UPDATE items SET removed_gen = ? WHERE id = ? AND removed_gen IS NULL",
                                  [(generation, int(i)) for i in ids])

    def set_clusters(self, ids: np.ndarray, labels: np.ndarray) -> None:
        with self._lock, self._con:
            self._con.executemany("UPDATE items SET cluster = ? WHERE id = ?",
                                  zip((int(x) for x in labels), (int(i) for i in ids)))

    def discard_after(self, generation: int) -> list[int]:
        """Undo rows written past the committed `generation`; returns the ids that generation removed."""
        with self._lock, self._con:
            self._con.execute("DELETE FROM items WHERE added_gen > ?", (generation,))
            self._con.execute("UPDATE items SET removed_gen = NULL WHERE removed_gen > ?", (generation,))
        return [r[0] for r in self._query("SELECT id FROM items WHERE removed_gen = ?", (generation,))]

    # --- reading one generation ------------------------------------------------------------

    def records(self, ids: Sequence[int], generation: int) -> dict[int, Record]:
        """Visible rows by id (failed ones included: their status says so)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT * FROM items WHERE id IN ({marks}) AND {_visible(generation)}",
                           [int(i) for i in ids])
        return {row["id"]: Record.from_row(row) for row in rows}

    def failures(self, generation: int, limit: int | None = 20) -> list[Record]:
        """Failed rows by id; all of them when `limit` is None."""
        rows = self._query(f"SELECT * FROM items WHERE status='failed' AND {_visible(generation)} "
                           "ORDER BY id LIMIT ?", (-1 if limit is None else limit,))
        return [Record.from_row(r) for r in rows]

    def ids_by_source(self, generation: int) -> dict[str, int]:
        rows = self._query(f"SELECT id, source FROM items WHERE status='ok' AND {_visible(generation)}")
        return {s: i for i, s in rows}

    def live_ids(self, generation: int, since: int = 0, limit: int | None = None) -> np.ndarray:
        """Ids of indexed images (id >= since), ascending; the `limit` most recent if given."""
        sql = f"SELECT id FROM items WHERE status='ok' AND id >= ? AND {_visible(generation)} ORDER BY id"
        if limit is not None:
            sql = f"SELECT id FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY id"
        return np.array([r[0] for r in self._query(sql, (int(since),))], np.int64)

    def matching_ids(self, generation: int, flt: Filter) -> np.ndarray:
        """Ids of indexed images that `flt` matches, ascending (what a filtered search ranks)."""
        sql, params = filtered_ids_sql(f"status='ok' AND {_visible(generation)}", flt)
        return np.array([r[0] for r in self._query(sql, params)], np.int64)

    def page(self, generation: int, offset: int, limit: int) -> tuple[int, list[Record]]:
        """(how many indexed images there are, `limit` of them from `offset`), newest (highest id) first."""
        base = f"FROM items WHERE status='ok' AND {_visible(generation)}"
        total = int(self._query(f"SELECT COUNT(*) {base}")[0][0])
        rows = self._query(f"SELECT * {base} ORDER BY id DESC LIMIT ? OFFSET ?", [int(limit), int(offset)])
        return total, [Record.from_row(r) for r in rows]

    def rows_of_generation(self, generation: int) -> int:
        """Rows (ids handed out) as of `generation`: the training size of indexes that predate its recording."""
        row = self._query("SELECT COALESCE(MAX(id) + 1, 0) FROM items WHERE added_gen <= ?", (int(generation),))
        return int(row[0][0])

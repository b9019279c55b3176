"""The on-disk format of an index: manifest versions and migrations, the id table's schema
versions, and the VectorIndex protocol that the FAISS searcher and the Milvus store share."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from imagefinder.embed import l2_normalize
from imagefinder.errors import ImageFinderError
from imagefinder.index import (
    IndexConfig,
    IndexError_,
    Manifest,
    Record,
    Store,
    VectorIndex,
    commit_update,
    read_manifest,
)
from imagefinder.index.items import SCHEMA_VERSION, Items
from imagefinder.index.manifest import FORMAT_VERSION
from imagefinder.index.searcher import Searcher
from imagefinder.pipeline import index_features, remove_from_index
from imagefinder.pooling import Pooling
from imagefinder.search import SearchSpace, search

# A manifest as ImageFinder wrote it before pooling was recorded (format 1, trimmed of versions).
OLD_MANIFEST = {
    "format_version": 1, "created_at": "2026-05-02T10:11:12+00:00", "model": "efficientnet-lite0",
    "members": [{"name": "efficientnet-lite0", "dim": 1280, "weights_sha256": "ab" * 32,
                 "preprocess": {"size": 224, "mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502]}}],
    "embedding_dim": 1280, "index_spec": "Flat",
    "config": {"model": "efficientnet-lite0", "pca": None, "whiten": False, "clusters": None, "spec": None,
               "nprobe": None},
    "counts": {"items": 12, "indexed": 11, "failed": 1}, "versions": {"imagefinder": "0.0.9"},
    "clusters": 3, "cluster_source": "kmeans", "nprobe": None, "rerank": None, "metric": "ip",
    "member_slices": [[0, 1280]], "generation": 2, "rows": 12, "trained_rows": 10,
}


def test_a_manifest_without_recorded_pooling_migrates_to_average_pooling() -> None:
    m = Manifest.from_dict(OLD_MANIFEST)
    assert m.format_version == FORMAT_VERSION > 1
    assert m.members[0]["pooling"] == Pooling("avg").to_dict(), "old indexes were embedded with average pooling"
    assert Pooling.from_dict(m.members[0]["pooling"]) == Pooling()
    assert (m.generation, m.rows, m.counts.indexed, m.counts.removed) == (2, 12, 11, 0)
    assert m.config.target_recall == IndexConfig().target_recall, "config entries added later get defaults"
    assert m.extra == {"trained_rows": 10}, "entries this version does not model are kept"
    # a recorded pooling is left alone
    gem = {**OLD_MANIFEST, "members": [{**OLD_MANIFEST["members"][0], "pooling": Pooling("gem", 2.0).to_dict()}]}
    assert Pooling.from_dict(Manifest.from_dict(gem).members[0]["pooling"]) == Pooling("gem", 2.0)


def test_migrated_and_current_manifests_round_trip(tmp_path: Path) -> None:
    migrated = Manifest.from_dict(OLD_MANIFEST)
    assert Manifest.from_json(migrated.to_json()) == migrated
    assert migrated.to_dict()["trained_rows"] == 10 and migrated.to_dict()["format_version"] == FORMAT_VERSION
    # a manifest written today comes back byte for byte through the typed form
    rng = np.random.default_rng(0)
    index_features(tmp_path / "idx", rng.normal(size=(300, 16)).astype(np.float32), IndexConfig(clusters=4))
    text = (tmp_path / "idx" / "manifest.json").read_text()
    current = read_manifest(tmp_path / "idx")
    assert current.format_version == FORMAT_VERSION and current.cluster_source == "ivf" and current.nprobe == 4
    assert current.to_json() == text
    assert Manifest.from_json(text) == current


def test_an_old_index_on_disk_is_read_and_updated_at_the_current_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "idx"
    index_features(path, rng.normal(size=(50, 8)).astype(np.float32))
    data = json.loads((path / "manifest.json").read_text())
    data["format_version"] = 1
    data["members"] = [{"name": "efficientnet-lite0", "dim": 8}]  # no pooling recorded
    (path / "manifest.json").write_text(json.dumps(data))
    store = Store(path)
    assert store.manifest.members[0]["pooling"] == Pooling().to_dict() and store.ntotal == 50
    store.close()
    removed = Store(path).live_ids()[:2].tolist()
    assert remove_from_index(path, removed) == 2
    written = json.loads((path / "manifest.json").read_text())
    assert written["format_version"] == FORMAT_VERSION and written["members"][0]["pooling"]["method"] == "avg"


def test_unknown_manifest_versions_are_refused_clearly() -> None:
    for version in (FORMAT_VERSION + 1, 0, None, "2"):
        with pytest.raises(IndexError_, match=f"index format {version} is not supported"):
            Manifest.from_dict({**OLD_MANIFEST, "format_version": version})
    assert issubclass(IndexError_, ImageFinderError) and issubclass(IndexError_, RuntimeError)
    with pytest.raises(IndexError_, match="incomplete manifest"):
        Manifest.from_dict({"format_version": FORMAT_VERSION, "model": "m"})


def _old_items_table(db: Path) -> None:
    """items.sqlite as written before generations and user_version (schema version 0)."""
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, source TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
            cached_path TEXT, width INTEGER, height INTEGER, sha256 TEXT, cluster INTEGER, meta TEXT);
        INSERT INTO items (id, source, status, width, meta) VALUES (0, 'a.jpg', 'ok', 640, '{"tag": "x"}');
        INSERT INTO items (id, source, status, error) VALUES (1, 'b.jpg', 'failed', 'HTTP 404: gone');
    """)
    con.commit()
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()


def test_an_old_id_table_migrates_by_user_version(tmp_path: Path) -> None:
    db = tmp_path / "items.sqlite"
    _old_items_table(db)
    with Items.writer(db) as items:
        assert items.version() == SCHEMA_VERSION == 1
        items.insert([Record(id=2, source="c.jpg", cluster=4)], generation=1)
        items.mark_removed([0], generation=1)
    con = sqlite3.connect(db)
    columns = {r[1] for r in con.execute("PRAGMA table_info(items)")}
    assert {"added_gen", "removed_gen"} <= columns
    assert {r[1] for r in con.execute("PRAGMA index_list(items)")} >= {"items_status", "items_sha", "items_source"}
    con.close()
    reader = Items(db)
    old = reader.records([0, 1, 2], generation=0)
    assert old[0] == Record(id=0, source="a.jpg", width=640, meta={"tag": "x"}), "rows survive, typed"
    assert old[1].status == "failed" and 2 not in old, "generation 1 is not visible at generation 0"
    assert reader.live_ids(generation=1).tolist() == [2] and reader.failures(generation=1)[0].source == "b.jpg"
    reader.close()


def test_a_new_table_starts_at_the_current_version_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "items.sqlite"
    with Items.writer(db) as items:
        assert items.version() == SCHEMA_VERSION
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(IndexError_, match="newer than this ImageFinder"):
        Items(db)


def test_the_faiss_searcher_and_the_milvus_store_are_one_vector_index(tmp_path: Path) -> None:
    pytest.importorskip("milvus_lite", reason="needs `pip install milvus-lite==3.2.2`")
    from imagefinder.stores import create_vector_store, open_vector_store

    rng = np.random.default_rng(5)
    vectors = l2_normalize(rng.normal(size=(200, 24)).astype(np.float32))
    ids = np.arange(200, dtype=np.int64) * 3  # ids are item ids, not positions
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(24))
    flat.add_with_ids(vectors, ids)
    milvus = create_vector_store(str(tmp_path / "vectors.db"), 24, tmp_path / "idx")
    try:
        milvus.insert(ids, vectors)
        milvus = open_vector_store(milvus.info)
        faiss_side = Searcher(flat)
        for index in (faiss_side, milvus):
            assert isinstance(index, VectorIndex)
            assert index.d == 24 and index.ntotal == 200
        assert not isinstance(object(), VectorIndex) and not isinstance(vectors, VectorIndex)
        queries = vectors[[4, 50, 199]] + 0.01 * rng.normal(size=(3, 24)).astype(np.float32)
        (fs, fi), (ms, mi) = faiss_side.search(queries, 5), milvus.search(queries, 5)
        np.testing.assert_array_equal(fi, mi)
        np.testing.assert_allclose(fs, ms, atol=1e-4)
        assert fi[:, 0].tolist() == [12, 150, 597]
        # and search.py ranks the same through either
        spaces = [SearchSpace(index, vectors, [(0, 24)], True) for index in (faiss_side, milvus)]
        hits = [search(space, queries, 5) for space in spaces]
        assert [[h.id for h in row] for row in hits[0]] == [[h.id for h in row] for row in hits[1]]
    finally:
        milvus.drop()


def test_an_index_gains_rows_through_the_typed_path(tmp_path: Path) -> None:
    """add goes through Items.insert and Manifest.stamped: counts, rows and generation move together."""
    rng = np.random.default_rng(2)
    path = tmp_path / "idx"
    features = rng.normal(size=(30, 8)).astype(np.float32)
    index_features(path, features)
    m = commit_update(path, [Record(id=30, source="new"), Record(id=31, source="bad", status="failed")],
                      rng.normal(size=(2, 8)).astype(np.float32), [3])
    assert (m.generation, m.rows, m.counts.items, m.counts.indexed, m.counts.failed, m.counts.removed) == \
           (1, 32, 32, 30, 1, 1)
    assert m.updated_at is not None and read_manifest(path) == m

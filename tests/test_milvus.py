"""The Milvus vector store, on Milvus Lite (a local file): same results contract as FAISS.

The same code reaches a Milvus cluster with `--store milvus://host:19530`; Milvus Lite is the
embedded test double (see DESIGN.md), so only FLAT (exact) search is compared here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="needs `pip install pymilvus==3.0.2 milvus-lite==3.2.2`")
pytest.importorskip("milvus_lite", reason="needs `pip install milvus-lite==3.2.2`")

from imagefinder import ImageFinder, IndexConfig, build_index
from imagefinder.index import read_manifest, recover
from imagefinder.pipeline import add_to_index, remove_from_index
from imagefinder.stores import open_vector_store


@pytest.fixture(scope="module")
def milvus_index(small_index, embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's 40 UKBench images again, vectors in a Milvus Lite file."""
    root = tmp_path_factory.mktemp("milvus")
    sources = [str(Path(s).parent) for s in small_index.sources[:1]]
    report = build_index(sources, root / "index", IndexConfig(store=str(root / "vectors.db")), embedder=embedder)
    assert report.indexed == 40
    return root / "index"


def _same_up_to_ties(a: list, b: list, tol: float = 1e-5) -> bool:
    """Same ids in the same order, except that ids with equal scores may swap."""
    if [r.id for r in a] == [r.id for r in b]:
        return True
    sa = [round(r.score / tol) for r in a]
    return sorted(zip(sa, [r.id for r in a])) == sorted(zip([round(r.score / tol) for r in b], [r.id for r in b]))


def test_manifest_names_the_collection_and_no_faiss_file_is_written(milvus_index: Path) -> None:
    m = read_manifest(milvus_index)
    store = m.store
    assert store["kind"] == "milvus" and store["uri"].endswith("vectors.db") and store["index_type"] == "FLAT"
    assert store["collection"].startswith("imagefinder_") and store["dim"] == 1280
    assert m.index_spec == "Flat" and m.counts.indexed == 40
    assert not list(milvus_index.glob("vectors.*.faiss"))
    assert (milvus_index / "embeddings.f16").is_file() and len(list((milvus_index / "thumbs").iterdir())) == 40


def test_milvus_and_faiss_flat_give_the_same_ranking(milvus_index: Path, small_index) -> None:
    assert_ranks_like_faiss_flat(milvus_index, small_index)


def assert_ranks_like_faiss_flat(milvus_index: Path, small_index) -> None:
    """Every image as a query: same ids and order as FAISS Flat (ties aside); also on tests/test_milvus_server.py."""
    faiss_finder, milvus_finder = ImageFinder(small_index.path), ImageFinder(milvus_index)
    try:
        assert type(milvus_finder.store.index).__name__ == "MilvusVectors"
        assert milvus_finder.store.ntotal == 40
        for i in range(40):
            a = faiss_finder.search_id(i, k=10)
            b = milvus_finder.search_id(i, k=10)
            assert _same_up_to_ties(a, b), (i, [r.id for r in a], [r.id for r in b])
            assert np.allclose([r.score for r in a], [r.score for r in b], atol=1e-4)
            assert [r.source for r in a][:1] == [r.source for r in b][:1]
        for metric in ("euclidean", "vote"):
            assert [r.id for r in faiss_finder.search_id(3, k=5, metric=metric)] == \
                   [r.id for r in milvus_finder.search_id(3, k=5, metric=metric)]
    finally:
        faiss_finder.close()
        milvus_finder.close()


def test_add_and_remove_update_the_collection(milvus_index: Path, ukbench_dir: Path, embedder, tmp_path: Path) -> None:
    assert_add_and_remove(milvus_index, ukbench_dir, embedder, tmp_path)


def assert_add_and_remove(milvus_index: Path, ukbench_dir: Path, embedder, tmp_path: Path) -> None:
    """Two images added, found, then one of them and id 5 removed (the 40-image index)."""
    new = tmp_path / "new"
    new.mkdir()
    for n in (40, 41):
        (new / f"ukbench{n:05d}.jpg").write_bytes((ukbench_dir / "images" / f"ukbench{n:05d}.jpg").read_bytes())
    report = add_to_index(milvus_index, [str(new)], embedder=embedder)
    assert report.indexed == 2
    f = ImageFinder(milvus_index)
    try:
        hit = f.search(new / "ukbench00041.jpg", k=1)[0]
        assert hit.id in (40, 41) and Path(hit.source).name == "ukbench00041.jpg"
        assert f.store.ntotal == 42
    finally:
        f.close()
    assert remove_from_index(milvus_index, [hit.id, 5]) == 2
    f = ImageFinder(milvus_index)
    try:
        ids = [r.id for r in f.search(new / "ukbench00041.jpg", k=42)]
        assert hit.id not in ids and 5 not in ids and len(ids) == 40
    finally:
        f.close()


def test_uncommitted_inserts_are_invisible_and_recover_deletes_them(milvus_index: Path) -> None:
    m = read_manifest(milvus_index)
    rows = int(m.rows)
    vs = open_vector_store(m.store)
    stray = np.random.default_rng(0).random((3, 1280)).astype(np.float32)
    stray /= np.linalg.norm(stray, axis=1, keepdims=True)
    vs.insert(np.arange(rows, rows + 3), stray)  # as if a crash came before the manifest commit
    f = ImageFinder(milvus_index)
    try:
        assert all(r.id < rows for r in f.search_vectors(stray[:1], k=5)[0]), "readers never see ids past `rows`"
    finally:
        f.close()
    recover(milvus_index, m)
    _, ids = open_vector_store(m.store).search(stray, 3)
    assert not set(ids.ravel()) & {rows, rows + 1, rows + 2}


def test_cli_store_option_and_info(small_index, tmp_path: Path, cli) -> None:
    folder = Path(small_index.sources[0]).parent
    proc = cli("index", folder, "--out", tmp_path / "idx", "--store", tmp_path / "v.db", "--json", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["indexed"] == 40
    proc = cli("search", tmp_path / "idx", small_index.sources[8], "-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["results"][0]["source"] == small_index.sources[8]
    proc = cli("rebuild", tmp_path / "idx")
    assert proc.returncode == 2 and "Milvus" in proc.stderr

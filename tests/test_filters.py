"""Metadata filters inside the vector search: a filter matching only images far down the ranking
still returns k results (a post-filter of the top k would return none), for every index type.

Synthetic features (the ranking is known exactly in advance), written as real index
artifacts through `index_features`, searched through `ImageFinder.search_vectors`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.index import searcher as searcher_mod
from imagefinder.index.filters import Filter, FilterError
from imagefinder.pipeline import index_features

N, DIM, K, FAR = 3000, 32, 10, 40


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[dict]]:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((30, DIM))
    x = unit(centres[rng.integers(0, 30, N)] + 0.4 * rng.standard_normal((N, DIM)))
    order = np.argsort(-(x @ x[0]), kind="stable")  # the exact ranking for the query x[0]
    far = set(order[-FAR:].tolist())  # the FAR images least like the query
    metas = [{"tier": "far" if i in far else "near", "n": str(i), "day": f"2024-01-{1 + i % 28:02d}"}
             for i in range(N)]
    return x, order, metas


@pytest.mark.parametrize("subset_exact", [True, False], ids=["few-matches-exact", "faiss-selector"])
@pytest.mark.parametrize("spec", ["Flat", "IVF32,Flat", "PCA16,L2norm,IVF32,Flat", "HNSW16", "IVF32,PQ8np"])
def test_a_filter_matching_only_the_bottom_of_the_ranking_still_returns_k(
        tmp_path: Path, data, spec: str, subset_exact: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths: a filter matching few images scored exactly, and the FAISS id selector itself."""
    x, order, metas = data
    if not subset_exact:
        monkeypatch.setattr(searcher_mod, "SUBSET_EXACT", 0)
    index_features(tmp_path / "index", x, IndexConfig(spec=spec),
                   sources=[f"/photos/{'a' if i % 2 else 'b'}/{i}.jpg" for i in range(N)], metas=metas)
    finder = ImageFinder(tmp_path / "index")
    try:
        unfiltered = [r.id for r in finder.search_vectors(x[:1], K)[0]]
        assert not {metas[i]["tier"] for i in unfiltered} & {"far"}  # a post-filter would find nothing
        results = finder.search_vectors(x[:1], K, where=Filter.parse(["tier=far"]))[0]
        assert len(results) == K
        assert all(r.meta and r.meta["tier"] == "far" for r in results)
        if spec == "Flat":  # exact: the K best of the far ones, in order
            far_ranked = [int(i) for i in order if metas[i]["tier"] == "far"][:K]
            assert [r.id for r in results] == far_ranked
        # every metric ranks inside the filter too
        for metric in ("euclidean", "vote"):
            got = finder.search_vectors(x[:1], K, metric, where=Filter.parse(["tier=far"]))[0]
            assert len(got) == K and all(r.meta and r.meta["tier"] == "far" for r in got)
        # fewer matches than k: all of them
        few = finder.search_vectors(x[:1], K, where=Filter.parse(["n<5"]))[0]
        assert sorted(r.id for r in few) == [0, 1, 2, 3, 4]
    finally:
        finder.close()


def test_filter_semantics(tmp_path: Path, data) -> None:
    x, _order, metas = data
    sources = [f"/photos/{'a' if i % 2 else 'b'}/{i}.jpg" for i in range(N)]
    index_features(tmp_path / "index", x, IndexConfig(spec="Flat"), sources=sources, metas=metas)
    store = ImageFinder(tmp_path / "index").store

    def ids(*where: str, prefix: str | None = None) -> set[int]:
        return set(store.matching_ids(Filter.parse(list(where), prefix)).tolist())

    assert ids("n>=2990") == set(range(2990, N))  # numeric, not text ("999" > "2990" as text)
    assert ids("n<10", "n!=3") == set(range(10)) - {3}
    assert ids("n=7") == {7} and ids("n == 7") == {7} and ids("n='7'") == {7}
    assert ids("day<2024-01-03", "n<60") == {i for i in range(60) if i % 28 in (0, 1)}  # text order: dates
    assert ids("n<10", prefix="/photos/a/") == {1, 3, 5, 7, 9}
    assert ids("colour=red") == set() and len(ids("colour!=red")) == N  # a missing column is never equal
    assert ids("n>abc") == {i for i in range(N) if str(i) > "abc"}  # text value: text order (none here)
    total, rows = store.page(0, 5, Filter.parse(["tier=far"]))
    assert total == FAR and len(rows) == 5 and [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    total_all, newest = store.page(0, 3)
    assert total_all == N and [r["id"] for r in newest] == [N - 1, N - 2, N - 3]
    assert [r["id"] for r in store.page(N - 2, 10)[1]] == [1, 0]
    for bad in ("year", "=3", 'a"b=1', "x<"):
        if bad == "x<":  # an empty value is allowed: compares with the empty text
            assert Filter.parse([bad]).conditions[0].value == ""
            continue
        with pytest.raises(FilterError):
            Filter.parse([bad])


def test_milvus_store_filters_inside_its_search(tmp_path: Path, data) -> None:
    """Milvus Lite: the filter goes to Milvus as an `id in [...]` expression."""
    pytest.importorskip("milvus_lite")
    x = data[0]
    n = 600  # Milvus Lite is slow (a test double): a smaller collection
    sub = x[:n]
    sub_order = np.argsort(-(sub @ sub[0]), kind="stable")
    far = set(sub_order[-20:].tolist())
    sub_metas = [{"tier": "far" if i in far else "near"} for i in range(n)]
    index_features(tmp_path / "index", sub, IndexConfig(spec="Flat", store=str(tmp_path / "vectors.db")),
                   metas=sub_metas)
    finder = ImageFinder(tmp_path / "index")
    try:
        assert not any(sub_metas[r.id]["tier"] == "far" for r in finder.search_vectors(sub[:1], K)[0])
        results = finder.search_vectors(sub[:1], K, where=Filter.parse(["tier=far"]))[0]
        assert [r.id for r in results] == [int(i) for i in sub_order if int(i) in far][:K]
    finally:
        finder.close()

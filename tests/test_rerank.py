"""Spatial verification re-ranking: a planted true match beats a distractor; local features are cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("cv2", reason="re-ranking needs opencv-python-headless")

from imagefinder.rerank import LOCAL_DIR, SpatialReranker, default_backend
from imagefinder.search import Hit

BACKENDS = ["orb"] + (["xfeat"] if default_backend() == "xfeat" else [])


@pytest.fixture(scope="module")
def tiny(ukbench_dir: Path, embedder, tmp_path_factory: pytest.TempPathFactory):
    """ukbench00000 (the object), ukbench00100 and ukbench00200 (other objects)."""
    from imagefinder import ImageFinder, build_index

    folder = tmp_path_factory.mktemp("rerank-imgs")
    for n in (0, 100, 200):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{n:05d}.jpg", folder / f"ukbench{n:05d}.jpg")
    # the query: a rotated, rescaled crop of ukbench00000 (a copy of the object, not the file)
    img = Image.open(folder / "ukbench00000.jpg").convert("RGB")
    query = img.crop((30, 20, 290, 220)).rotate(12, expand=True).resize((390, 300))
    out = tmp_path_factory.mktemp("rerank-index") / "index"
    report = build_index([str(folder)], out, embedder=embedder, workers=2)
    finder = ImageFinder(report.path)
    ids = {Path(s).name: i for s, i in finder.store.ids_by_source().items()}
    yield finder, query, ids
    finder.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerank_puts_planted_match_above_distractors(tiny, backend: str) -> None:
    finder, query, ids = tiny
    reranker = SpatialReranker(finder.path, backend=backend, threads=2)
    true, d1, d2 = ids["ukbench00000.jpg"], ids["ukbench00100.jpg"], ids["ukbench00200.jpg"]
    hits = [Hit(d1, 0.9), Hit(d2, 0.85), Hit(true, 0.5)]  # the global ranking got it wrong
    out = reranker.rerank(reranker.query_features(query), hits, finder.store, top=3, budget_s=None)
    assert out[0].id == true and out[0].score > 0.9
    assert {h.id for h in out} == {true, d1, d2} and reranker.last.verified == 3
    # unverified distractors keep their global scores and order
    assert [(h.id, h.score) for h in out[1:]] == [(d1, 0.9), (d2, 0.85)]


def test_local_features_are_cached_and_budget_bounds_the_work(tiny) -> None:
    finder, query, ids = tiny
    reranker = SpatialReranker(finder.path, backend="orb")
    hits = [Hit(ids["ukbench00100.jpg"], 0.9), Hit(ids["ukbench00000.jpg"], 0.5)]
    q = reranker.query_features(query)
    reranker.rerank(q, hits, finder.store, top=2, budget_s=None)
    cached = finder.path / LOCAL_DIR / f"{ids['ukbench00000.jpg']}.npz"
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns
    reranker.rerank(q, hits, finder.store, top=2, budget_s=None)
    assert cached.stat().st_mtime_ns == mtime, "second query reads the cache, does not recompute"
    # a different extractor configuration invalidates the cache
    SpatialReranker(finder.path, backend="orb", top_k=300).rerank(q, hits[:1], finder.store, top=1, budget_s=None)
    assert not cached.exists()
    # no time left: nothing is verified, the global order stands
    out = reranker.rerank(q, hits, finder.store, top=2, budget_s=0.0)
    assert [h.id for h in out] == [h.id for h in hits] and reranker.last.stopped_early
    # top bounds the verified head; the tail is passed through untouched
    out = reranker.rerank(q, hits, finder.store, top=1, budget_s=None)
    assert out[1] == hits[1] and reranker.last.verified == 1


def test_finder_search_with_rerank_and_qe(tiny) -> None:
    finder, query, ids = tiny
    finder.reranker(backend="orb")
    results = finder.search(query, k=3, rerank=3, qe=1)
    assert results[0].id == ids["ukbench00000.jpg"]
    assert [r.rank for r in results] == [1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tiny_query_has_no_local_features_and_reranks_nothing(tiny, backend: str) -> None:
    # XFeat works on 32 px cells: a 20x20 query crashed it (ZeroDivisionError) before
    finder, _, ids = tiny
    reranker = SpatialReranker(finder.path, backend=backend, threads=2)
    features = reranker.query_features(Image.new("RGB", (20, 20), (200, 30, 30)))
    assert len(features.keypoints) == 0
    hits = [Hit(ids["ukbench00100.jpg"], 0.9), Hit(ids["ukbench00000.jpg"], 0.5)]
    out = reranker.rerank(features, hits, finder.store, top=2, budget_s=None)
    assert [(h.id, h.score) for h in out] == [(h.id, h.score) for h in hits]
def test_verified_query_expansion_uses_only_verified_results(tiny) -> None:
    """vqe: the expansion takes the results that passed verification, never a distractor that the
    global ranking put higher; those stay on top, the second search's results follow."""
    import numpy as np

    from imagefinder.embed import l2_normalize
    from imagefinder.rerank import MIN_INLIERS
    from imagefinder.search import verified_expansion

    finder, query, ids = tiny
    reranker = finder.reranker(backend="orb")
    true, d1, d2 = ids["ukbench00000.jpg"], ids["ukbench00100.jpg"], ids["ukbench00200.jpg"]
    local = reranker.query_features(query)
    hits = [Hit(d1, 0.9), Hit(d2, 0.85), Hit(true, 0.5)]
    ranked, verified = reranker.rerank_verified(local, hits, finder.store, top=3, budget_s=None)
    assert verified == [true]
    records = finder.store.records([true, d1, d2])
    inliers = {i: reranker.inliers(local, reranker.cache.get(i, records[i])) for i in (true, d1, d2)}
    assert inliers[true] >= MIN_INLIERS > max(inliers[d1], inliers[d2])
    assert verified_expansion(finder.space(), np.ones(8), ranked, [], 3) == ranked  # nothing verified: unchanged

    # Through the finder: the unverified results are ranked by the query averaged with the verified one only.
    vector = finder.embed(query)
    results = finder.search(query, k=3, rerank=3, vqe=2, qe=0)
    assert results[0].id == true and [r.rank for r in results] == [1, 2, 3]
    stored = l2_normalize(np.asarray(finder.store.embeddings[[true, d1, d2]], np.float32))
    expanded = l2_normalize((l2_normalize(vector[None])[0] + stored[0])[None])[0]
    tail = {r.id: r.score for r in results[1:]}
    assert set(tail) == {d1, d2}
    for row, i in ((1, d1), (2, d2)):
        assert tail[i] == pytest.approx(float(stored[row] @ expanded), abs=1e-4)
    # expanding with a distractor too (what unverified QE does) would have scored them otherwise
    with_d1 = l2_normalize((expanded + stored[1])[None])[0]
    assert abs(float(stored[2] @ with_d1) - tail[d2]) > 1e-3

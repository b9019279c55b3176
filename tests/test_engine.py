"""The retrieval engine on real UKBench photos: ranking, metrics, ensembles, PCA/IVF specs, the artifact."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagefinder
from imagefinder import ImageFinder, IndexConfig, build_index
from imagefinder.embed import Embedder
from imagefinder.index import IndexError_, Store
from imagefinder.models import get_backbone
from imagefinder.search import RRF_K

ENSEMBLE = "efficientnet-lite0+resnet50-thin"


@pytest.fixture(scope="module")
def finder(small_index):
    f = ImageFinder(small_index.path)
    yield f
    f.close()


@pytest.fixture(scope="module")
def twelve(ukbench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Groups 10..12 of UKBench (not in the session index): 12 images in a folder."""
    folder = tmp_path_factory.mktemp("ukbench12")
    for n in range(40, 52):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{n:05d}.jpg", folder / f"ukbench{n:05d}.jpg")
    return folder


def _group_of(path: str) -> int:
    return int(Path(path).stem.removeprefix("ukbench")) // 4


# --- ranking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 5, 22, 39])
def test_query_image_ranks_itself_first_and_finds_its_group(finder: ImageFinder, small_index, n: int) -> None:
    query = small_index.sources[n]
    results = finder.search(query, k=4)
    assert [r.rank for r in results] == [1, 2, 3, 4]
    assert results[0].source == query and results[0].id == n
    assert results[0].score == pytest.approx(1.0, abs=1e-3)
    mates = sum(_group_of(r.source) == _group_of(query) for r in results[1:])
    assert mates >= 2, f"only {mates} of 3 group-mates in the top 4: {[r.source for r in results]}"
    assert results[0].width == 320 and results[0].height == 240


def test_mean_ns_score_on_the_subset(finder: ImageFinder, small_index) -> None:
    """UKBench N-S score over all 40 'more like this' queries; lite0 gets ~3.9 here, chance is ~0.4."""
    ns = [sum(small_index.groups[r.id] == small_index.groups[i] for r in finder.search_id(i, k=4))
          for i in range(len(small_index.sources))]
    assert np.mean(ns) >= 3.5


def test_query_as_path_bytes_and_pil_image_give_the_same_ranking(finder: ImageFinder, small_index) -> None:
    path = Path(small_index.sources[9])
    by_path = finder.search(path, k=6)
    by_str = finder.search(str(path), k=6)
    by_bytes = finder.search(path.read_bytes(), k=6)
    by_pil = finder.search(Image.open(path), k=6)
    ids = [r.id for r in by_path]
    assert ids == [r.id for r in by_str] == [r.id for r in by_bytes] == [r.id for r in by_pil]
    assert np.allclose([r.score for r in by_path], [r.score for r in by_bytes], atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "vote"])
def test_every_metric_returns_k_ranked_results(finder: ImageFinder, small_index, metric: str) -> None:
    query = small_index.sources[17]
    results = finder.search(query, k=7, metric=metric)
    assert len(results) == 7 and [r.rank for r in results] == list(range(1, 8))
    assert len({r.id for r in results}) == 7
    assert results[0].id == 17, f"{metric}: the query itself must come first"
    scores = [r.score for r in results]
    if metric == "euclidean":
        assert scores == sorted(scores), "distances ascend"
        assert scores[0] < 0.05 * scores[1], "distance to itself is ~0"
    else:
        assert scores == sorted(scores, reverse=True), "similarities descend"
    if metric == "vote":
        # a single model: cosine + euclidean rankings, both with the query first
        assert scores[0] == pytest.approx(2 / (RRF_K + 1), rel=1e-6)


def test_euclidean_distances_are_real_l2_distances(finder: ImageFinder, small_index) -> None:
    query = finder.embed(small_index.sources[3])
    stored = np.asarray(finder.store.embeddings, np.float32)
    for r in finder.search(small_index.sources[3], k=5, metric="euclidean"):
        assert r.score == pytest.approx(float(np.linalg.norm(stored[r.id] - query)), rel=1e-3, abs=1e-2)


def test_search_id_is_more_like_this(finder: ImageFinder, small_index) -> None:
    results = finder.search_id(13, k=4)
    assert results[0].id == 13 and results[0].score == pytest.approx(1.0, abs=1e-3)
    assert sum(small_index.groups[r.id] == small_index.groups[13] for r in results) >= 3
    by_image = finder.search(small_index.sources[13], k=4)
    assert [r.id for r in results] == [r.id for r in by_image]
    with pytest.raises(KeyError):
        finder.search_id(10_000)


def test_unknown_metric_raises(finder: ImageFinder, small_index) -> None:
    with pytest.raises(ValueError, match="unknown metric 'manhattan'.*cosine"):
        finder.search(small_index.sources[0], k=3, metric="manhattan")


def test_k_larger_than_the_index_returns_everything(finder: ImageFinder, small_index) -> None:
    for metric in ("cosine", "euclidean", "vote"):
        results = finder.search_id(0, k=1000, metric=metric)
        assert len(results) == 40, metric
        assert sorted(r.id for r in results) == list(range(40))
        assert [r.rank for r in results] == list(range(1, 41))


# --- the artifact ---------------------------------------------------------------------------------


def test_manifest_records_model_weights_spec_counts_versions(small_index) -> None:
    m = Store(small_index.path).manifest
    for key in ("format_version", "model", "members", "embedding_dim", "index_spec", "config", "counts",
                "versions", "created_at", "clusters", "member_slices", "failure_reasons"):
        assert key in m.to_dict(), key
    assert m.model == "efficientnet-lite0" and m.embedding_dim == 1280
    assert m.index_spec == "Flat" and m.config.pca is None and m.config.clusters is None
    assert m.counts.items == 40 and m.counts.indexed == 40 and m.counts.failed == 0
    assert m.failure_reasons == {}
    [member] = m.members
    assert member["name"] == "efficientnet-lite0" and member["dim"] == 1280
    weights = get_backbone("efficientnet-lite0").locate_weights()
    assert member["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert member["preprocess"]["size"] == 224
    assert m.member_slices == [[0, 1280]]
    assert m.versions["imagefinder"] == imagefinder.__version__
    assert {"numpy", "faiss-cpu", "onnxruntime", "pillow"} <= set(m.versions)
    created = dt.datetime.fromisoformat(m.created_at)
    assert created.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 3600


def test_flat_index_gets_kmeans_clusters_for_every_image(small_index) -> None:
    store = Store(small_index.path)
    try:
        m = store.manifest
        assert m.cluster_source == "kmeans" and m.clusters == int(math.sqrt(40))
        rows = store.records(list(range(40)))
        labels = [rows[i]["cluster"] for i in range(40)]
        assert all(isinstance(c, int) and 0 <= c < m.clusters for c in labels)
        assert len(set(labels)) >= 3, "40 images of 10 objects should not collapse into one or two clusters"
        # members of one UKBench group mostly share a cluster
        same = sum(len({labels[i] for i in range(g * 4, g * 4 + 4)}) == 1 for g in range(10))
        assert same >= 5
    finally:
        store.close()


def test_stored_features_match_a_fresh_embedding(finder: ImageFinder, small_index) -> None:
    stored = np.asarray(finder.store.embeddings, np.float32)
    assert stored.shape == (40, 1280)
    fresh = finder.embed(small_index.sources[21])
    assert np.allclose(stored[21], fresh, rtol=2e-2, atol=2e-2)  # float16 on disk
    cos = stored[21] @ fresh / (np.linalg.norm(stored[21]) * np.linalg.norm(fresh))
    assert cos > 0.9999


def test_building_over_an_existing_index_replaces_it_atomically(twelve: Path, embedder, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    first = build_index([str(p) for p in sorted(twelve.iterdir())[:4]], out, embedder=embedder)
    assert first.indexed == 4
    (out / "stale-marker.txt").write_text("belongs to the old index")
    second = build_index([str(twelve)], out, embedder=embedder)
    assert second.indexed == 12
    assert not (out / "stale-marker.txt").exists(), "the old directory is replaced, not merged into"
    assert sorted(os.listdir(tmp_path)) == ["idx"], "no .tmp-/.old- directories left beside the index"
    f = ImageFinder(out)
    try:
        assert f.info()["counts"]["indexed"] == 12 and f.store.ntotal == 12
    finally:
        f.close()


def test_a_failing_build_leaves_the_old_index_untouched(twelve: Path, embedder, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    build_index([str(twelve)], out, embedder=embedder)
    before = (out / "manifest.json").read_bytes()

    class Exploding(Embedder):
        def embed_prepared(self, batch):
            raise RuntimeError("model crashed")

    broken = Exploding.__new__(Exploding)
    broken.__dict__.update(embedder.__dict__)
    with pytest.raises(RuntimeError, match="model crashed"):
        build_index([str(twelve)], out, embedder=broken)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["idx"], "the half-built temp dir is removed"
    f = ImageFinder(out)
    try:
        assert f.search_id(0, k=1)[0].id == 0
    finally:
        f.close()


def test_a_directory_that_is_not_an_index_is_never_replaced(twelve: Path, embedder, tmp_path: Path) -> None:
    precious = tmp_path / "my-photos"
    precious.mkdir()
    (precious / "holiday.txt").write_text("do not delete")
    with pytest.raises(IndexError_, match="not an ImageFinder index"):
        build_index([str(twelve)], precious, embedder=embedder)
    assert (precious / "holiday.txt").read_text() == "do not delete"
    assert sorted(os.listdir(precious)) == ["holiday.txt"]
    assert sorted(os.listdir(tmp_path)) == ["my-photos"], "no temp dirs left behind"
    with pytest.raises(IndexError_, match="not an ImageFinder index"):
        ImageFinder(precious)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_index([str(twelve)], empty, embedder=embedder).indexed == 12, "an empty dir may be used"


# --- ensembles, PCA, IVF ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble_index(twelve: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ensemble") / "index"
    build_index([str(twelve)], out, IndexConfig(model=ENSEMBLE), workers=4)
    return out


def test_ensemble_manifest_and_member_normalised_features(ensemble_index: Path) -> None:
    store = Store(ensemble_index)
    try:
        m = store.manifest
        assert m.model == ENSEMBLE
        assert [x["name"] for x in m.members] == ["efficientnet-lite0", "resnet50-thin"]
        assert all(len(x["weights_sha256"]) == 64 for x in m.members)
        assert m.members[0]["weights_sha256"] != m.members[1]["weights_sha256"]
        assert m.embedding_dim == 1280 + 1024
        assert m.member_slices == [[0, 1280], [1280, 2304]]
        emb = np.asarray(store.embeddings, np.float32)
        assert emb.shape == (12, 2304)
        for start, stop in m.member_slices:
            assert np.allclose(np.linalg.norm(emb[:, start:stop], axis=1), 1.0, atol=2e-3)
    finally:
        store.close()


def test_ensemble_search_and_vote_uses_every_member(ensemble_index: Path, twelve: Path) -> None:
    f = ImageFinder(ensemble_index)
    try:
        query = sorted(twelve.iterdir())[6]
        cos = f.search(query, k=4)
        assert Path(cos[0].source) == query and cos[0].score == pytest.approx(1.0, abs=1e-3)
        assert sum(_group_of(r.source) == _group_of(str(query)) for r in cos) >= 3
        vote = f.search(query, k=12, metric="vote")
        assert len(vote) == 12 and Path(vote[0].source) == query
        # cosine + euclidean + one ranking per member, the query first in all four
        assert vote[0].score == pytest.approx(4 / (RRF_K + 1), rel=1e-6)
        assert [r.score for r in vote] == sorted((r.score for r in vote), reverse=True)
        eu = f.search(query, k=12, metric="euclidean")
        assert len(eu) == 12 and Path(eu[0].source) == query
    finally:
        f.close()


def test_pca_whiten_spec_is_recorded_and_clusters_stored(twelve: Path, embedder, tmp_path: Path) -> None:
    report = build_index([str(twelve)], tmp_path / "pca", IndexConfig(pca=8, whiten=True), embedder=embedder)
    assert report.index_spec == "PCAW8,L2norm,Flat"
    f = ImageFinder(tmp_path / "pca")
    try:
        m = f.manifest
        assert m.index_spec == "PCAW8,L2norm,Flat"
        assert m.config.pca == 8 and m.config.whiten is True
        assert m.cluster_source == "kmeans" and m.clusters == int(math.sqrt(12))
        rows = f.store.records(list(range(12)))
        assert all(0 <= rows[i]["cluster"] < m.clusters for i in range(12))
        assert f.store.index.d == 1280, "the index takes raw 1280-d features and reduces them itself"
        results = f.search_id(5, k=12)
        assert results[0].id == 5 and results[0].score == pytest.approx(1.0, abs=1e-3)
        assert len(results) == 12
    finally:
        f.close()


def test_pca_larger_than_the_data_allows_is_reduced(twelve: Path, embedder, tmp_path: Path) -> None:
    report = build_index([str(twelve)], tmp_path / "pca", IndexConfig(pca=64), embedder=embedder)
    assert report.index_spec == "PCA11,L2norm,Flat"


def test_ivf_clusters_spec_is_recorded_and_each_image_has_its_list(twelve: Path, embedder, tmp_path: Path) -> None:
    report = build_index([str(twelve)], tmp_path / "ivf", IndexConfig(clusters=4), embedder=embedder)
    assert report.index_spec == "IVF4,Flat"
    f = ImageFinder(tmp_path / "ivf")
    try:
        m = f.manifest
        assert m.index_spec == "IVF4,Flat" and m.config.clusters == 4
        assert m.cluster_source == "ivf" and m.clusters == 4 and m.nprobe == 4
        rows = f.store.records(list(range(12)))
        labels = [rows[i]["cluster"] for i in range(12)]
        assert all(0 <= c < 4 for c in labels) and len(set(labels)) >= 2
        for metric in ("cosine", "euclidean", "vote"):
            results = f.search_id(2, k=12, metric=metric)
            assert len(results) == 12 and results[0].id == 2, metric
    finally:
        f.close()


def test_pca_and_ivf_together(twelve: Path, embedder, tmp_path: Path) -> None:
    report = build_index([str(twelve)], tmp_path / "both", IndexConfig(pca=8, clusters=3), embedder=embedder)
    assert report.index_spec == "PCA8,L2norm,IVF3,Flat"
    f = ImageFinder(tmp_path / "both")
    try:
        m = f.manifest
        assert m.cluster_source == "ivf" and m.clusters == 3
        assert m.config.pca == 8 and m.config.whiten is False and m.config.clusters == 3
        rows = f.store.records(list(range(12)))
        assert all(0 <= rows[i]["cluster"] < 3 for i in range(12))
        results = f.search_id(7, k=4)
        assert results[0].id == 7 and results[0].score == pytest.approx(1.0, abs=1e-3)
    finally:
        f.close()


def test_unreadable_or_future_manifest_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(IndexError_, match="unreadable manifest"):
        ImageFinder(bad)
    future = tmp_path / "future"
    future.mkdir()
    (future / "manifest.json").write_text('{"format_version": 99}')
    with pytest.raises(IndexError_, match="format 99 is not supported"):
        ImageFinder(future)


def test_reindexing_a_folder_into_an_index_inside_it_skips_the_old_index(twelve: Path, embedder,
                                                                         tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(twelve, photos)
    assert build_index([str(photos)], photos / "index", embedder=embedder).items == 12
    again = build_index([str(photos)], photos / "index", embedder=embedder)
    assert again.items == 12, f"{again.items - 12} thumbnails of the previous index were indexed as photos"

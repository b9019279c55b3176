"""Descriptor options (pooling, multi-scale, power), ensembles with weights, QE/DBA, the copy-detection split."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagefinder.embed import Embedder, l2_normalize
from imagefinder.index import Manifest
from imagefinder.ingest.decode import open_image
from imagefinder.models import ModelUnavailable, parse_model_spec, registry
from imagefinder.pooling import DEFAULT_SCALES, Pooling, parse_member, pool_map, power_normalize
from imagefinder.search import SearchSpace, augment_database, search


def _images(ukbench_dir: Path, n: int = 4):
    return [open_image(ukbench_dir / "images" / f"ukbench{i:05d}.jpg").image for i in range(n)]


# --- pooling maths ---------------------------------------------------------------------------------


def test_gem_p1_is_average_and_large_p_tends_to_max() -> None:
    fmap = np.random.default_rng(0).uniform(0, 6, (2, 8, 5, 5)).astype(np.float32)
    avg = pool_map(fmap, Pooling("avg"))
    np.testing.assert_allclose(pool_map(fmap, Pooling("gem", p=1)), avg, rtol=1e-6)
    np.testing.assert_allclose(avg, fmap.mean(axis=(2, 3)), rtol=1e-6)
    mx = pool_map(fmap, Pooling("max"))
    np.testing.assert_allclose(pool_map(fmap, Pooling("gem", p=60)), mx, rtol=0.1)
    g3 = pool_map(fmap, Pooling("gem", p=3))
    assert np.all(avg <= g3 + 1e-6) and np.all(g3 <= mx + 1e-6), "power means are ordered"
    nhwc = pool_map(fmap.transpose(0, 2, 3, 1), Pooling("gem", p=3), layout="NHWC")
    np.testing.assert_allclose(nhwc, g3, rtol=1e-5)
    x = np.array([[4.0, -9.0, 0.0]], np.float32)
    np.testing.assert_allclose(power_normalize(x, 0.5), [[2.0, -3.0, 0.0]])


def test_rmac_sums_unit_region_maxima_and_sees_a_spike_in_one_corner() -> None:
    from imagefinder.pooling import rmac_regions

    regions = rmac_regions(9, 12)  # a 288 x 384 input of a stride-32 backbone
    assert len(regions) == 20 and all(t + s <= 9 and left + s <= 12 for t, left, s in regions)
    assert {s for _, _, s in regions} == {9, 6, 4} and (0, 0, 4) in regions and (5, 8, 4) in regions
    assert set(rmac_regions(12, 9)) == {(left, t, s) for t, left, s in regions}  # a portrait map: transposed
    flat = np.ones((1, 4, 9, 12), np.float32)
    # every region of a constant map has the same unit max: whole map + 20 regions
    np.testing.assert_allclose(pool_map(flat, Pooling("rmac")), np.full((1, 4), 21 * 0.5), rtol=1e-5)
    spike = flat.copy()
    spike[0, 0, 8, 11] = 100.0  # the bottom-right corner only: in the regions that cover it
    covering = 1 + sum(1 for t, left, s in regions if t + s > 8 and left + s > 11)
    pooled = pool_map(spike, Pooling("rmac"))[0]
    assert pooled[0] > pooled[1] and covering < 21
    np.testing.assert_allclose(pool_map(spike.transpose(0, 2, 3, 1), Pooling("rmac"), layout="NHWC"), pooled[None],
                               rtol=1e-6)
    assert parse_member("efficientnet-lite2@rmac,upto384").pooling == Pooling("rmac")


def test_spec_strings_parse_into_recorded_options() -> None:
    m = parse_member("efficientnet-lite0@gem3,ms,pow0.5:0.5")
    assert (m.name, m.weight) == ("efficientnet-lite0", 0.5)
    assert m.pooling == Pooling("gem", 3.0, DEFAULT_SCALES, 0.5)
    assert m.pooling.token() == "gem3,ms,pow0.5"
    assert parse_member("efficientnet-lite0@ms1.414_1").pooling.scales == (1.414, 1.0)
    assert parse_member("dinov2-s").pooling.is_default
    assert parse_model_spec("efficientnet-lite0@gem3:1+dinov2-s:0.5") == ["efficientnet-lite0", "dinov2-s"]
    with pytest.raises(ModelUnavailable, match="bad pooling option 'gemx'"):
        parse_model_spec("efficientnet-lite0@gemx")
    with pytest.raises(ModelUnavailable, match="signed"):
        parse_model_spec("dinov2-s@gem3")
    with pytest.raises(ModelUnavailable, match="fixed 224px"):
        parse_model_spec("resnet50-thin@ms")


def test_feature_map_export_has_its_own_cache_name() -> None:
    path, digest = registry.onnx_path(registry.get_backbone("efficientnet-lite0"))
    assert f"-{registry.export.MAP_EXPORT_TAG}-{digest[:16]}" in path.name


# --- embedding with options -------------------------------------------------------------------------


def test_gem1_embedding_equals_average_pooling_and_options_change_vectors(ukbench_dir: Path) -> None:
    images = _images(ukbench_dir, 2)
    base = Embedder("efficientnet-lite0@avg").embed_images(images)
    gem1 = Embedder("efficientnet-lite0@gem1").embed_images(images)
    np.testing.assert_allclose(gem1, base, atol=1e-5)
    gem3 = Embedder("efficientnet-lite0@gem3").embed_images(images)
    ms = Embedder("efficientnet-lite0@ms").embed_images(images)
    for other in (gem3, ms):
        assert other.shape == base.shape and not np.allclose(other, base, atol=1e-3)
        cos = np.sum(l2_normalize(other) * l2_normalize(base), axis=1)
        assert np.all(cos > 0.8), "still the same image"


def test_default_pooling_is_recorded_and_old_indexes_keep_average_pooling(ukbench_dir: Path, embedder) -> None:
    assert embedder.specs[0].pooling == Pooling("gem", 2.0), "efficientnet-lite0 defaults to GeM p=2"
    assert embedder.info()[0].pooling == {"method": "gem", "p": 2.0, "scales": [1.0], "power": None}
    assert Embedder("efficientnet-lite0@ms").specs[0].pooling == Pooling("gem", 2.0, DEFAULT_SCALES)
    # a manifest without recorded pooling was built with average pooling: queries must match it
    legacy = Manifest.from_dict({"format_version": 1, "model": "efficientnet-lite0", "embedding_dim": 1280,
                                 "index_spec": "Flat", "members": [{"name": "efficientnet-lite0", "dim": 1280}]})
    assert Embedder.for_manifest(legacy).specs[0].pooling == Pooling("avg")
    images = _images(ukbench_dir, 1)
    np.testing.assert_allclose(Embedder.for_manifest(legacy).embed_images(images),  # (and fp32: format 1 predates int8)
                               Embedder("efficientnet-lite0@avg", precision="fp32").embed_images(images), atol=1e-6)
    recorded = legacy.replace(members=[{"pooling": Pooling("max").to_dict()}])
    assert Embedder.for_manifest(recorded).specs[0].pooling == Pooling("max")


def test_ensemble_weights_scale_members(ukbench_dir: Path) -> None:
    images = _images(ukbench_dir, 2)
    pair = Embedder("efficientnet-lite0:1+resnet50-thin:0.25")
    v = pair.embed_images(images)
    (a0, a1), (b0, b1) = pair.member_slices
    np.testing.assert_allclose(np.linalg.norm(v[:, a0:a1], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v[:, b0:b1], axis=1), 0.5, rtol=1e-5)
    assert [i.weight for i in pair.info()] == [1.0, 0.25]


def test_index_records_pooling_and_queries_use_it(ukbench_dir: Path, tmp_path: Path) -> None:
    from imagefinder import ImageFinder, build_index
    from imagefinder.index import IndexConfig

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{i:05d}.jpg", folder / f"ukbench{i:05d}.jpg")
    spec = "efficientnet-lite0@gem3,ms1_0.707"
    report = build_index([str(folder)], tmp_path / "index", IndexConfig(model=spec), workers=2)
    finder = ImageFinder(report.path)
    assert finder.manifest.model == spec
    assert finder.manifest.members[0]["pooling"] == {"method": "gem", "p": 3.0, "scales": [1.0, 0.707],
                                                        "power": None}
    top = finder.search(str(folder / "ukbench00005.jpg"), k=2)
    assert Path(top[0].source).name == "ukbench00005.jpg" and top[0].score > 0.999
    assert top[1].id // 4 == 1, "the best other hit is a member of the same UKBench group"
    finder.close()


# --- query expansion, DBA, fusion -------------------------------------------------------------------


def _space(n: int = 60, dim: int = 16, seed: int = 0) -> tuple[SearchSpace, np.ndarray]:
    import faiss

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 3, dim))
    x = l2_normalize(np.repeat(centres, 3, axis=0) + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    return SearchSpace(index, x, [(0, dim)], True), x


def test_qe_zero_is_plain_search_and_qe_moves_the_query() -> None:
    space, x = _space()
    q = x[:5] + 0.2
    plain = search(space, q, 10)
    assert search(space, q, 10, qe=0) == plain
    expanded = search(space, q, 10, qe=3, qe_alpha=3.0)
    assert [h.id for h in expanded[0]] != [] and any(
        [h.score for h in a] != [h.score for h in b] for a, b in zip(plain, expanded))
    with pytest.raises(ValueError, match="cosine and fusion"):
        search(space, q, 10, metric="euclidean", qe=2)


def test_dba_keeps_unit_vectors_and_zero_neighbours_is_identity() -> None:
    _, x = _space()
    np.testing.assert_allclose(augment_database(x, 0), x, rtol=1e-6)
    aug = augment_database(x, 2)
    np.testing.assert_allclose(np.linalg.norm(aug, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(aug, x)


def test_fusion_of_one_member_ranks_like_cosine() -> None:
    space, x = _space()
    cos = search(space, x[:3], 8)
    fused = search(space, x[:3], 8, metric="fusion")
    assert [[h.id for h in r] for r in cos] == [[h.id for h in r] for r in fused]


# --- the copy-detection protocol --------------------------------------------------------------------


def test_copydetect_set_is_deterministic_and_evaluates_queries_against_db(ukbench_dir: Path, tmp_path: Path) -> None:
    from imagefinder.benchdata import make_copydetect
    from imagefinder.evaluate import evaluate, read_groundtruth

    a = make_copydetect(ukbench_dir, tmp_path / "a", seed=3, groups=4)
    b = make_copydetect(ukbench_dir, tmp_path / "b", seed=3, groups=4)
    truth = read_groundtruth(a)
    assert truth.roles.count("query") == 4 and truth.roles.count("db") == 16
    q = [f for f, r in zip(truth.filenames, truth.roles) if r == "query"]
    assert (a / "images" / q[0]).read_bytes() == (b / "images" / q[0]).read_bytes()
    with open(a / "groundtruth.csv", newline="") as f:
        assert next(csv.reader(f)) == ["filename", "group_id", "role"]
    m = evaluate(a, latency=2, qe=1)
    assert m["images"] == 16 and m["queries"] == 4, "queries are not indexed"
    assert 0 < m["map"] <= 1 and m["latency_ms_p50"] > 0 and m["latency_cpu_ms_p50"] >= 0

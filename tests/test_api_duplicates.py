"""GET /duplicates over a real socket: the groups of `imagefinder duplicates`, in one schema.

The index: the built-in sample photos (9 subjects x 5 edits: original, crop, mirror, colour,
rotated) plus a byte-identical copy of one original, so every tier has something to find.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from imagefinder.api import Settings, create_app
from imagefinder.api.schemas import DuplicatesReport
from imagefinder.api.testing import ServerThread, start_asgi
from imagefinder.duplicates import NEAR_NCC, duplicates_of_path

SUBJECTS = 9


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("dups")
    images, _query = write_sample(root / "images")
    shutil.copy(images / "coffee_original.jpg", images / "coffee_zcopy.jpg")  # an exact duplicate
    return build_index([str(images)], root / "index", embedder=embedder, workers=2).path


@pytest.fixture(scope="module")
def api(index: Path) -> Iterator[ServerThread]:
    server = start_asgi(create_app(index, Settings(cors_origins=())))
    try:
        yield server
    finally:
        server.stop()


def get(url: str, **params: str) -> httpx.Response:
    return httpx.get(f"{url}/duplicates", params=params, timeout=120, trust_env=False)


def subject(source: str) -> str:
    return Path(source).name.split("_")[0]


def test_groups_are_those_of_the_cli_in_one_schema(api: ServerThread, index: Path) -> None:
    r = get(api.url)
    assert r.status_code == 200, r.text
    report = DuplicatesReport.model_validate(r.json())
    cli = duplicates_of_path(index)
    expected = [(g.tier, g.ids, g.score, g.check) for tier in ("exact", "near", "similar") for g in cli[tier]]
    assert [(g.tier, g.ids, g.score, g.check) for g in report.groups] == expected
    assert report.thresholds == cli["thresholds"] and report.model == cli["model"]

    tiers = [g.tier for g in report.groups]
    assert tiers == sorted(tiers, key=("exact", "near", "similar").index)  # strictest first
    exact = [g for g in report.groups if g.tier == "exact"]
    assert len(exact) == 1 and sorted(Path(i.source).name for i in exact[0].images) == [
        "coffee_original.jpg", "coffee_zcopy.jpg"] and exact[0].score == 1.0 and exact[0].check is None
    near = [g for g in report.groups if g.tier == "near"]
    assert near and all(g.check is not None and g.check >= NEAR_NCC for g in near)  # pixel-checked
    # every group is one subject's photos, and every subject's copies are found
    for g in report.groups:
        assert [i.id for i in g.images] == g.ids and len(g.ids) >= 2
        assert len({subject(i.source) for i in g.images}) == 1, g
        assert all(i.width and i.height for i in g.images)
    assert len({subject(i.source) for g in report.groups for i in g.images}) == SUBJECTS


def test_tier_filter_and_thumbnails(api: ServerThread) -> None:
    everything = get(api.url).json()["groups"]
    for tier in ("exact", "near", "similar"):
        body = get(api.url, tier=tier).json()
        assert body["groups"] == [g for g in everything if g["tier"] == tier]
    assert get(api.url, tier="all").json()["groups"] == everything
    bad = get(api.url, tier="nearish")
    assert bad.status_code == 422 and "tier" in bad.text
    thumb = everything[0]["images"][0]["thumbnail_url"]
    t = httpx.get(urljoin(f"{api.url}/duplicates", thumb), timeout=30, trust_env=False)
    assert t.status_code == 200 and t.headers["content-type"].startswith("image/")


def test_in_the_openapi_document(api: ServerThread) -> None:
    doc = httpx.get(f"{api.url}/openapi.json", timeout=30, trust_env=False).json()
    op = doc["paths"]["/duplicates"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DuplicatesReport")
    assert {"tier", "score", "check", "ids", "images"} <= set(doc["components"]["schemas"]["DuplicateGroup"]["properties"])


def test_cached_per_generation_and_recomputed_after_a_delete(index: Path, tmp_path: Path) -> None:
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    server = start_asgi(create_app(copy, Settings(cors_origins=())))
    try:
        first = get(server.url).json()
        assert get(server.url).json() == first
        group = next(g for g in first["groups"] if g["tier"] == "near")
        keep, *others = group["ids"]
        for i in others:
            assert httpx.delete(f"{server.url}/images/{i}", timeout=60, trust_env=False).status_code == 200
        after = get(server.url).json()
        assert after["generation"] > first["generation"]
        ids = {i for g in after["groups"] for i in g["ids"]}
        assert not ids & set(others)
        assert keep not in {i for g in after["groups"] if g["tier"] == "near" for i in g["ids"]}
    finally:
        server.stop()

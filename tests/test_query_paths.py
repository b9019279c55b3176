"""One index, three ways in: the CLI, the Python API and the REST API rank a query identically.

Regression test for issue 11: the REST API built its model with `Embedder(manifest["model"])`
while the CLI and Python used `Embedder.for_manifest`. On an index whose manifest predates
recorded pooling, the API pooled the query's feature map with the backbone's current default
(GeM p=2 for efficientnet-lite0) and the others with average pooling, as that index was built:
same ids perhaps, different scores. All three now go through `ImageFinder`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imagefinder import ImageFinder
from imagefinder.api import Settings, create_app
from imagefinder.api.testing import start_asgi

K = 8


def _make_old(index: Path) -> None:
    """Rewrite the manifest as an index written before pooling was recorded per member."""
    path = index / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    assert manifest["members"], "the members are what an old index records without pooling"
    manifest["format_version"] = 1  # the format before pooling was recorded (index/manifest.py migrates it)
    for member in manifest["members"]:
        member.pop("pooling", None)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def old_index(small_index, tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = tmp_path_factory.mktemp("old-manifest") / "index"
    shutil.copytree(small_index.path, index)
    _make_old(index)
    return index


@pytest.fixture(scope="module")
def query(small_index, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a PNG: the API decodes uploaded JPEGs at reduced scale (draft mode), files at full scale
    path = tmp_path_factory.mktemp("old-manifest-query") / "query.png"
    with Image.open(small_index.sources[5]) as img:
        img.convert("RGB").save(path)
    return path


def _pairs(results: list[dict]) -> list[tuple[int, float]]:
    return [(int(r["id"]), float(r["score"])) for r in results]


def test_cli_python_and_api_rank_an_old_index_identically(old_index: Path, query: Path, cli) -> None:
    finder = ImageFinder(old_index)
    try:
        python = _pairs([r.to_dict() for r in finder.search(query, k=K)])
    finally:
        finder.close()

    proc = cli("search", old_index, query, "-k", K, "--json")
    assert proc.returncode == 0, proc.stderr
    from_cli = _pairs(json.loads(proc.stdout.strip().splitlines()[-1])["results"])

    server = start_asgi(create_app(old_index, Settings(preload_model=False, cors_origins=())))
    try:
        with query.open("rb") as f:
            r = httpx.post(f"{server.url}/search?k={K}", files={"file": ("query.png", f, "image/png")},
                           timeout=120, trust_env=False)
        assert r.status_code == 200, r.text
        from_api = _pairs(r.json()["results"])
    finally:
        server.stop()

    assert len(python) == K and python[0][0] == 5, python  # the image itself comes first
    for name, got in (("CLI", from_cli), ("API", from_api)):
        assert [i for i, _ in got] == [i for i, _ in python], (name, got, python)
        assert [s for _, s in got] == pytest.approx([s for _, s in python], abs=1e-5), (name, got, python)

"""POST /search/matches ("why this match") over a real socket, on the built-in sample collection.

The sample's edits are known transforms, so the pairs can be checked against the truth: the
`crop` edit of a photo is its 10%..90% box, so a point (x, y) of the original lies at
(x - 0.1 W, y - 0.1 H) in the crop, and a recoloured copy has it where it was.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imagefinder.api import Settings, create_app
from imagefinder.api.access import is_write
from imagefinder.api.testing import ServerThread, start_asgi

pytest.importorskip("cv2", reason="why-this-match needs OpenCV (the re-ranking extra)")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("why-sample")
    images, _query = write_sample(root / "images")
    build_index([str(images)], root / "index", embedder=embedder, workers=2)
    return images


@pytest.fixture(scope="module")
def api(sample: Path) -> Iterator[ServerThread]:
    # a token is set: explaining a match is a read, so it must not need it
    server = start_asgi(create_app(sample.parent / "index", Settings(cors_origins=(), api_token="s3cret")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ids(api: ServerThread) -> dict[str, int]:
    page = httpx.get(f"{api.url}/images", params={"limit": 100}).json()
    return {Path(i["source"]).stem: i["id"] for i in page["images"]}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def explain(api: ServerThread, image: Image.Image, result_id: int, box: str | None = None) -> httpx.Response:
    data = {"result_id": str(result_id), **({"box": box} if box else {})}
    return httpx.post(f"{api.url}/search/matches", data=data, files={"file": ("q.png", png(image), "image/png")},
                      timeout=120)


def test_pairs_follow_the_known_crop(api, ids, sample) -> None:
    original = Image.open(sample / "rocket_original.jpg")
    w, h = original.size
    r = explain(api, original, ids["rocket_crop"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verified"] and body["inliers"] >= body["min_inliers"]
    assert body["query_size"] == [w, h] and body["result_size"] == list(Image.open(sample / "rocket_crop.jpg").size)
    pairs = np.array(body["pairs"])
    assert len(pairs) == min(body["inliers"], 400)
    offset = pairs[:, 2:] - pairs[:, :2]
    # in the crop's pixels, every matched point is where the crop moved it (within a few pixels)
    assert np.median(np.abs(offset - [-round(0.1 * w), -round(0.1 * h)]), axis=0).max() < 4, np.median(offset, axis=0)
    assert (pairs[:, 2] >= 0).all() and (pairs[:, 2] <= body["result_size"][0]).all()


def test_a_recoloured_copy_matches_the_same_points(api, ids, sample) -> None:
    original = Image.open(sample / "astronaut_original.jpg")
    body = explain(api, original, ids["astronaut_colour"]).json()
    assert body["verified"], body["inliers"]
    pairs = np.array(body["pairs"])
    assert np.median(np.abs(pairs[:, 2:] - pairs[:, :2]), axis=0).max() < 3  # brightness/contrast move nothing


def test_an_unrelated_pair_is_not_verified(api, ids) -> None:
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (320, 320, 3), dtype=np.uint8))
    body = explain(api, noise, ids["rocket_original"]).json()
    assert not body["verified"] and body["inliers"] < body["min_inliers"]


def test_a_box_maps_points_into_the_whole_query(api, ids, sample) -> None:
    cat, rocket = Image.open(sample / "cat_original.jpg"), Image.open(sample / "rocket_original.jpg")
    both = Image.new("RGB", (cat.width + rocket.width, max(cat.height, rocket.height)))
    both.paste(cat, (0, 0))
    both.paste(rocket, (cat.width, 0))
    x0 = cat.width
    r = explain(api, both, ids["rocket_original"], box=f"{x0},0,{x0 + rocket.width},{rocket.height}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verified"] and body["box"] == [x0, 0, x0 + rocket.width, rocket.height]
    pairs = np.array(body["pairs"])
    assert (pairs[:, 0] >= x0).all(), "points come from the box only, in the whole query's pixels"
    assert np.median(np.abs(pairs[:, 0] - x0 - pairs[:, 2])) < 4  # the rocket half is the indexed rocket


def test_an_indexed_query_by_id_and_the_counts_agree_with_the_reranker(api, ids, sample) -> None:
    from imagefinder.rerank import LocalExtractor, count_inliers, inlier_mask, mutual_matches

    r = httpx.post(f"{api.url}/search/matches", json={"result_id": ids["rocket_mirror"], "id": ids["rocket_original"]},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["verified"]
    # the pairs are the re-ranker's evidence: the same inliers that it counts
    extract = LocalExtractor()
    a, b = extract(Image.open(sample / "rocket_original.jpg")), extract(Image.open(sample / "rocket_crop.jpg"))
    ia, ib = mutual_matches(a, b)
    pa, pb = a.keypoints[ia], b.keypoints[ib]
    assert inlier_mask(pa, pb).sum() == count_inliers(pa, pb) > 0


def test_bad_requests_say_what_is_wrong(api, ids, sample) -> None:
    image = Image.open(sample / "rocket_original.jpg")
    r = httpx.post(f"{api.url}/search/matches", files={"file": ("q.png", png(image), "image/png")})
    assert r.status_code == 422 and "result_id" in r.json()["detail"]
    assert explain(api, image, 10**6).status_code == 404
    r = httpx.post(f"{api.url}/search/matches", json={"result_id": 1, "id": 2, "box": [0, 0, 50, 50]})
    assert r.status_code == 422 and "box" in r.text
    r = explain(api, image, ids["rocket_crop"], box="0,0,9000,20")
    assert r.status_code == 422 and "does not fit" in r.json()["detail"]
    assert not is_write("POST", "/search/matches")
    # a picture too small for local features (XFeat's 32 px grid) has none, rather than a server error
    tiny = explain(api, Image.new("RGB", (16, 16), "red"), ids["rocket_crop"])
    assert tiny.status_code == 200 and tiny.json()["inliers"] == 0 and not tiny.json()["verified"]

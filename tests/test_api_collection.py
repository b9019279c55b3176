"""The collection over the API, on a real socket: paged listing, metadata filters inside the search,
batch search, one value per parameter (k twice -> 422), result URLs right behind the page's proxy.

The index: the built-in sample photos (9 subjects x 5 edits), listed in a CSV with a `year`
column and a `place` column that is "far" for the rocket and hubble photos only, subjects
unlike the coffee query, so that every far image ranks below the coffee ones.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from PIL import Image

from imagefinder.api import Settings, create_app
from imagefinder.api.schemas import SearchResponse
from imagefinder.api.testing import ServerThread, start_asgi, start_wsgi
from imagefinder.web import create_app as create_web_app

FAR_SUBJECTS = ("rocket", "hubble")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Path, Path, dict[str, dict]]:
    from imagefinder import build_index
    from imagefinder.sample import write_sample

    root = tmp_path_factory.mktemp("collection")
    images, query = write_sample(root / "images")
    listing = root / "photos.csv"
    meta: dict[str, dict] = {}
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "year", "place"])
        for i, path in enumerate(sorted(images.glob("*.jpg"))):
            row = {"year": str(2000 + i), "place": "far" if path.name.startswith(FAR_SUBJECTS) else "near"}
            meta[str(path)] = row
            writer.writerow([str(path), row["year"], row["place"]])
    index = build_index([str(listing)], root / "index", embedder=embedder, workers=2).path
    return index, query, meta


@pytest.fixture(scope="module")
def api(collection) -> Iterator[ServerThread]:
    server = start_asgi(create_app(collection[0], Settings(cors_origins=("http://127.0.0.1:5000",))))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(api: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60, trust_env=False) as c:
        yield c


def query_upload(collection) -> dict:
    return {"file": ("query.jpg", collection[1].read_bytes(), "image/jpeg")}


def test_listing_pages_through_everything_newest_first(client: httpx.Client, collection) -> None:
    seen: list[int] = []
    offset = 0
    while True:
        page = client.get("/images", params={"offset": offset, "limit": 10}).json()
        assert page["total"] == 45 and page["offset"] == offset and page["limit"] == 10
        seen += [image["id"] for image in page["images"]]
        offset += 10
        if offset >= page["total"]:
            break
    assert seen == sorted(seen, reverse=True) and sorted(seen) == list(range(45))
    first = client.get("/images", params={"limit": 1}).json()["images"][0]
    assert first["id"] == 44 and first["meta"]["year"] and client.get(urljoin(f"{client.base_url}/images",
                                                                             first["thumbnail_url"])).status_code == 200


def test_listing_filters(client: httpx.Client, collection) -> None:
    _, _, meta = collection
    far = client.get("/images", params={"where": "place=far", "limit": 100}).json()
    assert far["total"] == 10 and all(Path(i["source"]).name.startswith(FAR_SUBJECTS) for i in far["images"])
    both = client.get("/images", params=[("where", "place=far"), ("where", "year>=2040"), ("limit", 100)]).json()
    expected = {s for s, m in meta.items() if m["place"] == "far" and int(m["year"]) >= 2040}
    assert {i["source"] for i in both["images"]} == {Path(s).name for s in expected} and both["total"] == len(expected)
    folder = str(Path(next(iter(meta))).parent) + "/coffee_"
    coffee = client.get("/images", params={"source_prefix": folder}).json()
    assert coffee["total"] == 5
    for bad in ({"where": "year"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
        r = client.get("/images", params=bad)
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), r.text


def test_a_filter_on_far_down_images_still_returns_k(client: httpx.Client, collection) -> None:
    unfiltered = client.post("/search", params={"k": 8}, files=query_upload(collection)).json()["results"]
    assert not any(r["meta"]["place"] == "far" for r in unfiltered)  # post-filtering these 8 would leave none
    full = client.post("/search", params={"k": 45}, files=query_upload(collection)).json()["results"]
    far_ranks = [r["rank"] for r in full if r["meta"]["place"] == "far"]
    assert min(far_ranks) > 8
    for request in (
        {"params": {"k": 8, "where": "place=far"}, "files": query_upload(collection)},  # query string
        {"data": {"k": "8", "where": "place=far"}, "files": query_upload(collection)},  # form fields
    ):
        body = client.post("/search", **request).json()
        assert body["where"] == ["place=far"] and len(body["results"]) == 8, body
        assert all(r["meta"]["place"] == "far" for r in body["results"])
        assert [r["id"] for r in body["results"]] == [r["id"] for r in full if r["meta"]["place"] == "far"][:8]
    by_id = client.post("/search", json={"id": unfiltered[0]["id"], "k": 4, "where": ["place=far", "year<2100"]})
    assert by_id.status_code == 200 and len(by_id.json()["results"]) == 4
    assert client.post("/search", json={"id": 0, "where": ["nope=1"]}).json()["results"] == []
    r = client.post("/search", json={"id": 0, "where": ["year"]})
    assert r.status_code == 422 and "COLUMN OP VALUE" in r.json()["detail"]


@pytest.mark.parametrize("request_args", [
    {"params": {"k": 3}, "json": {"id": 0, "k": 5}},
    {"params": [("k", 3), ("k", 4)], "json": {"id": 0}},
    {"content": b'{"id": 0, "k": 3, "k": 4}', "headers": {"Content-Type": "application/json"}},
    {"params": {"metric": "vote"}, "json": {"id": 0, "metric": "cosine"}},
    {"params": {"where": "year>1"}, "json": {"id": 0, "where": ["year<3000"]}},
    {"params": {"k": 3}, "data": {"k": "4"}, "files": {"file": ("q.png", b"", "image/png")}},
])
def test_a_parameter_given_twice_is_refused(client: httpx.Client, request_args: dict) -> None:
    r = client.post("/search", **request_args)
    assert r.status_code == 422 and "given" in r.json()["detail"], r.text


def test_batch_search(client: httpx.Client, collection) -> None:
    single = [client.post("/search", json={"id": i, "k": 3}).json() for i in (0, 20)]
    batch = client.post("/search/batch", json={"queries": [{"id": 0}, {"id": 20}, {"id": 999}], "k": 3}).json()
    answers = batch["searches"]
    assert [a["query"] for a in answers[:2]] == [s["query"] for s in single]
    assert [[r["id"] for r in a["results"]] for a in answers[:2]] == [[r["id"] for r in s["results"]] for s in single]
    assert answers[2]["status"] == 404 and "999" in answers[2]["error"]
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, "PNG")
    files = [("file", ("query.jpg", collection[1].read_bytes(), "image/jpeg")),
             ("file", ("notes.txt", b"not an image at all", "text/plain")),
             ("file", ("red.png", png.getvalue(), "image/png"))]
    uploads = client.post("/search/batch", data={"k": "2", "where": "place=far"}, files=files)
    assert uploads.status_code == 200, uploads.text
    a, b, c = uploads.json()["searches"]
    assert a["query"]["filename"] == "query.jpg" and len(a["results"]) == 2
    assert all(r["meta"]["place"] == "far" for r in a["results"] + c["results"])
    assert b["status"] == 415 and "notes.txt" in b["error"] and b["query"]["filename"] == "notes.txt"
    assert urljoin(str(uploads.url), a["results"][0]["thumbnail_url"]) == \
        f"{client.base_url}/images/{a['results'][0]['id']}/thumbnail".replace("//images", "/images")
    too_many = client.post("/search/batch", json={"queries": [{"id": 0}] * 17})
    assert too_many.status_code == 422


def test_result_urls_work_behind_the_page_proxy(api: ServerThread) -> None:
    web = start_wsgi(create_web_app(api.url))
    try:
        with httpx.Client(timeout=60, trust_env=False) as c:
            for method, path, kwargs in (
                ("POST", "/api/search", {"json": {"id": 3, "k": 2}}),
                ("POST", "/api/search/batch", {"json": {"queries": [{"id": 3}], "k": 2}}),
                ("GET", "/api/images?limit=2", {}),
                ("GET", "/api/images/3/info", {}),
            ):
                r = c.request(method, f"{web.url}{path}", **kwargs)
                assert r.status_code == 200, r.text
                body = r.json()
                items = (body.get("results") or body.get("images")
                         or (body["searches"][0]["results"] if "searches" in body else [body]))
                for item in items:
                    for key in ("thumbnail_url", "image_url"):
                        url = urljoin(str(r.url), item[key])
                        assert url.startswith(f"{web.url}/api/images/{item['id']}"), (path, url)
                        got = c.get(url)
                        assert got.status_code == 200 and got.headers["content-type"].startswith("image/"), url
    finally:
        web.stop()


def test_one_result_schema_in_the_openapi_document(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"SearchResponse", "SearchResult", "SearchFailure", "BatchSearchResponse", "ImagePage"} <= set(components)
    ok = schema["paths"]["/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SearchResponse")
    listing = schema["paths"]["/images"]["get"]["parameters"]
    assert {p["name"] for p in listing} == {"offset", "limit", "where", "source_prefix"}
    body = client.post("/search", json={"id": 1, "k": 2}).json()
    SearchResponse.model_validate(body)  # what the CLI's --json prints too (tests/test_cli_batch.py)

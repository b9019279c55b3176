"""The HTTP half of `make container-test`: add the sample's edited copies through the API, search.

    python scripts/container_check.py --api http://127.0.0.1:PORT --web http://127.0.0.1:PORT2

The container already holds an index of the 9 sample originals (made by its CLI). This uploads
the other 36 images of the built-in sample (`POST /images`), searches with the held-out query
(`POST /search`) and checks that the five copies of its photo come first, then that the web page
and its `/api` forwarding answer. Prints what it did; exit code 1 on any failed check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from imagefinder.sample import QUERY_PHOTO, write_sample

BATCH = 9  # the API takes up to 10 files per request


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


def upload_edits(client: httpx.Client, images: Path) -> int:
    edits = sorted(p for p in images.glob("*.jpg") if not p.stem.endswith("_original"))
    added = 0
    for start in range(0, len(edits), BATCH):
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in edits[start:start + BATCH]]
        r = client.post("/images", files=files)
        check(r.status_code == 201, f"POST /images ({len(files)} files) -> {r.status_code}")
        added += sum(1 for image in r.json()["images"] if image["created"])
    return added


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--api", required=True)
    p.add_argument("--web", required=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=args.api, timeout=120, trust_env=False) as api:
        images, query = write_sample(Path(tmp) / "images")
        before = api.get("/stats").json()
        check(before["images"] == 9, f"GET /stats: {before['images']} images indexed by the container's CLI")
        t0 = time.monotonic()
        added = upload_edits(api, images)
        check(added == 36, f"added {added} images through the API in {time.monotonic() - t0:.1f} s")
        after = api.get("/stats").json()
        check(after["images"] == 45, f"GET /stats: {after['images']} images, generation {after['generation']}")
        r = api.post("/search", files={"file": (query.name, query.read_bytes(), "image/jpeg")}, data={"k": "5"})
        check(r.status_code == 200, f"POST /search {query.name} -> {r.status_code}")
        body = r.json()
        names = [hit["meta"].get("filename") or Path(hit["source"]).name for hit in body["results"]]
        print(f"     top 5 ({body['took_ms']} ms): " + ", ".join(
            f"{n} {hit['score']:.3f}" for n, hit in zip(names, body["results"])))
        check(all(n.startswith(QUERY_PHOTO + "_") for n in names) and len(names) == 5,
              f"the five {QUERY_PHOTO} copies come first")
        thumb = api.get(body["results"][0]["thumbnail_url"])
        check(thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8", "GET the top result's thumbnail (JPEG)")
    with httpx.Client(base_url=args.web, timeout=30, trust_env=False) as web:
        page = web.get("/")
        check(page.status_code == 200 and "<html" in page.text.lower(), "GET / on the web page")
        stats = web.get("/api/stats")
        check(stats.status_code == 200 and stats.json()["images"] == 45, "GET /api/stats through the web page")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Query latency of a loaded `ImageFinder` on a 1000-image ukbench index.

For each metric (cosine, euclidean, vote) times, per query image:
- search:          `finder.search(path, k)` end to end: read + decode + embed + FAISS + ranking + metadata;
- search_vectors:  `finder.search_vectors(vector, k)` with the query's features precomputed
                   (FAISS + re-ranking + SQLite metadata: everything but the image and the model);
and once, metric-independent, `finder.embed(path)` (read + decode + preprocess + model).
The first search of a fresh `ImageFinder` (model session creation) is reported separately.

    python benchmarks/search_latency.py                  # builds a temporary index first
    python benchmarks/search_latency.py --index my-index # reuse (built there if missing)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imagefinder import ImageFinder, build_index
from imagefinder.search import METRICS

DEFAULT_DATA = Path("/work/shared/data/ukbench1000")


def timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {"median_ms": round(float(np.median(a)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "mean_ms": round(float(a.mean()), 2), "n": len(a)}


def ensure_index(index: Path | None, images: list[Path], tmp: Path) -> tuple[Path, float | None]:
    """The index to query (built from `images` if absent) and the build time, if built."""
    path = index or tmp / "index"
    if (path / "manifest.json").is_file():
        return path, None
    start = time.perf_counter()
    build_index([str(p) for p in images], path)
    return path, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset with images/ (default {DEFAULT_DATA})")
    parser.add_argument("--index", type=Path, metavar="DIR", help="index to reuse (built there if missing)")
    parser.add_argument("--queries", type=int, default=100, help="distinct query images (default 100)")
    parser.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed searches per metric first (default 5)")
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    images = sorted((args.data / "images").glob("*.jpg"))
    if not images:
        parser.error(f"no .jpg files in {args.data / 'images'}")
    # Evenly spread over the collection: every 10th image for 100 queries of 1000.
    queries = [images[i * len(images) // args.queries] for i in range(min(args.queries, len(images)))]
    for q in queries:
        q.read_bytes()  # page cache: time decoding, not the first disk read

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        path, build_seconds = ensure_index(args.index, images, Path(tmp))
        start = time.perf_counter()
        finder = ImageFinder(path)
        open_ms = (time.perf_counter() - start) * 1000
        first_ms = timed_ms(lambda: finder.search(queries[0], k=args.k))  # creates the model session
        try:
            vectors = [finder.embed(q) for q in queries]
            embed = [timed_ms(lambda q=q: finder.embed(q)) for q in queries]
            rows: dict[str, dict] = {"embed": stats(embed)}
            for metric in METRICS:
                for q in queries[: args.warmup]:
                    finder.search(q, k=args.k, metric=metric)
                rows[f"search {metric}"] = stats(
                    [timed_ms(lambda q=q, m=metric: finder.search(q, k=args.k, metric=m)) for q in queries])
                rows[f"search_vectors {metric}"] = stats(
                    [timed_ms(lambda v=v, m=metric: finder.search_vectors(v[None], k=args.k, metric=m))
                     for v in vectors])
            info = finder.info()
        finally:
            finder.close()

    result = {
        "index_images": info["counts"]["indexed"], "index_spec": info["index_spec"], "model": info["model"],
        "queries": len(queries), "k": args.k, "open_index_ms": round(open_ms, 2),
        "first_search_ms": round(first_ms, 2), "build_seconds": build_seconds and round(build_seconds, 2),
        "latency": rows, "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if not args.json:
        print(f"{result['index_images']} images, {result['model']}, {result['index_spec']}, "
              f"{len(queries)} queries, k={args.k}")
        print(f"open index {open_ms:.1f} ms; first search (model session creation) {first_ms:.1f} ms\n")
        print(f"| {'timed call':<26} | {'median ms':>9} | {'p90 ms':>8} |")
        print(f"|{'-' * 28}|{'-' * 10}:|{'-' * 9}:|")
        for name, s in rows.items():
            print(f"| {name:<26} | {s['median_ms']:9.2f} | {s['p90_ms']:8.2f} |")
        print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

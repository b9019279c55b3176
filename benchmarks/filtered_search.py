"""Filtered vs unfiltered search latency at 100k images (synthetic clustered vectors).

Builds one index per spec with `index_features` (each image gets a `bucket` column 0..999, so
`bucket<N` matches N/1000 of the collection) and times `ImageFinder.search_vectors(q, k)` per
query: unfiltered, then with filters matching 50%, 10%, 1% and 0.1% of the images. The first
search with a filter includes the SQL that finds the matching ids (a scan of the id table's
JSON metadata: `first_ms`); the store keeps the last filters' ids, so the following ones
(`median_ms`) pay the selector (or the exact scoring of few matches) and the ranking; every filtered answer is
checked to hold k results that all match.

Numbers depend on machine load: report them as ratios to the unfiltered median of the same
run, with `uptime`'s load.

    python benchmarks/filtered_search.py                        # 100k x 512, Flat and the 100k auto spec
    python benchmarks/filtered_search.py --n 20000 --specs Flat # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.index.filters import Filter
from imagefinder.pipeline import index_features

SELECTIVITY = {"50%": 500, "10%": 100, "1%": 10, "0.1%": 1}  # bucket < N of 1000


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 10), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def time_queries(finder: ImageFinder, queries: np.ndarray, k: int, where: Filter | None,
                 bucket_limit: int | None) -> list[float]:
    out = []
    for q in queries:
        start = time.perf_counter()
        results = finder.search_vectors(q[None], k, where=where)[0]
        out.append((time.perf_counter() - start) * 1000)
        if bucket_limit is not None:
            expected = min(k, bucket_limit * (finder.store.ntotal // 1000))
            assert len(results) == expected, f"{len(results)} results for a filter matching {bucket_limit}/1000"
            assert all(int((r.meta or {})["bucket"]) < bucket_limit for r in results)
    return out


def run_spec(spec: str, x: np.ndarray, queries: np.ndarray, k: int, tmp: Path) -> dict:
    metas = [{"bucket": str(i % 1000)} for i in range(len(x))]
    start = time.perf_counter()
    report = index_features(tmp / spec.replace(",", "_"), x, IndexConfig(spec=None if spec == "auto" else spec),
                            metas=metas)
    build_s = time.perf_counter() - start
    finder = ImageFinder(report.path)
    try:
        time_queries(finder, queries[:5], k, None, None)  # warm-up: page cache, first SQL
        rows: dict[str, dict] = {}
        base = float(np.median(time_queries(finder, queries, k, None, None)))
        rows["unfiltered"] = {"median_ms": round(base, 3), "ratio": 1.0}
        for label, limit in SELECTIVITY.items():
            samples = time_queries(finder, queries, k, Filter.parse([f"bucket<{limit}"]), limit)
            first, rest = samples[0], samples[1:]  # the first scans the id table; the store keeps the answer
            med = float(np.median(rest))
            rows[label] = {"first_ms": round(first, 1), "first_ratio": round(first / base, 1),
                           "median_ms": round(med, 3), "p90_ms": round(float(np.percentile(rest, 90)), 3),
                           "ratio": round(med / base, 2)}
        return {"spec": finder.manifest.index_spec, "build_s": round(build_s, 1), "latency": rows}
    finally:
        finder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="images (default 100k)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension (default 512)")
    parser.add_argument("--queries", type=int, default=50, help="queries per case (default 50)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--specs", default="Flat,auto", help="comma-separated FAISS specs; auto = the default")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args()
    x = clustered(args.n, args.dim)
    queries = clustered(args.queries, args.dim, seed=1)
    result: dict = {"n": args.n, "dim": args.dim, "k": args.k, "queries": args.queries,
                    "load_before": os.getloadavg(), "specs": {}}
    with tempfile.TemporaryDirectory(prefix="filtered-bench-") as tmp:
        for spec in args.specs.split(","):
            result["specs"][spec] = run_spec(spec, x, queries, args.k, Path(tmp))
            print(json.dumps({spec: result["specs"][spec]}), flush=True)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

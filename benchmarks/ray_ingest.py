"""Ray Data runner vs the local runner on ukbench1000, and Milvus Lite vs FAISS results, in one run.

1. `build_index` with `LocalRunner` (threads), then with `RayRunner` on a local Ray instance
   (`ray.init(num_cpus=<cores>)`, timed apart): images/s of each, and whether both produced the
   same ids, sources and features. On 2 cores parity is the goal: the point of the Ray runner
   is that the same stages run on a cluster (`RayRunner(address="ray://head:10001")`).
2. The features of that index put into a Milvus Lite collection (`--store x.db`, FLAT) and
   searched for every image (k=10) through `ImageFinder`: same ids in the same order as the
   FAISS Flat index? (Differences only where scores tie.)

    python benchmarks/ray_ingest.py [--data DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from imagefinder import ImageFinder, IndexConfig, build_index
from imagefinder.embed import Embedder
from imagefinder.pipeline import index_features
from imagefinder.runners.local import LocalRunner
from imagefinder.runners.ray import RayRunner

DEFAULT_DATA = Path("/work/shared/data/ukbench1000")


def contents(path: Path) -> tuple[dict, np.ndarray]:
    f = ImageFinder(path)
    try:
        n = f.manifest.rows
        rows = f.store.records(list(range(n)))
        return {i: (r["source"], r["status"]) for i, r in rows.items()}, np.asarray(f.store.embeddings, np.float32)
    finally:
        f.close()


def runners(images: Path, tmp: Path, batch_size: int) -> dict:
    embedder = Embedder("efficientnet-lite0")  # exported + loaded once, outside the timings
    out: dict = {"images": len(list(images.iterdir()))}
    local = build_index([str(images)], tmp / "local", embedder=embedder, runner=LocalRunner(), batch_size=batch_size)
    out["local"] = {"seconds": round(local.seconds, 2), "images_per_second": round(local.images_per_second, 1)}
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    out["ray_init_seconds"] = round(time.perf_counter() - t0, 2)
    try:
        for run in ("ray_first", "ray_second"):
            report = build_index([str(images)], tmp / run, embedder=embedder, runner=RayRunner(), batch_size=batch_size)
            out[run] = {"seconds": round(report.seconds, 2), "images_per_second": round(report.images_per_second, 1)}
    finally:
        ray.shutdown()
    rows_l, emb_l = contents(tmp / "local")
    rows_r, emb_r = contents(tmp / "ray_second")
    out["same_ids_and_sources"] = rows_l == rows_r
    out["max_feature_difference"] = float(np.abs(emb_l - emb_r).max())
    out["ray_vs_local_speed"] = round(out["ray_second"]["images_per_second"] / out["local"]["images_per_second"], 2)
    return out


def milvus_parity(index: Path, tmp: Path, k: int = 10) -> dict:
    source = ImageFinder(index)
    features = np.asarray(source.store.embeddings, np.float32)
    source.close()
    index_features(tmp / "milvus", features, IndexConfig(store=str(tmp / "vectors.db")))
    index_features(tmp / "faiss", features, IndexConfig(spec="Flat"))
    a, b = ImageFinder(tmp / "faiss"), ImageFinder(tmp / "milvus")
    same = ties = other = 0
    max_diff = 0.0
    timings = {"faiss": [], "milvus": []}
    for i in range(len(features)):
        t0 = time.perf_counter()
        ra = a.search_vectors(features[i:i + 1], k)[0]
        timings["faiss"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rb = b.search_vectors(features[i:i + 1], k)[0]
        timings["milvus"].append(time.perf_counter() - t0)
        max_diff = max(max_diff, float(np.abs(np.array([r.score for r in ra]) - [r.score for r in rb]).max()))
        if [r.id for r in ra] == [r.id for r in rb]:
            same += 1
        elif sorted((round(r.score, 5), r.id) for r in ra) == sorted((round(r.score, 5), r.id) for r in rb):
            ties += 1
        else:
            other += 1
    a.close()
    b.close()
    return {"queries": len(features), "k": k, "identical_ids_and_order": same, "differ_only_in_ties": ties,
            "differ": other, "max_score_difference": max_diff,
            "faiss_ms_per_query": round(1000 * float(np.median(timings["faiss"])), 3),
            "milvus_lite_ms_per_query": round(1000 * float(np.median(timings["milvus"])), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ray-ingest-") as tmp:
        result = {"load_avg_at_start": round(load, 1), **runners(args.data / "images", Path(tmp), args.batch_size)}
        result["milvus"] = milvus_parity(Path(tmp) / "local", Path(tmp))
    if not args.json:
        r = result
        print(f"local runner: {r['local']['images_per_second']} images/s;  Ray runner: "
              f"{r['ray_first']['images_per_second']} images/s first run, {r['ray_second']['images_per_second']} "
              f"second (+{r['ray_init_seconds']} s ray.init once); same ids: {r['same_ids_and_sources']}, "
              f"max feature difference {r['max_feature_difference']:.2g}")
        m = r["milvus"]
        print(f"Milvus Lite vs FAISS Flat, {m['queries']} queries k={m['k']}: {m['identical_ids_and_order']} identical, "
              f"{m['differ_only_in_ties']} differ only in tied scores, {m['differ']} differ; "
              f"{m['faiss_ms_per_query']} vs {m['milvus_lite_ms_per_query']} ms/query")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

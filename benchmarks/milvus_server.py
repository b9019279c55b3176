"""Per-node figures of a real Milvus standalone server for benchmarks/SCALE.md (short runs).

    python benchmarks/milvus_server.py --n 50000 --out benchmarks/results/milvus-server.json

Starts scripts/milvus_local.py (127.0.0.1 only, data in a temp dir), inserts n 1280-d unit
vectors shaped like the project's features (clusters of 4 plus noise) through the project's
store (`MilvusVectors.insert`), then for each index type: build time, resident memory of the
Milvus process with the collection loaded (its growth over the empty server, per vector),
search p50/p99 at k=10 for 200 single queries, and recall@10 against exact search.
The machine's load (`uptime`) is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imagefinder.stores.milvus import MilvusVectors

INDEXES = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 64, "nbits": 8}, {"nprobe": 32}),
    "HNSW": ({"M": 32, "efConstruction": 200}, {"ef": 128}),
}


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 4), dim)).astype(np.float32)
    x = centres[np.arange(n) // 4 % len(centres)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def milvus_rss(helper: subprocess.Popen) -> int:
    kids = psutil.Process(helper.pid).children(recursive=True)
    return sum(p.memory_info().rss for p in kids if p.name() == "milvus")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "milvus-server.json")
    args = p.parse_args()
    result: dict = {"n": args.n, "dim": args.dim, "load_before": os.getloadavg(), "cpus": os.cpu_count()}
    x = vectors(args.n, args.dim)
    q = vectors(args.queries, args.dim, seed=1) * 0.3 + x[: args.queries] * 0.7
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        helper = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "milvus_local.py"), "--data", f"{tmp}/data",
                                   "--port", "0", "--ready-file", str(ready)], stderr=subprocess.DEVNULL)
        try:
            t0 = time.monotonic()
            while not ready.exists():
                assert helper.poll() is None and time.monotonic() - t0 < 300, "Milvus did not start"
                time.sleep(0.2)
            result["start_s"] = round(time.monotonic() - t0, 1)
            uri = f"milvus://127.0.0.1:{ready.read_text()}"
            time.sleep(5)
            result["rss_empty_mb"] = round(milvus_rss(helper) / 2**20)
            result["indexes"] = {}
            for name, (build_params, search_params) in INDEXES.items():
                result["indexes"][name] = run_one(uri, name, build_params, search_params, x, q, exact, helper)
                print(name, result["indexes"][name], flush=True)
        finally:
            helper.send_signal(signal.SIGTERM)
            helper.wait(120)
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def run_one(uri: str, name: str, build_params: dict, search_params: dict, x: np.ndarray, q: np.ndarray,
            exact: np.ndarray, helper: subprocess.Popen) -> dict:
    from imagefinder.stores import milvus as store

    store.INDEX_PARAMS[name], store.SEARCH_PARAMS[name] = build_params, search_params
    rss0 = milvus_rss(helper)
    t = time.monotonic()
    vs = MilvusVectors.create(f"{uri}?index={name}", x.shape[1], Path(f"bench_{name.lower()}"))
    vs.insert(np.arange(len(x)), x)
    insert_s = time.monotonic() - t
    t = time.monotonic()
    vs.client.flush(vs.collection)  # seal the segments: the index is built on sealed segments
    vs.client.release_collection(vs.collection)
    vs.client.load_collection(vs.collection)
    deadline = time.monotonic() + 900
    while name != "FLAT" and time.monotonic() < deadline:  # wait for the index build to cover every row
        info = vs.client.describe_index(vs.collection, index_name="vector")
        if int(info.get("indexed_rows", 0)) >= len(x):
            break
        time.sleep(1)
    vs.client.release_collection(vs.collection)
    vs.client.load_collection(vs.collection)
    index_s = time.monotonic() - t
    times, hits = [], 0
    for i in range(len(q)):
        t1 = time.perf_counter()
        _, ids = vs.search(q[i : i + 1], 10)
        times.append(time.perf_counter() - t1)
        hits += len(set(ids[0].tolist()) & set(exact[i].tolist()))
    rss = milvus_rss(helper)
    vs.drop()
    return {"insert_s": round(insert_s, 1), "insert_per_s": round(len(x) / insert_s), "flush_index_load_s": round(index_s, 1),
            "rss_growth_mb": round((rss - rss0) / 2**20), "bytes_per_vector": round((rss - rss0) / len(x)),
            "p50_ms": round(1000 * float(np.median(times)), 2), "p99_ms": round(1000 * float(np.quantile(times, 0.99)), 2),
            "recall_at_10": round(hits / (10 * len(q)), 4), "build": build_params, "search": search_params,
            "load": os.getloadavg()}


if __name__ == "__main__":
    sys.exit(main())

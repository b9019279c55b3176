"""Per-node figures of a real Milvus standalone server for benchmarks/SCALE.md (short runs).

    python benchmarks/milvus_server.py --n 50000 --out benchmarks/results/milvus-server.json

For each index type, a fresh server (scripts/milvus_local.py: 127.0.0.1 only, data in a temp
dir): n 1280-d unit vectors synthesised from real ukbench1000 features as benchmarks/scale.py
does, inserted through the project's store (`MilvusVectors.insert`); flush + index build +
load time; resident memory of the Milvus process over the empty server, per vector; search
p50/p99 at k=10 for single queries with Strong consistency (what the store uses) and Bounded;
recall@10 against exact search. The machine's load average is recorded with every figure.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # the feature synthesiser of benchmarks/scale.py

from imagefinder.stores.milvus import MilvusVectors

INDEXES = {
    "FLAT": ({}, {}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 64, "nbits": 8}, {"nprobe": 32}),
    "HNSW": ({"M": 32, "efConstruction": 200}, {"ef": 128}),
}


def milvus_rss(helper: subprocess.Popen) -> int:
    kids = psutil.Process(helper.pid).children(recursive=True)
    return sum(p.memory_info().rss for p in kids if p.name() == "milvus")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=40_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--indexes", nargs="+", default=list(INDEXES), choices=list(INDEXES))
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "imagefinder-scale")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "milvus-server.json")
    args = p.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    real = scale.real_features(args.data, scale.UKBENCH / "images")
    db, queries = scale.synthesize(real, args.n, args.queries, args.data)
    x, q = scale.unit(db), scale.unit(queries)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    result: dict = {"n": args.n, "dim": x.shape[1], "cpus": os.cpu_count(), "indexes": {}}
    if args.out.is_file():  # runs of other index types, same n: kept
        previous = json.loads(args.out.read_text())
        if previous.get("n") == args.n:
            result["indexes"] = previous["indexes"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.indexes:
        result["indexes"][name] = run_one(name, x, q, exact)
        print(name, result["indexes"][name], flush=True)
        args.out.write_text(json.dumps(result, indent=1))  # after each: a long build may be cut short
    return 0


def run_one(name: str, x: np.ndarray, q: np.ndarray, exact: np.ndarray) -> dict:
    from imagefinder.stores import milvus as store

    build_params, search_params = INDEXES[name]
    store.INDEX_PARAMS[name], store.SEARCH_PARAMS[name] = build_params, search_params
    out: dict = {"build": build_params, "search": search_params, "load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        helper = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "milvus_local.py"), "--data", f"{tmp}/data",
                                   "--port", "0", "--ready-file", str(ready)], stderr=subprocess.DEVNULL)
        try:
            t = time.monotonic()
            while not ready.exists():
                assert helper.poll() is None and time.monotonic() - t < 300, "Milvus did not start"
                time.sleep(0.2)
            out["server_start_s"] = round(time.monotonic() - t, 1)
            time.sleep(3)
            rss0 = milvus_rss(helper)
            out.update(measure(f"milvus://127.0.0.1:{ready.read_text()}", name, x, q, exact))
            rss = milvus_rss(helper)
            out.update(rss_empty_mb=round(rss0 / 2**20), rss_growth_mb=round((rss - rss0) / 2**20),
                       rss_bytes_per_vector=round((rss - rss0) / len(x)))
        finally:
            helper.send_signal(signal.SIGTERM)
            helper.wait(120)
    store._clients.clear()
    store._loaded.clear()
    out["load_end"] = os.getloadavg()
    return out


def measure(uri: str, name: str, x: np.ndarray, q: np.ndarray, exact: np.ndarray) -> dict:
    t = time.monotonic()
    vs = MilvusVectors.create(f"{uri}?index={name}", x.shape[1], Path(f"bench_{name.lower()}"))
    vs.insert(np.arange(len(x)), x)
    insert_s = time.monotonic() - t
    t = time.monotonic()
    vs.client.flush(vs.collection)  # seal the segments: indexes are built on sealed segments
    deadline = time.monotonic() + 900
    while name != "FLAT" and time.monotonic() < deadline:  # wait until the index covers every row
        if int(vs.client.describe_index(vs.collection, index_name="vector").get("indexed_rows", 0)) >= len(x):
            break
        time.sleep(1)
    vs.client.release_collection(vs.collection)
    vs.client.load_collection(vs.collection)
    index_s = time.monotonic() - t
    out: dict[str, object] = {"insert_s": round(insert_s, 1), "insert_per_s": round(len(x) / insert_s),
           "flush_index_load_s": round(index_s, 1)}
    for level in ("Strong", "Session", "Bounded"):
        times, hits = [], 0
        for i in range(len(q)):
            t1 = time.perf_counter()
            found = vs.client.search(vs.collection, data=q[i:i + 1].tolist(), limit=10, consistency_level=level,
                                     search_params={"metric_type": "IP", "params": vs.info["search_params"]})
            times.append(time.perf_counter() - t1)
            hits += len({int(h["id"]) for h in found[0]} & set(exact[i].tolist()))
        out[level] = {"p50_ms": round(1000 * float(np.median(times)), 1),
                      "p99_ms": round(1000 * float(np.quantile(times, 0.99)), 1),
                      "recall_at_10": round(hits / (10 * len(q)), 3)}
    return out


if __name__ == "__main__":
    sys.exit(main())

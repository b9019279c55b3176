"""Scale benchmark: every index type at 100k and 1M vectors that look like our embeddings.

Data: synthetic 1280-d raw features (the dimension the index sees in production: the PCA is
part of the index, so its cost and its loss are measured too) generated from the real
EfficientNet-Lite0 features of ukbench1000 (built once into --data/ukbench1000-index):

    concept  c = (1-t) r_i + t r_j + s1 * N(0, S)      r_i, r_j real features, t ~ U(0, .5)
    image    x = c + s2 * (N(0, S_256) + iso * N(0, I)) 4 images per concept, like UKBench
    query    one more image of a random concept (held out: never in the index)

S is the covariance of the real features (S_256 its top 256 components), so the synthetic
spectrum, mean direction and cosine distribution follow the real ones (printed as `data`).

For each index type the real code path runs: `index.build_vectors` (choice, training, fill,
tuning - cluster labels excluded, they are id-table metadata), `faiss.write_index`, and the
searcher `Store` would use (`index.searcher`: exact re-ranking from the float16 features,
memory-mapped as embeddings.f16 is). Measured: build seconds, peak RSS increase while
building, index bytes/image (file, and RSS of loading it), single-query p50/p99 (FAISS's
OpenMP threads as in production), batch QPS, recall@10 against exact search (numpy, float32).
"add": 1000 images added to a 100k index with `commit_update` (the artifact path that
`imagefinder add` takes after embedding) vs `rebuild` and a full build from features.

    python benchmarks/scale.py                           # 100k + 1M, ~25-40 min on 2 idle cores
    python benchmarks/scale.py --sizes 100000 --configs flat auto
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import psutil

from imagefinder.index import IndexConfig, Record, build_vectors, commit_update, writer_lock
from imagefinder.index.faiss_ops import set_search_params
from imagefinder.index.searcher import searcher
from imagefinder.index.spec import EXACT_LIMIT, auto_clusters
from imagefinder.pipeline import build_index, index_features, rebuild_index

UKBENCH = Path("/work/shared/data/ukbench1000")
DIM = 1280
PROC = psutil.Process()
log = logging.getLogger("scale")


# --- data ------------------------------------------------------------------------------------


def real_features(data: Path, images: Path) -> np.ndarray:
    """Raw features of ukbench1000 from an index built once (the default model)."""
    index = data / "ukbench1000-index"
    if not (index / "manifest.json").is_file():
        log.info("embedding %s once (default model)", images)
        build_index([str(images)], index)
    m = json.loads((index / "manifest.json").read_text())
    return np.fromfile(index / "embeddings.f16", np.float16).reshape(int(m["rows"]), -1).astype(np.float32)


def synthesize(real: np.ndarray, n: int, queries: int, data: Path, seed: int = 0, per: int = 4,
               s1: float = 0.6, s2: float = 0.4, iso: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1280) float16 database (memory-mapped file, cached) and (queries, 1280) float32 held-out queries."""
    tag = f"synth-{n}-{queries}-{seed}-{per}-{s1}-{s2}-{iso}"
    db_file, q_file = data / f"{tag}.f16", data / f"{tag}.queries.npy"
    if db_file.is_file() and q_file.is_file():
        return np.memmap(db_file, np.float16, "r", shape=(n, real.shape[1])), np.load(q_file)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    mean = real.mean(0)
    _, sv, vt = np.linalg.svd(real - mean, full_matrices=False)
    basis = ((sv[:, None] / math.sqrt(len(real))) * vt).astype(np.float32)  # z @ basis ~ N(0, S)
    sigma_iso = float(math.sqrt((sv ** 2).sum() / len(real) / real.shape[1]))
    concepts = -(-n // per)
    i, j = rng.integers(0, len(real), concepts), rng.integers(0, len(real), concepts)
    t = rng.uniform(0, 0.5, concepts).astype(np.float32)[:, None]
    centres = np.empty((concepts, real.shape[1]), np.float32)
    for a in range(0, concepts, 50_000):
        b = min(concepts, a + 50_000)
        centres[a:b] = ((1 - t[a:b]) * real[i[a:b]] + t[a:b] * real[j[a:b]]
                        + s1 * (rng.standard_normal((b - a, len(basis)), np.float32) @ basis))

    def images(concept_ids: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(concept_ids), 256), np.float32) @ basis[:256]
        noise += iso * sigma_iso * rng.standard_normal((len(concept_ids), real.shape[1]), np.float32)
        return centres[concept_ids] + s2 * noise

    tmp = db_file.with_suffix(".tmp")
    db = np.memmap(tmp, np.float16, "w+", shape=(n, real.shape[1]))
    for a in range(0, n, 65_536):
        b = min(n, a + 65_536)
        db[a:b] = images(np.arange(a, b) // per)
    db.flush()
    del db
    os.replace(tmp, db_file)
    q = images(rng.integers(0, concepts, queries)).astype(np.float32)
    np.save(q_file, q)
    log.info("synthesised %d vectors in %.0f s", n, time.perf_counter() - start)
    return np.memmap(db_file, np.float16, "r", shape=(n, real.shape[1])), q


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_top(db: np.ndarray, queries: np.ndarray, k: int, cache: Path) -> np.ndarray:
    """Exact top-k by cosine on the float32 features (chunked numpy), cached."""
    if cache.is_file():
        return np.load(cache)
    q = unit(queries)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for a in range(0, len(db), 65_536):
        s = q @ unit(db[a:a + 65_536]).T
        all_s = np.concatenate([best_s, s], 1)
        all_i = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + s.shape[1]), s.shape)], 1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_i = np.take_along_axis(best_i, order, 1)
    np.save(cache, best_i)
    return best_i


def describe(x: np.ndarray, sample: int = 2000) -> dict:
    """Cosine structure and PCA spectrum: to compare synthetic with real (nn: over the whole set)."""
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))
    v = unit(x[rows])
    s = v[:200] @ v.T
    s[np.arange(200), np.arange(200)] = -1
    nn = np.full((200, 10), -1.0, np.float32)
    for a in range(0, len(x), 65_536):
        c = v[:200] @ unit(x[a:a + 65_536]).T
        own = rows[:200, None] == np.arange(a, a + c.shape[1])[None, :]
        c[own] = -1
        nn = -np.sort(-np.concatenate([nn, c], 1), axis=1)[:, :10]
    sv = np.linalg.svd(v - v.mean(0), compute_uv=False) ** 2
    return {"random_cos_median": round(float(np.median(s[s > -1])), 3), "mean_norm": round(float(np.linalg.norm(v.mean(0))), 3),
            "pca256_variance": round(float(sv[:256].sum() / sv.sum()), 3),
            "nn1_cos_median": round(float(np.median(nn[:, 0])), 3), "nn10_cos_median": round(float(np.median(nn[:, 9])), 3)}


# --- measuring --------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory above the starting point, sampled every 50 ms."""

    def __enter__(self) -> PeakRSS:  # noqa: PYI034
        gc.collect()
        self.base = self.peak = PROC.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, PROC.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, PROC.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.base


def index_rss(file: Path) -> int:
    """Resident memory of the index loaded (not memory-mapped) in a fresh process."""
    code = ("import gc, sys, faiss, psutil; p = psutil.Process(); gc.collect(); a = p.memory_info().rss; "
            "i = faiss.read_index(sys.argv[1]); print(p.memory_info().rss - a)")
    proc = subprocess.run([sys.executable, "-c", code, str(file)], capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1])


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth)]))


def measure_search(search, queries: np.ndarray, truth: np.ndarray, budget_s: float) -> dict:
    """p50/p99 of one query at a time, batch QPS, recall@10; bounded by `budget_s` each."""
    q = unit(queries)
    for row in q[:20]:
        search.search(row[None], 10)  # warm caches / page in the touched features
    times = []
    start = time.perf_counter()
    for row in q:
        t0 = time.perf_counter()
        search.search(row[None], 10)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 20:
            break
    single = np.array(times) * 1000
    # the whole query set as one batch, unless that would take far past the budget (exact search on 1M)
    batch_n = len(q) if np.median(single) / 1000 * len(q) < 4 * budget_s else len(times)
    t0 = time.perf_counter()
    _, batch_ids = search.search(q[:batch_n], 10)
    batch_s = time.perf_counter() - t0
    return {"p50_ms": round(float(np.median(single)), 3), "p99_ms": round(float(np.percentile(single, 99)), 3),
            "single_queries": len(times), "batch_qps": round(batch_n / batch_s, 1), "batch_queries": batch_n,
            "recall_at_10": round(recall_at_10(batch_ids, truth[:batch_n]), 4)}


CONFIGS = {
    # name: (IndexConfig factory by n, rerank variants to measure on the same built index)
    "flat": lambda n: IndexConfig(spec="Flat"),
    "ivf-flat": lambda n: IndexConfig(spec=f"PCA256,IVF{auto_clusters(n)},Flat"),
    "hnsw": lambda n: IndexConfig(spec="PCA256,HNSW32"),
    "auto": lambda n: IndexConfig(),
}


def run_config(name: str, db: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path,
               budget_s: float) -> list[dict]:
    n = len(db)
    config = CONFIGS[name](n)
    ids = np.arange(n, dtype=np.int64)
    load_before = os.getloadavg()[0]
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        built = build_vectors(db, ids, config, rows=n, labels=False)
        build_s = time.perf_counter() - t0
    file = work / f"{name}-{n}.faiss"
    faiss.write_index(built.index, str(file))
    fields, spec = built.fields, built.spec
    del built
    loaded_rss = index_rss(file)
    t0 = time.perf_counter()
    index = faiss.read_index(str(file))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mapped = faiss.read_index(str(file), faiss.IO_FLAG_MMAP_IFC)
    mmap_s = time.perf_counter() - t0
    del mapped
    set_search_params(index, fields.get("nprobe"), fields.get("ef_search"))
    rows = []
    variants = [("", fields.get("rerank"))]
    if fields.get("rerank"):
        variants.append((" (no re-rank)", 0))
    for suffix, rerank in variants:
        search = searcher(index, db, spec, rerank)
        result = measure_search(search, queries, truth, budget_s)
        rows.append({
            "config": name + suffix, "n": n, "spec": spec, "nprobe": fields.get("nprobe"),
            "ef_search": fields.get("ef_search"), "rerank": rerank or None,
            "tuned_recall": (fields.get("tuning") or {}).get("recall_at_10"),
            "build_stages_s": (fields.get("training") or {}).get("stages"),
            "build_s": round(build_s, 1), "build_peak_rss_mb": round(rss.increase / 2 ** 20),
            "index_file_bytes_per_image": round(file.stat().st_size / n, 1),
            "index_rss_bytes_per_image": round(loaded_rss / n, 1),
            "open_s": round(load_s, 3), "open_mmap_s": round(mmap_s, 4),
            "rerank_features_bytes_per_image_on_disk": DIM * 2 if rerank else 0,
            "load_avg_at_start": round(load_before, 1), **result,
        })
        log.info("%s", json.dumps(rows[-1]))
    del index
    file.unlink()
    gc.collect()
    return rows


def add_vs_rebuild(db: np.ndarray, extra: np.ndarray, work: Path) -> list[dict]:
    """1000 new images into a 100k index: `commit_update` vs `rebuild` vs a full build, on disk."""
    rows = []
    n = len(db)
    for name, config in (("auto", IndexConfig()), ("flat", IndexConfig(spec="Flat"))):
        path = work / f"add-{name}"
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        report = index_features(path, db, config)
        full_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with writer_lock(path):
            records = [Record(id=n + i, source=f"vector:{n + i}") for i in range(len(extra))]
            commit_update(path, records, np.asarray(extra, np.float32), [])
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rebuilt = rebuild_index(path)
        rebuild_s = time.perf_counter() - t0
        rows.append({"config": name, "spec": report.index_spec, "n": n, "added": len(extra),
                     "add_s": round(add_s, 2), "rebuild_from_features_s": round(rebuild_s, 1),
                     "full_build_from_features_s": round(full_s, 1), "rebuilt_spec": rebuilt["index_spec"],
                     "load_avg": round(os.getloadavg()[0], 1)})
        log.info("%s", json.dumps(rows[-1]))
        shutil.rmtree(path, ignore_errors=True)
    return rows


# --- report --------------------------------------------------------------------------------


def markdown(rows: list[dict], adds: list[dict]) -> str:
    out = [("| n | config | spec | nprobe/ef | re-rank | build s | build peak RSS MB | index B/image (file / RSS) "
            "| p50 ms | p99 ms | batch QPS | recall@10 |"), "|" + "---|" * 12]
    for r in rows:
        param = r["nprobe"] if r["nprobe"] else (r["ef_search"] or "")
        out.append(f"| {r['n']:,} | {r['config']} | `{r['spec']}` | {param} | {r['rerank'] or ''} | {r['build_s']} | "
                   f"{r['build_peak_rss_mb']} | {r['index_file_bytes_per_image']:.0f} / {r['index_rss_bytes_per_image']:.0f} "
                   f"| {r['p50_ms']} | {r['p99_ms']} | {r['batch_qps']} | {r['recall_at_10']:.3f} |")
    if adds:
        out += ["", "| index (100k) | add 1000 (s) | rebuild from features (s) | full build from features (s) |",
                "|---|---|---|---|"]
        for a in adds:
            out.append(f"| `{a['spec']}` | {a['add_s']} | {a['rebuild_from_features_s']} | {a['full_build_from_features_s']} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--skip", nargs="*", default=["hnsw@1000000"], metavar="CONFIG@N",
                        help="combinations to leave out (default: hnsw@1000000, its graph takes too long on 2 cores)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per single-query measurement")
    parser.add_argument("--no-add", action="store_true", help="skip the add-1000-to-100k measurement")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "imagefinder-scale",
                        help="cache for the real features and the synthetic vectors")
    parser.add_argument("--images", type=Path, default=UKBENCH / "images")
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in ("imagefinder.index", "imagefinder.pipeline", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args.data.mkdir(parents=True, exist_ok=True)
    real = real_features(args.data, args.images)
    results: dict = {"machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                                 "ram_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
                                 "faiss": faiss.__version__, "exact_limit": EXACT_LIMIT},
                     "data": {"real_ukbench1000": describe(real)}, "rows": [], "add": []}
    with tempfile.TemporaryDirectory(prefix="scale-", dir=args.data) as tmp:
        work = Path(tmp)
        for n in args.sizes:
            db, queries = synthesize(real, n + (1000 if n == 100_000 else 0), args.queries, args.data)
            extra = None
            if n == 100_000:
                db, extra = db[:n], db[n:]
            results["data"][f"synthetic_{n}"] = describe(db)
            truth = exact_top(db, queries, 10, args.data / f"truth-{n}-{args.queries}.npy")
            for name in args.configs:
                if f"{name}@{n}" in args.skip:
                    continue
                results["rows"] += run_config(name, db, queries, truth, work, args.budget)
                if args.out:
                    args.out.write_text(json.dumps(results, indent=2))
            if extra is not None and not args.no_add:
                results["add"] = add_vs_rebuild(db, extra, work)
            del db
            gc.collect()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["data"]))
    print(markdown(results["rows"], results["add"]))


if __name__ == "__main__":
    main()

"""Evaluate retrieval on a labelled set: DATA_DIR/images/* + DATA_DIR/groundtruth.csv.

groundtruth.csv has `filename,group_id`; images of one group show the same object or scene,
an empty group_id marks a distractor. Two protocols, chosen by the file itself:

- no `role` column (UKBench style): every image is indexed and every image of a group with
  >= 2 members is a query against the whole index (itself removed for map/recall@K);
- a `role` column (`query` | `db`, empty = db; copy-detection style, see `benchdata`): only
  db images are indexed; each query image is embedded like a user's query and ranked against
  them; its relevant images are the db images of its group.

Metrics (means over queries):
- map: average precision over the full ranking, the query itself removed.
- recall@K: share of queries with at least one group member in the top K (query removed).
- ns_score: group members in the top 4 with the query included (UKBench's N-S score, max 4);
  with a query/db split, group members among the top 4 db results.
- with `latency=N`: latency_ms_p50 (wall) and latency_cpu_ms_p50 (process CPU time) of N
  single queries through `ImageFinder.search` from the image file: decode + embed + search
  (+ query expansion, + re-ranking) - what one user request costs.
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .finder import ImageFinder, verify
from .index import IndexConfig
from .index.searcher import Searcher
from .ingest.decode import ImageError, open_image
from .ingest.sources import SourceError
from .pipeline import build_index
from .search import SearchSpace, augment_database, search

KEYS = ("map", "recall@1", "recall@5", "recall@10", "ns_score", "images", "queries",
        "index_seconds", "images_per_second", "precision")
LATENCY_KEYS = ("latency_ms_p50", "latency_cpu_ms_p50")


@dataclass(frozen=True)
class GroundTruth:
    filenames: list[str]
    groups: list[str | None]  # None = distractor
    roles: list[str] | None = None  # "query" | "db" per file; None = every image is both


@dataclass
class SearchOptions:
    """Query-time options under evaluation (all default to plain search)."""

    metric: str = "cosine"
    qe: int = 0
    qe_alpha: float = 3.0
    dba: int = 0  # database-side augmentation with this many neighbours (exact indexes without PCA)
    rerank: int = 0
    rerank_budget: float | None = None
    rerank_options: dict = field(default_factory=dict)
    vqe: int = 0  # verified query expansion with the first N verified results (with rerank)


def read_groundtruth(data_dir: Path) -> GroundTruth:
    path = data_dir / "groundtruth.csv"
    if not path.is_file() or not (data_dir / "images").is_dir():
        raise SourceError(f"{data_dir}: expected images/ and groundtruth.csv (filename,group_id)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"filename", "group_id"} <= set(reader.fieldnames):
            raise SourceError(f"{path}: needs columns filename,group_id; has {reader.fieldnames}")
        has_role = "role" in reader.fieldnames
        rows = [(r["filename"], (r["group_id"] or "").strip() or None, (r.get("role") or "").strip().lower() or "db")
                for r in reader]
    if has_role:
        bad = sorted({r[2] for r in rows} - {"query", "db"})
        if bad:
            raise SourceError(f"{path}: role must be 'query' or 'db' (or empty), found {bad}")
    return GroundTruth([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows] if has_role else None)


def rank_metrics(ranked_groups: Sequence[Sequence[str | None]], query_groups: Sequence[str | None],
                 query_in_ranking: Sequence[Sequence[str | None]]) -> dict:
    """Metrics from rankings. `ranked_groups[i]`: group of each ranked image (query removed);
    `query_in_ranking[i]`: groups of the top 4 with the query included (for N-S)."""
    aps, r1, r5, r10, ns = [], [], [], [], []
    for groups, g, top4 in zip(ranked_groups, query_groups, query_in_ranking):
        rel = np.array([x == g for x in groups], dtype=bool)
        n_rel = rel.sum()
        hits = np.cumsum(rel)
        precision = hits / np.arange(1, len(rel) + 1)
        aps.append(float((precision * rel).sum() / n_rel) if n_rel else 0.0)
        r1.append(rel[:1].any())
        r5.append(rel[:5].any())
        r10.append(rel[:10].any())
        ns.append(sum(x == g for x in top4[:4]))
    return {
        "map": float(np.mean(aps)),
        "recall@1": float(np.mean(r1)),
        "recall@5": float(np.mean(r5)),
        "recall@10": float(np.mean(r10)),
        "ns_score": float(np.mean(ns)),
    }


def evaluate(data_dir: Path | str, config: IndexConfig | None = None, *, metric: str = "cosine",
             out: Path | None = None, progress: bool = False, qe: int = 0, qe_alpha: float = 3.0,
             dba: int = 0, rerank: int = 0, rerank_budget: float | None = None,
             rerank_options: dict | None = None, latency: int = 0, vqe: int = 0) -> dict:
    """Index DATA_DIR's db images, run every query, return the metrics dict (KEYS, + LATENCY_KEYS)."""
    data_dir = Path(data_dir)
    truth = read_groundtruth(data_dir)
    options = SearchOptions(metric, qe, qe_alpha, dba, rerank, rerank_budget, dict(rerank_options or {}), vqe)
    with tempfile.TemporaryDirectory(prefix="imagefinder-eval-") as tmp:
        index_dir = out or Path(tmp) / "index"
        paths = [str((data_dir / "images" / name).resolve()) for name in truth.filenames]
        roles = truth.roles or ["db"] * len(paths)
        db = [p for p, r in zip(paths, roles) if r == "db"]
        start = time.perf_counter()
        report = build_index(db, index_dir, config, progress=progress)
        finder = ImageFinder(index_dir)
        if config is not None and (config.preset or {}).get("local_features") and report.indexed:
            # As `imagefinder index --preset` does: verification's database side computed at index time.
            finder.reranker().precompute(finder.store, progress=progress)
        seconds = time.perf_counter() - start
        try:
            if truth.roles is None:
                metrics, query_files = _score_in_index(finder, dict(zip(paths, truth.groups)), options)
            else:
                queries = [(p, g) for p, g, r in zip(paths, truth.groups, roles) if r == "query" and g is not None]
                metrics, query_files = _score_split(finder, dict(zip(db, [g for g, r in zip(truth.groups, roles)
                                                                          if r == "db"])), queries, options)
            if latency:
                metrics.update(measure_latency(finder, query_files[:latency], options))
            metrics["precision"] = finder.manifest.precision
        finally:
            finder.close()
    metrics.update({
        "images": report.indexed,
        "index_seconds": round(seconds, 3),
        "images_per_second": round(report.indexed / seconds, 2) if seconds else 0.0,
    })
    keys = KEYS + (LATENCY_KEYS if latency else ())
    return {key: metrics[key] for key in keys}


def _space(finder: ImageFinder, options: SearchOptions) -> SearchSpace:
    """The finder's search space, or a database-side-augmented copy of it (exact, no PCA only)."""
    space = finder.space()
    if not options.dba:
        return space
    spec = finder.manifest.index_spec
    if spec != "Flat":
        raise SourceError(f"--dba needs an exact index without PCA (index spec 'Flat'), not {spec!r}")
    ids = np.array(sorted(finder.store.ids_by_source().values()), np.int64)
    augmented = augment_database(np.asarray(finder.store.embeddings[ids], np.float32), options.dba, options.qe_alpha)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(augmented.shape[1]))
    index.add_with_ids(augmented, ids)
    # QE and the raw-feature metrics read `embeddings`: give them the augmented vectors too.
    embeddings = np.zeros((finder.manifest.rows, augmented.shape[1]), np.float32)
    embeddings[ids] = augmented
    return SearchSpace(Searcher(index), embeddings, space.members, True, space.weights)


def _rank(finder: ImageFinder, space: SearchSpace, vectors: np.ndarray, options: SearchOptions,
          local_of: list | None) -> list[list[int]]:
    """Full rankings (ids) for query vectors, with QE / re-ranking as the options say."""
    hits = search(space, vectors, finder.store.ntotal, options.metric, qe=options.qe, qe_alpha=options.qe_alpha)
    if options.rerank and local_of is not None:
        reranker, n = finder.reranker(), finder.store.ntotal
        hits = [verify(reranker, space, finder.store, q, lf(), h, options.rerank, options.rerank_budget, options.vqe,
                       n, options.metric) for q, h, lf in zip(vectors, hits, local_of)]
    return [[h.id for h in row] for row in hits]


def _score_in_index(finder: ImageFinder, group_of_source: dict[str, str | None],
                    options: SearchOptions, only: set[str] | None = None) -> tuple[dict, list[str]]:
    """Query with every grouped indexed image (or those of `only`); images that failed to index are skipped."""
    by_source = finder.store.ids_by_source()
    group_of_id = {i: group_of_source[s] for s, i in by_source.items() if s in group_of_source}
    source_of_id = {i: s for s, i in by_source.items()}
    sizes: dict[str, int] = {}
    for g in group_of_id.values():
        if g is not None:
            sizes[g] = sizes.get(g, 0) + 1
    queries = [i for i, g in group_of_id.items() if g is not None and sizes[g] >= 2
               and (only is None or source_of_id[i] in only)]
    if not queries:
        raise SourceError("no queries: no group with at least 2 indexed images")
    space = _space(finder, options)
    if options.rerank:
        finder.reranker(**options.rerank_options)
    ranked, top4s = [], []
    for start in range(0, len(queries), 256):
        chunk = queries[start:start + 256]
        vectors = np.asarray(finder.store.embeddings[chunk], np.float32)
        local = [_cached_local(finder, q) for q in chunk] if options.rerank else None
        for qid, ids in zip(chunk, _rank(finder, space, vectors, options, local)):
            top4s.append([group_of_id.get(i) for i in ids[:4]])
            ranked.append([group_of_id.get(i) for i in ids if i != qid])
    metrics = rank_metrics(ranked, [group_of_id[q] for q in queries], top4s)
    metrics["queries"] = len(queries)
    return metrics, [source_of_id[q] for q in queries]


def _cached_local(finder: ImageFinder, item_id: int):
    def get():
        store = finder.store
        return finder.reranker().cache.get(item_id, store.records([item_id]).get(item_id, {}),
                                           store.thumbnail_path(item_id))
    return get


def _score_split(finder: ImageFinder, group_of_db: dict[str, str | None], queries: list[tuple[str, str]],
                 options: SearchOptions) -> tuple[dict, list[str]]:
    """Query images (not indexed) against the db images of the index."""
    by_source = finder.store.ids_by_source()
    group_of_id = {i: group_of_db.get(s) for s, i in by_source.items()}
    in_db = set(group_of_id.values())
    queries = [(p, g) for p, g in queries if g in in_db]
    if not queries:
        raise SourceError("no queries: no query image whose group has an indexed db image")
    space = _space(finder, options)
    if options.rerank:
        finder.reranker(**options.rerank_options)
    ranked, top4s, used = [], [], []
    for start in range(0, len(queries), 64):
        chunk, images = [], []
        for path, g in queries[start:start + 64]:
            try:
                images.append(open_image(Path(path)).image)
                chunk.append((path, g))
            except ImageError:
                continue
        vectors = finder.embedder.embed_images(images)
        local = [(lambda im=im: finder.reranker().query_features(im)) for im in images] if options.rerank else None
        for (path, g), ids in zip(chunk, _rank(finder, space, vectors, options, local)):
            groups = [group_of_id.get(i) for i in ids]
            top4s.append(groups[:4])
            ranked.append(groups)
            used.append((path, g))
    metrics = rank_metrics(ranked, [g for _, g in used], top4s)
    metrics["queries"] = len(used)
    return metrics, [p for p, _ in used]


def measure_latency(finder: ImageFinder, files: list[str], options: SearchOptions, k: int = 10) -> dict:
    """Median wall and CPU milliseconds of single `ImageFinder.search` calls from image files."""
    if not files:
        return {"latency_ms_p50": 0.0, "latency_cpu_ms_p50": 0.0}
    def search(f: str) -> None:
        finder.search(f, k=k, metric=options.metric, qe=options.qe, qe_alpha=options.qe_alpha,
                      rerank=options.rerank, rerank_budget=options.rerank_budget, vqe=options.vqe)

    search(files[0])  # warm-up: model load, first-call costs
    wall, cpu = [], []
    for f in files:
        w0, c0 = time.perf_counter(), time.process_time()
        search(f)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"latency_ms_p50": round(1000 * statistics.median(wall), 2),
            "latency_cpu_ms_p50": round(1000 * statistics.median(cpu), 2)}


__all__ = ["KEYS", "LATENCY_KEYS", "GroundTruth", "SearchOptions", "evaluate", "rank_metrics", "read_groundtruth"]

"""Evaluate retrieval on a labelled set: DATA_DIR/images/* + DATA_DIR/groundtruth.csv.

groundtruth.csv has `filename,group_id`; images of one group show the same object or scene,
an empty group_id marks a distractor. Every image of a group with >= 2 members is a query.

Metrics (means over queries):
- map: average precision over the full ranking, the query itself removed.
- recall@K: share of queries with at least one group member in the top K (query removed).
- ns_score: group members in the top 4 with the query included (UKBench's N-S score, max 4).
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .finder import ImageFinder
from .index import IndexConfig
from .pipeline import build_index
from .sources import SourceError

KEYS = ("map", "recall@1", "recall@5", "recall@10", "ns_score", "images", "queries",
        "index_seconds", "images_per_second")


@dataclass(frozen=True)
class GroundTruth:
    filenames: list[str]
    groups: list[str | None]  # None = distractor


def read_groundtruth(data_dir: Path) -> GroundTruth:
    path = data_dir / "groundtruth.csv"
    if not path.is_file() or not (data_dir / "images").is_dir():
        raise SourceError(f"{data_dir}: expected images/ and groundtruth.csv (filename,group_id)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"filename", "group_id"} <= set(reader.fieldnames):
            raise SourceError(f"{path}: needs columns filename,group_id; has {reader.fieldnames}")
        rows = [(r["filename"], (r["group_id"] or "").strip() or None) for r in reader]
    return GroundTruth([r[0] for r in rows], [r[1] for r in rows])


def rank_metrics(ranked_groups: list[np.ndarray], query_groups: list[str], query_in_ranking: list[np.ndarray]) -> dict:
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
             out: Path | None = None, progress: bool = False) -> dict:
    """Index DATA_DIR/images, query with every grouped image, return the metrics dict (KEYS)."""
    data_dir = Path(data_dir)
    truth = read_groundtruth(data_dir)
    with tempfile.TemporaryDirectory(prefix="imagefinder-eval-") as tmp:
        index_dir = out or Path(tmp) / "index"
        start = time.perf_counter()
        sources = [str((data_dir / "images" / name).resolve()) for name in truth.filenames]
        report = build_index(sources, index_dir, config, progress=progress)
        seconds = time.perf_counter() - start
        finder = ImageFinder(index_dir)
        try:
            metrics = _score(finder, dict(zip(sources, truth.groups)), metric)
        finally:
            finder.close()
    metrics.update({
        "images": report.indexed,
        "index_seconds": round(seconds, 3),
        "images_per_second": round(report.indexed / seconds, 2) if seconds else 0.0,
    })
    return {key: metrics[key] for key in KEYS}


def _score(finder: ImageFinder, group_of_source: dict[str, str | None], metric: str) -> dict:
    """Query with every grouped indexed image; images that failed to index are skipped."""
    group_of_id = {i: group_of_source[s] for s, i in finder.store.ids_by_source().items() if s in group_of_source}
    sizes: dict[str, int] = {}
    for g in group_of_id.values():
        if g is not None:
            sizes[g] = sizes.get(g, 0) + 1
    queries = [i for i, g in group_of_id.items() if g is not None and sizes[g] >= 2]
    if not queries:
        raise SourceError("no queries: no group with at least 2 indexed images")
    ranked, top4s = [], []
    for start in range(0, len(queries), 256):
        chunk = queries[start:start + 256]
        vectors = np.asarray(finder.store.embeddings[chunk], np.float32)
        results = finder.search_vectors(vectors, k=finder.store.ntotal, metric=metric)
        for qid, res in zip(chunk, results):
            ids = [r.id for r in res]
            top4s.append([group_of_id.get(i) for i in ids[:4]])
            ranked.append([group_of_id.get(i) for i in ids if i != qid])
    metrics = rank_metrics(ranked, [group_of_id[q] for q in queries], top4s)
    metrics["queries"] = len(queries)
    return metrics


"""Spatial verification on photographs of scenes: candidate depth, geometry, verified QE - each alone.

One index per data set (the given model; database local features computed once, up front, and
cached in the index, so no query pays for them and a rerun reuses them), then every grouped
indexed image queries the rest (paris266 "all-query"; UKBench: its first --ukb-groups groups)
with: no verification; re-rank 30 / 100 with a homography; re-rank 30 / 100 with a fundamental
matrix (3-D scenes from another viewpoint are not related by one homography; USAC-MAGSAC,
inliers counted); and verified query expansion (`vqe`, the first N verified results) on top of
re-rank 100 with either geometry. No time budget: the quality figures do not depend on the load.
`cpu_ms_per_query`: process CPU time of ranking + verification + expansion per query (query
local features come from the cache: in-index queries), load-dependent - compare it with the
`none` row of the same run.

Constants are not tuned here: MIN_INLIERS comes from UKBench (rerank.py), vqe N is chosen a
priori (--vqe, default 5). paris266 is small: a direction, not a leaderboard.

    python benchmarks/verify_scenes.py [--model efficientnet-lite0] [--only paris266]
    python benchmarks/verify_scenes.py --top-k 2048 --max-side 1024   # more, finer local features
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import time
from pathlib import Path

from imagefinder.evaluate import SearchOptions, _score_in_index, read_groundtruth
from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.pipeline import build_index
from imagefinder.rerank import SpatialReranker

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IMAGEFINDER_DATA", REPO.parent / "shared" / "data"))


def runs(vqe: int, skip: set[str]) -> list[tuple[str, int, str, int]]:
    # each +vqe run follows the run it extends: it reuses that run's verification (memo below)
    all_runs = [("none", 0, "homography", 0), ("h100", 100, "homography", 0),
                (f"h100+vqe{vqe}", 100, "homography", vqe), ("f100", 100, "fundamental", 0),
                (f"f100+vqe{vqe}", 100, "fundamental", vqe), ("h30", 30, "homography", 0),
                ("f30", 30, "fundamental", 0)]
    return [r for r in all_runs if r[0] not in skip]


class Memo:
    """Verification results per (query, depth, geometry), reused by the +vqe run on the same depth:
    the expansion changes nothing before it (same global ranking, same candidates, same inliers),
    so recomputing it would only spend the shared CPU. Its CPU is added to the reusing run's."""

    def __init__(self) -> None:
        self.seen: dict[tuple, tuple] = {}
        self.cpu: dict[tuple[int, str], float] = {}
        self.original = SpatialReranker.rerank_verified

    def install(self) -> None:
        memo = self

        def rerank_verified(self, query, hits, store, top=30, budget_s=2.0):  # type: ignore[no-untyped-def]
            key = (hashlib.sha1(query.keypoints.tobytes()).hexdigest(), top, self.geometry)
            if key not in memo.seen:
                c0 = time.process_time()
                memo.seen[key] = memo.original(self, query, hits, store, top, budget_s)
                memo.cpu[(top, self.geometry)] = memo.cpu.get((top, self.geometry), 0.0) + time.process_time() - c0
            return memo.seen[key]

        SpatialReranker.rerank_verified = rerank_verified  # type: ignore[method-assign]


def subset(src: Path, out: Path, groups: int | None) -> Path:
    """`src` itself, or a copy (symlinks) holding only its first `groups` groups."""
    if groups is None:
        return src
    truth = read_groundtruth(src)
    keep = list(dict.fromkeys(g for g in truth.groups if g is not None))[:groups]
    (out / "images").mkdir(parents=True, exist_ok=True)
    with open(out / "groundtruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "group_id"])
        for name, g in zip(truth.filenames, truth.groups):
            if g in keep:
                link = out / "images" / name
                if not link.exists():
                    link.symlink_to((src / "images" / name).resolve())
                w.writerow([name, g])
    return out


def measure(name: str, data: Path, work: Path, model: str, vqe: int, skip: set[str],
            local: dict[str, int]) -> dict:
    truth = read_groundtruth(data)
    paths = [str((data / "images" / f).resolve()) for f in truth.filenames]
    index = work / f"index-{name}-{model.replace('@', '_').replace(',', '_')}"
    if not (index / "manifest.json").is_file():
        build_index(paths, index, IndexConfig(model=model))
    finder = ImageFinder(index)
    t0 = time.perf_counter()
    finder.reranker(**local).precompute(finder.store)  # cached per extractor setting
    local_s = time.perf_counter() - t0
    rows = []
    memo = Memo()
    memo.install()
    for run, depth, geometry, n in runs(vqe, skip):
        opts = SearchOptions(rerank=depth, rerank_budget=None, rerank_options={"geometry": geometry, **local},
                             vqe=n)
        before = memo.cpu.get((depth, geometry), 0.0)
        c0 = time.process_time()
        m, _ = _score_in_index(finder, dict(zip(paths, truth.groups)), opts)
        cpu = time.process_time() - c0
        if n:  # the verification it reused, counted once more: what a query with vqe costs
            cpu += before
        rows.append({"run": run, "depth": depth, "geometry": geometry, "vqe": n, "map": round(m["map"], 4),
                     "recall@1": round(m["recall@1"], 4), "ns_score": round(m["ns_score"], 3),
                     "cpu_ms_per_query": round(1000 * cpu / m["queries"], 1), "queries": m["queries"],
                     "load": round(os.getloadavg()[0], 2)})
        print(name, rows[-1], flush=True)
    finder.close()
    return {"data": name, "images": len(paths), "local_features_s": round(local_s, 1), "results": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--vqe", type=int, default=5, help="verified results the expansion uses (default 5)")
    p.add_argument("--ukb-groups", type=int, default=60, help="UKBench groups (4 images each) to use")
    p.add_argument("--only", choices=("paris266", "ukbench"))
    p.add_argument("--skip", nargs="*", default=[], metavar="RUN", help="runs to leave out (e.g. h30 f30)")
    p.add_argument("--work", type=Path, default=Path("/tmp/imagefinder-verify-scenes"),
                   help="indexes and their cached local features live here (reused by a rerun)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verify_scenes.json")
    p.add_argument("--top-k", type=int, default=1024, help="local features per image (default 1024)")
    p.add_argument("--max-side", type=int, default=640, help="image side the local features see (default 640)")
    args = p.parse_args()
    local = {"top_k": args.top_k, "max_side": args.max_side}
    args.work.mkdir(parents=True, exist_ok=True)
    sets = {"paris266": (DATA / "paris266", None), "ukbench": (DATA / "ukbench1000", args.ukb_groups)}
    out = {"model": args.model, "vqe": args.vqe, "ukb_groups": args.ukb_groups, "local": local, "sets": []}
    for name, (src, groups) in sets.items():
        if args.only and name != args.only:
            continue
        data = subset(src, args.work / f"data-{name}", groups)
        out["sets"].append(measure(name, data, args.work, args.model, args.vqe, set(args.skip), local))
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

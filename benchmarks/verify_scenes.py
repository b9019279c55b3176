"""Spatial verification on photographs of scenes: candidate depth and geometry, measured alone.

One paris266 index (the preset's model; database local features computed once, up front, so no
query pays for them), then the 40 query-box crops scored with: no verification, re-rank 30 and
100 with a homography, re-rank 30 and 100 with a fundamental matrix (3-D scenes from another
viewpoint are not related by one homography). No time budget: quality independent of the load;
the median seconds per query are reported (load-dependent). paris266 is small: a direction.

    python benchmarks/verify_scenes.py [--model efficientnet-lite2@gem2,long384]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from presets import paris_box_set  # benchmarks/ is on sys.path when run as a script

from imagefinder.evaluate import SearchOptions, _score_split, read_groundtruth
from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.pipeline import build_index

REPO = Path(__file__).resolve().parents[1]
RUNS = [("none", 0, "homography"), ("h30", 30, "homography"), ("h100", 100, "homography"),
        ("f30", 30, "fundamental"), ("f100", 100, "fundamental")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite2@gem2,long384")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verify_scenes.json")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="if-verify-") as tmp:
        box = paris_box_set(Path(tmp) / "box")
        truth = read_groundtruth(box)
        db = [str((box / "images" / f).resolve()) for f, r in zip(truth.filenames, truth.roles or []) if r == "db"]
        groups = {str((box / "images" / f).resolve()): g for f, g in zip(truth.filenames, truth.groups)}
        queries = [(str((box / "images" / f).resolve()), g)
                   for f, g, r in zip(truth.filenames, truth.groups, truth.roles or []) if r == "query"]
        build_index(db, Path(tmp) / "index", IndexConfig(model=args.model))
        finder = ImageFinder(Path(tmp) / "index")
        t0 = time.perf_counter()
        finder.reranker().precompute(finder.store)
        local_s = time.perf_counter() - t0
        for name, depth, geometry in RUNS:
            times: list[float] = []
            reranker = finder.reranker(geometry=geometry)  # kept: _score_split asks for it without options
            original = reranker.rerank

            def timed(*a, _orig=original, _times=times, **kw):
                s = time.perf_counter()
                out = _orig(*a, **kw)
                _times.append(time.perf_counter() - s)
                return out

            reranker.rerank = timed  # type: ignore[method-assign]
            opts = SearchOptions(rerank=depth, rerank_budget=None)
            m, _ = _score_split(finder, {s: groups[s] for s in db}, queries, opts)
            results.append({"run": name, "depth": depth, "geometry": geometry, "map": round(m["map"], 4),
                            "recall@1": round(m["recall@1"], 4),
                            "rerank_s_p50": round(statistics.median(times), 3) if times else 0.0,
                            "load": os.getloadavg()[0]})
            print(results[-1], flush=True)
        finder.close()
    out = {"model": args.model, "queries": len(queries), "db": len(db), "local_features_s": round(local_s, 1),
           "results": results}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

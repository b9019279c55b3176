"""Retrieval quality and indexing speed per backbone / ensemble / metric on a labelled set.

Runs `imagefinder.evaluate.evaluate(DATA, IndexConfig(model=M), metric=...)` (a full index
build + every grouped image as a query) for each model with the cosine metric, and for the
default model also with euclidean and vote. Each model's ONNX export happens once, into
~/.cache/imagefinder. Results are written to --out after every run, so a long run that is
interrupted keeps what it finished.

    python benchmarks/backbones.py --out backbones.json
    python benchmarks/backbones.py --out lite.json --models efficientnet-lite0,efficientnet-lite1 --all-metrics
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from imagefinder import IndexConfig
from imagefinder.embed import Embedder
from imagefinder.evaluate import evaluate
from imagefinder.models import DEFAULT_MODEL, ModelUnavailable
from imagefinder.search import METRICS

DEFAULT_DATA = Path("/work/shared/data/ukbench1000")
MODELS = [
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "dinov2-s", "resnet50-thin",
    "efficientnet-lite0+dinov2-s", "efficientnet-lite0+resnet50-thin", "efficientnet-lite2+dinov2-s",
]


def plan(models: list[str], all_metrics: bool) -> list[tuple[str, str]]:
    """(model, metric) runs: cosine for every model, every metric for the default (or all)."""
    runs = []
    for model in models:
        metrics = METRICS if all_metrics or model == DEFAULT_MODEL else ("cosine",)
        runs += [(model, metric) for metric in metrics]
    return runs


def markdown(rows: list[dict]) -> str:
    lines = ["| model | metric | ns_score | map | recall@1 | images/s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['metric']} | error: {r['error']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['metric']} | {r['ns_score']:.3f} | {r['map']:.3f} "
                         f"| {r['recall@1']:.3f} | {r['images_per_second']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"images/ + groundtruth.csv (default {DEFAULT_DATA})")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models (default: all eight)")
    parser.add_argument("--all-metrics", action="store_true", help="every metric for every model, not only the default")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows: list[dict] = []
    runs = plan([m.strip() for m in args.models.split(",") if m.strip()], args.all_metrics)
    for i, (model, metric) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {model} {metric} ...", file=sys.stderr, flush=True)
        start, load = time.perf_counter(), os.getloadavg()[0]
        try:
            Embedder(model)  # any one-time ONNX export happens here, outside the timed build
            ready = time.perf_counter()
            metrics = evaluate(args.data, IndexConfig(model=model), metric=metric)
            rows.append({"model": model, "metric": metric, **metrics,
                         "load_model_seconds": round(ready - start, 1)})
        except ModelUnavailable as exc:
            rows.append({"model": model, "metric": metric, "error": str(exc)})
        rows[-1].update(wall_seconds=round(time.perf_counter() - start, 1), loadavg_1min_before=round(load, 2))
        print(f"    {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        args.out.write_text(json.dumps({"data": str(args.data), "runs": rows}, indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()

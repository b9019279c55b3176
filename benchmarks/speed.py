"""Index and query speed of model specs (backbone x input), measured round-robin in one run.

On a shared machine absolute figures move with the load, so every spec is measured in turn,
several rounds, and reported with its ratio to the first spec (today's default). Index: a
`build_index` of the same UKBench images per spec (images/s, best round). Query: median wall
and CPU time of one `ImageFinder.search` from a paris266 photo file (1024 px JPEG: decode +
embed + search) on each spec's index, queries interleaved across specs. A spec `preset:NAME`
builds with that preset's whole bundle (precision included), and its searches use the preset's
query-time parts (query expansion, verification) as `imagefinder search` does.

    python benchmarks/speed.py --images 160 --queries 20
    python benchmarks/speed.py --specs preset:fast preset:balanced --images 400 --queries 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from imagefinder.evaluate import read_groundtruth
from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.pipeline import build_index
from imagefinder.presets import PRESETS, get_preset

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SPECS = ["efficientnet-lite0@gem2,square224", "efficientnet-lite0@gem2,long384", "efficientnet-lite2@gem2,long384",
         "efficientnet-lite2@gem2,long512", "efficientnet-lite1@gem2,long384"]


def config_for(spec: str) -> IndexConfig:
    """A model spec's build, or a preset's (`preset:balanced`)."""
    if spec.startswith("preset:"):
        return IndexConfig.from_preset(get_preset(spec.removeprefix("preset:")))
    return IndexConfig(model=spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=SPECS)
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "speed.json")
    args = p.parse_args()
    ukb = read_groundtruth(DATA / "ukbench1000")
    sources = [str(DATA / "ukbench1000" / "images" / n) for n in ukb.filenames[:args.images]]
    paris = read_groundtruth(DATA / "paris266")
    queries = [str(DATA / "paris266" / "images" / n) for n in paris.filenames if "_qcrop" not in n][::7][:args.queries]
    rate: dict[str, list[float]] = {s: [] for s in args.specs}
    wall: dict[str, list[float]] = {s: [] for s in args.specs}
    cpu: dict[str, list[float]] = {s: [] for s in args.specs}
    loads = []
    with tempfile.TemporaryDirectory(prefix="if-speed-") as tmp:
        for r in range(args.rounds):
            for spec in args.specs:
                loads.append(os.getloadavg()[0])
                t0 = time.perf_counter()
                build_index(sources, Path(tmp) / f"{abs(hash(spec))}-{r}", config_for(spec))
                rate[spec].append(len(sources) / (time.perf_counter() - t0))
        finders = {s: ImageFinder(Path(tmp) / f"{abs(hash(s))}-0") for s in args.specs}
        for finder in finders.values():
            finder.search(queries[0], k=10)  # model load, first-call costs
        for q in queries:
            for spec, finder in finders.items():
                w0, c0 = time.perf_counter(), time.process_time()
                finder.search(q, k=10)
                wall[spec].append(time.perf_counter() - w0)
                cpu[spec].append(time.process_time() - c0)
        loads.append(os.getloadavg()[0])
    base = args.specs[0]
    results = []
    for spec in args.specs:
        best, p50 = max(rate[spec]), 1000 * statistics.median(wall[spec])
        results.append({"spec": spec, "model": finders[spec].manifest.model,
                        "precision": finders[spec].manifest.precision, "images_per_second": round(best, 1),
                        "index_ratio": round(best / max(rate[base]), 3), "query_ms_p50": round(p50, 1),
                        "query_cpu_ms_p50": round(1000 * statistics.median(cpu[spec]), 1),
                        "query_ratio": round(p50 / (1000 * statistics.median(wall[base])), 3)})
    out = {"load_min": min(loads), "load_max": max(loads), "cores": os.cpu_count(), "images": len(sources),
           "queries": len(queries), "results": results, "presets": {n: x.model for n, x in PRESETS.items()}}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

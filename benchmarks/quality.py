"""Retrieval quality and its price: every descriptor / ensemble / QE / re-ranking option, measured.

For each configuration: UKBench-1000 N-S and mAP (every image queries the other 999), the hard
copy-detection benchmark's mAP and N-S (250 heavily damaged queries from `benchdata.make_copydetect`,
seed 0, against the 1000 untouched images), indexing speed, and the median latency of one
query through `ImageFinder.search` from an image file (decode + embed + search + QE + re-rank),
wall and CPU time, on this machine's 2 cores.

One index per configuration serves both benchmarks (their databases are the same 1000 images).
Results are appended to a JSON file as they come (a rerun skips configurations already there),
then printed as a Markdown table.

    python benchmarks/quality.py                       # all configurations
    python benchmarks/quality.py --only base gem3 qe2  # some of them
    python benchmarks/quality.py --table               # just print the table of saved results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from imagefinder.benchdata import make_copydetect
from imagefinder.evaluate import SearchOptions, _score_in_index, _score_split, measure_latency, read_groundtruth
from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.pipeline import build_index

REPO = Path(__file__).resolve().parents[1]
UKBENCH = REPO.parent / "shared" / "data" / "ukbench1000"
L0 = "efficientnet-lite0"
A = f"{L0}@avg"  # the reference: average pooling (the default before this benchmark picked GeM 2)

# name: (index config, search options, what it tests)
CONFIGS: dict[str, tuple[dict, dict, str]] = {
    "base": ({"model": A}, {}, "reference: average pooling, 224, no PCA"),
    "max": ({"model": f"{L0}@max"}, {}, "max pooling (MAC)"),
    "gem3": ({"model": f"{L0}@gem3"}, {}, "GeM p=3"),
    "gem2": ({"model": f"{L0}@gem2"}, {}, "GeM p=2 (the new default: what `efficientnet-lite0` means)"),
    "ms": ({"model": f"{L0}@avg,ms"}, {}, "multi-scale 1, 0.707, 0.5 (avg)"),
    "ms-up": ({"model": f"{L0}@avg,ms1.414_1"}, {}, "multi-scale 1.414, 1 (avg)"),
    "pow": ({"model": f"{L0}@avg,pow0.5"}, {}, "signed square-root normalisation"),
    "pca256": ({"model": A, "pca": 256}, {}, "PCA 256 learned on the collection"),
    "pcaw256": ({"model": A, "pca": 256, "whiten": True}, {}, "PCA-whitening 256 learned on the collection"),
    "pca512": ({"model": A, "pca": 512}, {}, "PCA 512 learned on the collection"),
    "pca128": ({"model": A, "pca": 128}, {}, "PCA 128 learned on the collection"),
    "qe1": ({"model": A}, {"qe": 1, "qe_alpha": 3.0}, "alpha-QE, top 1, alpha 3"),
    "qe2": ({"model": A}, {"qe": 2, "qe_alpha": 3.0}, "alpha-QE, top 2, alpha 3"),
    "qe5": ({"model": A}, {"qe": 5, "qe_alpha": 3.0}, "alpha-QE, top 5, alpha 3"),
    "dba2": ({"model": A}, {"dba": 2, "qe_alpha": 3.0}, "database-side augmentation, 2 neighbours"),
    "rerank30": ({"model": A}, {"rerank": 30}, "XFeat + MNN + homography RANSAC on the top 30"),
    "lite2": ({"model": "efficientnet-lite2"}, {}, "bigger backbone alone (260 px)"),
    "dinov2": ({"model": "dinov2-s"}, {}, "DINOv2 ViT-S/14 layer 7 alone"),
    "resnet": ({"model": "resnet50-thin"}, {}, "ResNet-50 (thin) alone"),
    "ens-dino": ({"model": f"{A}+dinov2-s"}, {}, "ensemble lite0 + dinov2-s, concatenation"),
    "ens-dino-w": ({"model": f"{A}:1+dinov2-s:0.5"}, {}, "ensemble, dinov2-s weight 0.5"),
    "ens-dino-rrf": ({"model": f"{A}+dinov2-s"}, {"metric": "fusion"}, "ensemble, rank fusion"),
    "ens-resnet": ({"model": f"{A}+resnet50-thin"}, {}, "ensemble lite0 + resnet50-thin, concatenation"),
    "ens-resnet-rrf": ({"model": f"{A}+resnet50-thin"}, {"metric": "fusion"}, "lite0 + resnet50-thin, rank fusion"),
    "ens-lite2": ({"model": f"{A}+efficientnet-lite2"}, {}, "ensemble lite0 + lite2, concatenation"),
}
# Combinations, measured after the single options: see README for how they were picked.
COMBOS: dict[str, tuple[dict, dict, str]] = {
    "gem2-qe2": ({"model": f"{L0}@gem2"}, {"qe": 2}, "GeM 2 + alpha-QE 2"),
    "pca256-qe2": ({"model": A, "pca": 256}, {"qe": 2}, "PCA 256 + alpha-QE 2"),
    "gem2-pca256-qe2": ({"model": f"{L0}@gem2", "pca": 256}, {"qe": 2}, "GeM 2 + PCA 256 + alpha-QE 2"),
    "gem2-ms-pca256-qe2": ({"model": f"{L0}@gem2,ms", "pca": 256}, {"qe": 2},
                           "GeM 2 + multi-scale + PCA 256 + alpha-QE 2"),
    "gem2-qe2-dba2": ({"model": f"{L0}@gem2"}, {"qe": 2, "dba": 2}, "GeM 2 + alpha-QE 2 + DBA 2"),
    "ens-resnet-gem2-pca256-qe2": ({"model": f"{L0}@gem2+resnet50-thin", "pca": 256}, {"qe": 2},
                                   "lite0 GeM 2 + resnet50-thin, PCA 256, alpha-QE 2"),
    "gem2-pca256-qe2-rerank30": ({"model": f"{L0}@gem2", "pca": 256}, {"qe": 2, "rerank": 30},
                                 "GeM 2 + PCA 256 + alpha-QE 2 + re-rank 30"),
}


def run_config(name: str, config: dict, options: dict, hard: Path, latency: int, work: Path,
               local_cache: Path | None = None) -> dict:
    opts = SearchOptions(**options)
    truth_uk = read_groundtruth(UKBENCH)
    sources = [str((UKBENCH / "images" / f).resolve()) for f in truth_uk.filenames]
    index_dir = work / name
    start = time.perf_counter()
    report = build_index(sources, index_dir, IndexConfig(**config))
    seconds = time.perf_counter() - start
    if local_cache is not None and options.get("rerank"):
        # Local features depend on the image only (ids are the same in every configuration's
        # index): share one cache so each configuration does not re-extract 1000 images.
        local_cache.mkdir(parents=True, exist_ok=True)
        (index_dir / "local").symlink_to(local_cache.resolve(), target_is_directory=True)
    finder = ImageFinder(index_dir)
    try:
        t0 = time.perf_counter()
        only = None
        if opts.rerank:
            # Re-ranking 30 candidates for all 1000 UKBench queries takes too long on a shared
            # 2-core machine: those rows use the first image of each group (250 queries) and
            # also report the same configuration without re-ranking on that subset.
            only = {s for s, first in zip(sources, _group_first(truth_uk)) if first}
            plain = SearchOptions(**{**options, "rerank": 0})
            uk_plain, _ = _score_in_index(finder, dict(zip(sources, truth_uk.groups)), plain, only)
        uk, _ = _score_in_index(finder, dict(zip(sources, truth_uk.groups)), opts, only)
        uk_seconds = time.perf_counter() - t0
        truth_h = read_groundtruth(hard)
        by_name = dict(zip(truth_uk.filenames, sources))
        db_groups = {by_name[f]: g for f, g, r in zip(truth_h.filenames, truth_h.groups, truth_h.roles) if r == "db"}
        queries = [(str((hard / "images" / f).resolve()), g)
                   for f, g, r in zip(truth_h.filenames, truth_h.groups, truth_h.roles) if r == "query"]
        t0 = time.perf_counter()
        hd, hard_queries = _score_split(finder, db_groups, queries, opts)
        hard_seconds = time.perf_counter() - t0
        lat = measure_latency(finder, hard_queries[:latency], opts) if latency else {}
    finally:
        finder.close()
    return {
        "name": name, "model": config.get("model"), "config": config, "options": options,
        "ukbench_ns": round(uk["ns_score"], 4), "ukbench_map": round(uk["map"], 4),
        "hard_map": round(hd["map"], 4), "hard_ns": round(hd["ns_score"], 4), "hard_recall@1": round(hd["recall@1"], 4),
        "images_per_second": round(report.indexed / seconds, 1),
        "latency_ms_p50": lat.get("latency_ms_p50"), "latency_cpu_ms_p50": lat.get("latency_cpu_ms_p50"),
        "eval_seconds": round(uk_seconds + hard_seconds, 1),
        **({"ukbench_subset": len(only), "ukbench_ns_without_rerank": round(uk_plain["ns_score"], 4),
            "ukbench_map_without_rerank": round(uk_plain["map"], 4)} if only else {}),
    }


def _group_first(truth) -> list[bool]:
    seen: set = set()
    out = []
    for g in truth.groups:
        out.append(g is not None and g not in seen)
        seen.add(g)
    return out


def latency_pass(names: list[str], hard: Path, work: Path, queries: int, rounds: int = 3,
                 local_cache: Path | None = None) -> dict[str, dict]:
    """Median single-query latency per configuration, measured round-robin (config after config,
    query after query) so that load from other processes falls on all configurations alike."""
    import statistics

    truth_uk = read_groundtruth(UKBENCH)
    sources = [str((UKBENCH / "images" / f).resolve()) for f in truth_uk.filenames]
    truth_h = read_groundtruth(hard)
    files = [str((hard / "images" / f).resolve()) for f, r in zip(truth_h.filenames, truth_h.roles) if r == "query"]
    files = files[:queries]
    everything = {**CONFIGS, **COMBOS}
    finders, built = {}, {}
    for name in names:
        config, options, _ = everything[name]
        key = json.dumps(config, sort_keys=True)
        if key not in built:
            built[key] = work / f"lat-{len(built)}"
            build_index(sources, built[key], IndexConfig(**config))
            if local_cache is not None:
                local_cache.mkdir(parents=True, exist_ok=True)
                (built[key] / "local").symlink_to(local_cache.resolve(), target_is_directory=True)
        finders[name] = (ImageFinder(built[key]), SearchOptions(**options))
    for finder, opts in finders.values():  # warm-up: model loads, local features of the db side
        for f in files:
            finder.search(f, k=10, metric=opts.metric, qe=opts.qe, qe_alpha=opts.qe_alpha, rerank=opts.rerank,
                          rerank_budget=None)
    wall: dict[str, list] = {n: [] for n in names}
    cpu: dict[str, list] = {n: [] for n in names}
    for _ in range(rounds):
        for f in files:
            for name, (finder, opts) in finders.items():
                w0, c0 = time.perf_counter(), time.process_time()
                finder.search(f, k=10, metric=opts.metric, qe=opts.qe, qe_alpha=opts.qe_alpha, rerank=opts.rerank,
                              rerank_budget=None)
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    return {n: {"latency_ms_p50": round(1000 * statistics.median(wall[n]), 1),
                "latency_cpu_ms_p50": round(1000 * statistics.median(cpu[n]), 1)} for n in names}


def table(results: list[dict], descriptions: dict[str, str]) -> str:
    header = ("| configuration | what | UKBench N-S | UKBench mAP | hard mAP | hard N-S | index img/s | "
              "query p50 ms (wall / CPU) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat = "-" if r.get("latency_ms_p50") is None else f"{r['latency_ms_p50']:.0f} / {r['latency_cpu_ms_p50']:.0f}"
        source = r.get("latency_source") or ""
        if source.startswith("round-robin pass"):
            lat += " ‡" if "pass 1" in source else " †"
        ns, mp = f"{r['ukbench_ns']:.3f}", f"{r['ukbench_map']:.4f}"
        if r.get("ukbench_subset"):  # re-ranking rows: 250-query subset, and without re-ranking on it
            ns += f"* ({r['ukbench_ns_without_rerank']:.3f})"
            mp += f"* ({r['ukbench_map_without_rerank']:.4f})"
        lines.append(f"| `{r['name']}` | {descriptions.get(r['name'], '')} | {ns} | {mp} | {r['hard_map']:.4f} | "
                     f"{r['hard_ns']:.3f} | {r['images_per_second']:.0f} | {lat} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="configuration names (default: all)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "quality.json")
    p.add_argument("--hard", type=Path, help="hard benchmark dir (default: generated into a temp dir, seed 0)")
    p.add_argument("--latency", type=int, default=40, help="single queries timed per configuration")
    p.add_argument("--redo", action="store_true", help="re-measure configurations already in the results file")
    p.add_argument("--table", action="store_true", help="only print the table of saved results")
    p.add_argument("--local-cache", type=Path, help="share re-ranking local features across configurations here")
    p.add_argument("--latency-pass", nargs="*", metavar="NAME",
                   help="re-measure the latency of these configurations round-robin (fairer under load) and "
                        "store it in the results file")
    args = p.parse_args(argv)
    everything = {**CONFIGS, **COMBOS}
    descriptions = {k: v[2] for k, v in everything.items()}
    saved = json.loads(args.results.read_text()) if args.results.is_file() else []
    if args.latency_pass:
        with tempfile.TemporaryDirectory(prefix="imagefinder-latency-") as tmp:
            hard = args.hard or make_copydetect(UKBENCH, Path(tmp) / "hard", seed=0)
            lat = latency_pass(args.latency_pass, hard, Path(tmp), args.latency, local_cache=args.local_cache)
        saved = json.loads(args.results.read_text()) if args.results.is_file() else []
        for r in saved:
            if r["name"] in lat:
                r.update(lat[r["name"]], latency_source="round-robin pass 2")
        args.results.write_text(json.dumps(saved, indent=1))
        print(json.dumps(lat, indent=1), file=sys.stderr)
    elif not args.table:
        names = args.only or list(everything)
        unknown = [n for n in names if n not in everything]
        if unknown:
            p.error(f"unknown configurations {unknown}; known: {', '.join(everything)}")
        with tempfile.TemporaryDirectory(prefix="imagefinder-quality-") as tmp:
            work = Path(tmp)
            hard = args.hard or make_copydetect(UKBENCH, work / "hard", seed=0)
            for name in names:
                if not args.redo and any(r["name"] == name for r in saved):
                    continue
                config, options, _ = everything[name]
                print(f"== {name}: {config} {options}", file=sys.stderr, flush=True)
                result = run_config(name, config, options, hard, args.latency, work, args.local_cache)
                print(json.dumps(result), file=sys.stderr, flush=True)
                saved = json.loads(args.results.read_text()) if args.results.is_file() else []
                saved = [r for r in saved if r["name"] != name] + [result]
                args.results.parent.mkdir(parents=True, exist_ok=True)
                args.results.write_text(json.dumps(saved, indent=1))
    order = {n: i for i, n in enumerate(everything)}
    print(table(sorted(saved, key=lambda r: order.get(r["name"], 999)), descriptions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`imagefinder info` and `evaluate`, and the printed summaries other commands share (build, drift)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import (
    EXIT_EMPTY,
    EXIT_OK,
    Command,
    check_query_options,
    common,
    index_config,
    metric_option,
    model_options,
    progress,
    query_options,
    resolved_query_options,
)
from .terminal import say, say_json

if TYPE_CHECKING:
    from ..index import Manifest
    from ..pipeline import BuildReport


def print_build(report: BuildReport, as_json: bool, verb: str) -> int:
    """The summary of `index` / `add`: one JSON object, or a few lines; exit 1 if nothing was indexed."""
    summary = {
        "path": str(report.path), "items": report.items, "indexed": report.indexed, "failed": report.failed,
        "failure_reasons": report.failure_reasons, "index_spec": report.index_spec,
        "seconds": round(report.seconds, 2), "images_per_second": round(report.images_per_second, 1),
        "resumed": report.resumed,
    }
    if as_json:
        say_json(summary)
    else:
        say(f"{verb} {report.indexed} of {report.items} images into {report.path} "
              f"({report.index_spec}, {report.seconds:.1f} s, {report.images_per_second:.1f} images/s)")
        if report.resumed:
            say(f"{report.resumed} of them were taken from an interrupted run's journal, not embedded again")
        if report.failed:
            reasons = ", ".join(f"{n} {reason}" for reason, n in report.failure_reasons.items())
            say(f"{report.failed} failed: {reasons}  (details: imagefinder info {report.path})")
    return EXIT_OK if report.indexed else EXIT_EMPTY


def print_drift(d: dict[str, Any]) -> None:
    signals = ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in d["signals"].items()) or "none measured"
    say(f"drift      {d['added_since_training']} added since training on {d['trained_on']}; {signals}")
    for reason in d["reasons"]:
        say(f"  rebuild recommended: {reason}  (imagefinder rebuild DIR)")


def _info_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print as one JSON object")
    p.add_argument("--failures", type=int, default=20, metavar="N",
                   help="failed images to list with their reasons (default 20; 0 = all)")
    common(p)


def cmd_info(args: argparse.Namespace) -> int:
    from ..finder import ImageFinder
    from ..index import drift_report

    finder = ImageFinder(args.index)
    info = {**finder.info(args.failures or None), "drift": drift_report(finder.store)}
    if args.json:
        say_json(info)
        return EXIT_OK
    c = info["counts"]
    say(f"index      {info['path']}  (created {info['created_at']})")
    say(f"model      {info['model']}  ({info['embedding_dim']}-d, {info['precision']})")
    say(f"faiss      {info['index_spec']}  clusters={info['clusters']} nprobe={info['nprobe']}")
    say(f"images     {c['indexed']} indexed, {c['failed']} failed, {c['items']} total")
    _print_search(finder.manifest)
    for reason, n in info["failure_reasons"].items():
        say(f"  {n:>6} x {reason}")
    for f in info["failures"]:
        say(f"  failed #{f['id']}: {f['source']}: {f['error']}")
    print_drift(info["drift"])
    return EXIT_OK


def _print_search(manifest: Manifest) -> None:
    """Where the vectors are searched and how it was tuned (nothing for a plain exact FAISS index)."""
    tuning, store = manifest.tuning, manifest.store
    if not (tuning or store):
        return
    where = store["uri"] if store else "faiss"
    tuned = (f"{tuning['param']}={tuning['value']} tuned for recall@10 {tuning['target_recall']} "
             f"(measured {tuning['recall_at_10']:.3f})" if tuning else "exact")
    say(f"search     {where}: {tuned}, re-rank {manifest.rerank or 'off'}")


EVALUATE = ("Index DATA_DIR/images and query with every image whose group (from DATA_DIR/groundtruth.csv: "
            "filename,group_id; empty group = distractor) has at least 2 members. Reports map, recall@1/5/10, "
            "ns_score (UKBench N-S, top 4 with the query), images, queries, index_seconds, images_per_second.")


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    model_options(p)
    metric_option(p, "ranking to evaluate (default cosine)")
    query_options(p)
    p.add_argument("--dba", type=int, default=0, metavar="N",
                   help="database-side augmentation with N neighbours (exact index without PCA only; default off)")
    p.add_argument("--latency", type=int, default=0, metavar="N",
                   help="also time N single queries from their files: latency_ms_p50, latency_cpu_ms_p50")
    p.add_argument("--out", type=Path, metavar="DIR", help="keep the index built for the evaluation here")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with the metrics")
    common(p)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate

    check_query_options(args)
    config = index_config(args)
    opts = resolved_query_options(args, (config.preset or {}).get("name"))
    metrics = evaluate(args.data_dir, config, metric=args.metric, out=args.out, progress=progress(args),
                       qe=opts["qe"], qe_alpha=opts["qe_alpha"], dba=args.dba, rerank=opts["rerank"],
                       rerank_budget=opts["rerank_budget"], latency=args.latency, vqe=opts["vqe"])
    if args.json:
        say_json(metrics)
    else:
        for key, value in metrics.items():
            say(f"{key:>18}  {value:.4f}" if isinstance(value, float) else f"{key:>18}  {value}")
    return EXIT_OK


EVALUATE_COMMAND = Command("evaluate", "measure retrieval quality on a labelled image set", _evaluate_options,
                           cmd_evaluate, description=EVALUATE)
INFO_COMMAND = Command("info", "what an index contains: model, spec, counts, failures", _info_options, cmd_info)

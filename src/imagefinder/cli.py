"""`imagefinder` command line: parse, call the library, print. No pipeline logic lives here.

Exit codes: 0 success; 1 the job ran but produced nothing usable (e.g. every image failed);
2 bad usage or bad input (missing file, unknown model, not an index) - the message says which.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, train_cli
from .index import IndexConfig, IndexError_
from .ingest.decode import ImageError
from .ingest.sources import SourceError
from .models import BACKBONES, DEFAULT_MODEL, ModelUnavailable
from .search import METRICS

if TYPE_CHECKING:
    from .ingest.download import DownloadConfig
    from .pipeline import BuildReport  # imported lazily at run time: it loads the model stack

EXIT_OK, EXIT_EMPTY, EXIT_INPUT = 0, 1, 2
USER_ERRORS = (SourceError, ImageError, IndexError_, ModelUnavailable, KeyError)

EPILOG = """examples:
  imagefinder index photos/ --out my-index          index a folder (recursive)
  imagefinder index urls.csv --out my-index         a CSV with a url column
  imagefinder search my-index query.jpg -k 5        the 5 most similar images
  imagefinder search my-index https://host/q.jpg --json
  imagefinder evaluate ../shared/data/ukbench1000 --json
  imagefinder evaluate DATA --model efficientnet-lite0@gem3,ms --qe 2 --rerank 30 --latency 50
  imagefinder duplicates my-index --json            exact / near-duplicate / similar groups
  imagefinder info my-index
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # its own parser (imagefinder.serve): pass every option through
        from .serve import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"imagefinder: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("imagefinder: interrupted; the index was left as it was (re-run the same command to resume)",
              file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagefinder",
        description="Find images that look like a query image: index a collection once, then search it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagefinder {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _index_parser(sub)
    _search_parser(sub)
    _evaluate_parser(sub)
    _info_parser(sub)
    _duplicates_parser(sub)
    _update_parsers(sub)
    _rebuild_parser(sub)
    train_cli.register(sub)
    _sample_parser(sub)
    _serve_parser(sub)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (HTTP requests too)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="M",
                   help=f"backbone, or an ensemble 'a+b' (default {DEFAULT_MODEL}); one of: {', '.join(BACKBONES)}. "
                        "Pooling options after '@', ensemble weights after ':', e.g. efficientnet-lite0@gem3,ms or "
                        "efficientnet-lite0@gem3:1+dinov2-s:0.5 (avg, max, gem/gemP, ms/msA_B, powA; recorded in "
                        "the manifest and used for every query)")
    p.add_argument("--pca", type=int, metavar="D", help="reduce features to D dims with PCA before indexing")
    p.add_argument("--whiten", action="store_true", help="whiten the PCA (needs --pca)")
    p.add_argument("--clusters", type=int, metavar="K",
                   help="K-Means clusters = IVF lists (default: exact search below 50k images, ~4*sqrt(n) above)")
    p.add_argument("--index", dest="spec", metavar="SPEC",
                   help='FAISS factory string overriding the above, e.g. "PCAW256,L2norm,IVF1024,Flat"')
    p.add_argument("--nprobe", type=int, help="IVF clusters searched per query (default ~nlist/32, at least 16)")


def _config(args: argparse.Namespace) -> IndexConfig:
    if args.whiten and not args.pca and not args.spec:
        raise SourceError("--whiten needs --pca D (whitening is part of the PCA)")
    return IndexConfig(model=args.model, pca=args.pca, whiten=args.whiten, clusters=args.clusters,
                       spec=args.spec, nprobe=args.nprobe)


def _index_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build an index from folders, CSVs, list files, URLs",
                       description="Build an index directory from one or more sources. A failed image never "
                                   "stops the run: it is recorded with its reason (see `imagefinder info`). An interrupted "
                                   "build (Ctrl-C, crash, kill) resumes when re-run: downloads are cached and embedded "
                                   "images journalled beside --out, so only the rest is done again.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder, CSV (column url/image_url/image or the first), .txt list, image file or URL")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="index directory to write (replaced atomically)")
    _model_options(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    p.add_argument("--workers", type=int, help="download/decode threads (default 2x cores, at least 4)")
    p.add_argument("--json", action="store_true", help="print the build summary as one JSON object")
    _download_options(p)
    p.add_argument("--local-features", action="store_true",
                   help="also extract the local features that `search --rerank` uses (else: on first use)")
    _scale_options(p)
    _common(p)
    p.set_defaults(func=cmd_index)


def _download_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--public-urls-only", action="store_true",
                   help="refuse URLs (and redirects) to loopback, private, link-local or reserved addresses: for "
                        "lists from untrusted sources (default: allowed, e.g. images on your own network)")


def _download_config(args: argparse.Namespace) -> DownloadConfig | None:
    if not args.public_urls_only:
        return None
    from dataclasses import replace

    from .pipeline import default_download_config

    return replace(default_download_config(), allow_private=False)


def _scale_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-recall", type=float, default=0.95, metavar="R",
                   help="recall@10 vs exact search that nprobe/efSearch are tuned for above 50k images (default 0.95)")
    p.add_argument("--rerank", type=int, metavar="N",
                   help="re-score the top N candidates exactly from the stored features (default: auto, on for "
                        "compressed indexes; 0 = off)")
    p.add_argument("--store", metavar="URI",
                   help="keep the vectors in Milvus instead of the FAISS file: ./vectors.db (Milvus Lite) or "
                        "milvus://host:19530")
    p.add_argument("--ray", action="store_true", help="embed with a Ray Data pipeline on a local Ray instance")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="embed on a Ray cluster (ray://head:10001, or auto on a node of it); implies --ray")


def _runner(args: argparse.Namespace):
    if not (args.ray or args.ray_address):
        return None
    from .runners.ray import RayRunner

    return RayRunner(address=args.ray_address)


def cmd_index(args: argparse.Namespace) -> int:
    from .pipeline import build_index

    config = _config(args)
    config.target_recall, config.rerank, config.store = args.target_recall, args.rerank, args.store
    report = build_index(args.sources, args.out, config, batch_size=args.batch_size, workers=args.workers,
                         progress=_progress(args), download=_download_config(args), runner=_runner(args))
    if args.local_features and report.indexed:
        from .finder import ImageFinder

        finder = ImageFinder(report.path)
        finder.reranker().precompute(finder.store, progress=_progress(args))
    return _print_report(report, args.json, verb="indexed")


def _print_report(report: BuildReport, as_json: bool, verb: str) -> int:
    summary = {
        "path": str(report.path), "items": report.items, "indexed": report.indexed, "failed": report.failed,
        "failure_reasons": report.failure_reasons, "index_spec": report.index_spec,
        "seconds": round(report.seconds, 2), "images_per_second": round(report.images_per_second, 1),
        "resumed": report.resumed,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"{verb} {report.indexed} of {report.items} images into {report.path} "
              f"({report.index_spec}, {report.seconds:.1f} s, {report.images_per_second:.1f} images/s)")
        if report.resumed:
            print(f"{report.resumed} of them were taken from an interrupted run's journal, not embedded again")
        if report.failed:
            reasons = ", ".join(f"{n} {reason}" for reason, n in report.failure_reasons.items())
            print(f"{report.failed} failed: {reasons}  (details: imagefinder info {report.path})")
    return EXIT_OK if report.indexed else EXIT_EMPTY


def _search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the images most similar to a query image",
                       description="Rank the indexed images by similarity to QUERY (a file path or http(s) URL).")
    p.add_argument("index", type=Path, metavar="DIR", help="index directory made by `imagefinder index`")
    p.add_argument("query", metavar="QUERY", help="image path or http(s) URL")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--metric", choices=METRICS, default="cosine",
                   help="cosine similarity (default), euclidean distance on raw features, vote (rank fusion), or "
                        "fusion (weighted rank fusion of ensemble members)")
    _query_options(p)
    p.add_argument("--json", action="store_true",
                   help='print {"query": ..., "results": [{"rank", "id", "source", "score"}, ...]}')
    _common(p)
    p.set_defaults(func=cmd_search)


def _check_query_options(args: argparse.Namespace) -> None:
    if args.qe < 0 or args.rerank < 0:
        raise SourceError("--qe and --rerank must be >= 0")
    if args.qe and args.metric not in ("cosine", "fusion"):
        raise SourceError(f"--qe works with --metric cosine or fusion, not {args.metric}")
    if args.rerank and args.metric == "euclidean":
        raise SourceError("--rerank adds to similarity scores: use --metric cosine, vote or fusion")


def _query_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qe", type=int, default=0, metavar="N",
                   help="query expansion: re-search with the query averaged with its top N results (default 0: off)")
    p.add_argument("--qe-alpha", type=float, default=3.0, metavar="A",
                   help="alpha-QE weight exponent: results weigh similarity^A (0: plain average; default 3)")
    p.add_argument("--rerank", type=int, default=0, metavar="N",
                   help="spatially verify the top N results with local features + RANSAC (default 0: off)")
    p.add_argument("--rerank-budget", type=float, default=2.0, metavar="S",
                   help="seconds of re-ranking per query at most (default 2)")


def cmd_search(args: argparse.Namespace) -> int:
    from .finder import ImageFinder

    if args.k < 1:
        raise SourceError(f"-k must be at least 1, got {args.k}")
    _check_query_options(args)
    finder = ImageFinder(args.index)
    results = finder.search(args.query, k=args.k, metric=args.metric, qe=args.qe, qe_alpha=args.qe_alpha,
                            rerank=args.rerank, rerank_budget=args.rerank_budget)
    if args.json:
        print(json.dumps({"query": args.query, "metric": args.metric,
                          "results": [r.to_dict() for r in results]}))
    else:
        label = "distance" if args.metric == "euclidean" else "score"
        print(f"{'rank':>4}  {label:>8}  {'id':>6}  source")
        for r in results:
            print(f"{r.rank:>4}  {r.score:8.4f}  {r.id:>6}  {r.source}")
    return EXIT_OK if results else EXIT_EMPTY


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure retrieval quality on a labelled image set",
                       description="Index DATA_DIR/images and query with every image whose group (from "
                                   "DATA_DIR/groundtruth.csv: filename,group_id; empty group = distractor) "
                                   "has at least 2 members. Reports map, recall@1/5/10, ns_score (UKBench "
                                   "N-S, top 4 with the query), images, queries, index_seconds, images_per_second.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    _model_options(p)
    p.add_argument("--metric", choices=METRICS, default="cosine", help="ranking to evaluate (default cosine)")
    _query_options(p)
    p.add_argument("--dba", type=int, default=0, metavar="N",
                   help="database-side augmentation with N neighbours (exact index without PCA only; default off)")
    p.add_argument("--latency", type=int, default=0, metavar="N",
                   help="also time N single queries from their files: latency_ms_p50, latency_cpu_ms_p50")
    p.add_argument("--out", type=Path, metavar="DIR", help="keep the index built for the evaluation here")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with the metrics")
    _common(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    _check_query_options(args)
    metrics = evaluate(args.data_dir, _config(args), metric=args.metric, out=args.out, progress=_progress(args),
                       qe=args.qe, qe_alpha=args.qe_alpha, dba=args.dba, rerank=args.rerank,
                       rerank_budget=args.rerank_budget, latency=args.latency)
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key:>18}  {value:.4f}" if isinstance(value, float) else f"{key:>18}  {value}")
    return EXIT_OK


def _info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="what an index contains: model, spec, counts, failures")
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print as one JSON object")
    p.add_argument("--failures", type=int, default=20, metavar="N",
                   help="failed images to list with their reasons (default 20; 0 = all)")
    _common(p)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from .finder import ImageFinder
    from .index import drift_report

    finder = ImageFinder(args.index)
    info = {**finder.info(args.failures or None), "drift": drift_report(finder.store)}
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    c = info["counts"]
    print(f"index      {info['path']}  (created {info['created_at']})")
    print(f"model      {info['model']}  ({info['embedding_dim']}-d)")
    print(f"faiss      {info['index_spec']}  clusters={info['clusters']} nprobe={info['nprobe']}")
    print(f"images     {c['indexed']} indexed, {c['failed']} failed, {c['items']} total")
    tuning = finder.manifest.get("tuning")
    if tuning or finder.manifest.get("store"):
        where = finder.manifest["store"]["uri"] if finder.manifest.get("store") else "faiss"
        tuned = (f"{tuning['param']}={tuning['value']} tuned for recall@10 {tuning['target_recall']} "
                 f"(measured {tuning['recall_at_10']:.3f})" if tuning else "exact")
        print(f"search     {where}: {tuned}, re-rank {finder.manifest.get('rerank') or 'off'}")
    for reason, n in info["failure_reasons"].items():
        print(f"  {n:>6} x {reason}")
    for f in info["failures"]:
        print(f"  failed #{f['id']}: {f['source']}: {f['error']}")
    _print_drift(info["drift"])
    return EXIT_OK


def _print_drift(d: dict) -> None:
    signals = ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in d["signals"].items()) or "none measured"
    print(f"drift      {d['added_since_training']} added since training on {d['trained_on']}; {signals}")
    for reason in d["reasons"]:
        print(f"  rebuild recommended: {reason}  (imagefinder rebuild DIR)")


def _duplicates_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("duplicates", help="list exact duplicates, near-duplicates and similar images",
                       description="Group the images of an index (or of a folder, indexed first into a temporary "
                                   "directory with --model) in three tiers: exact (same file content), near "
                                   "(resized / re-encoded / cropped copies: pixel check, or cosine >= --threshold) and similar "
                                   "(same object or scene: cosine >= --similar). Pairs come from each image's "
                                   "nearest neighbours in the index, never all pairs.")
    p.add_argument("path", type=Path, metavar="DIR", help="index directory, or a folder of images")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="near-duplicate cosine threshold; giving it turns off the default pixel check "
                        "(aligned thumbnails, NCC >= 0.898) that decides near-duplicates among similar pairs")
    p.add_argument("--similar", type=float, metavar="T", help="similar-image cosine threshold (default: calibrated)")
    p.add_argument("--neighbours", type=int, default=20, metavar="K", help="neighbours checked per image (default 20)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="M", help="model for indexing a folder")
    p.add_argument("--json", action="store_true", help="print one JSON object: thresholds and groups per tier")
    _common(p)
    p.set_defaults(func=cmd_duplicates)


def cmd_duplicates(args: argparse.Namespace) -> int:
    import tempfile

    from .duplicates import TIERS, duplicates_of_path

    with tempfile.TemporaryDirectory(prefix="imagefinder-dups-") as tmp:
        path = args.path
        if not (path / "manifest.json").is_file():
            if not path.is_dir():
                raise SourceError(f"{path}: not an index directory or a folder of images")
            from .pipeline import build_index

            path = build_index([str(path)], Path(tmp) / "index", IndexConfig(model=args.model),
                               progress=_progress(args)).path
        result = duplicates_of_path(path, near=args.threshold, similar=args.similar, neighbours=args.neighbours)
    if args.json:
        print(json.dumps({**result, **{t: [g.to_dict() for g in result[t]] for t in TIERS}}))
        return EXIT_OK
    th = result["thresholds"]
    print(f"near-duplicates: {th['near_by']}; similar: cosine >= {th['similar']:.3f} ({result['model']})")
    for tier in TIERS:
        groups = result[tier]
        print(f"\n{tier}: {len(groups)} group(s)")
        for g in groups:
            print(f"  [{g.score:.3f}] " + "  ".join(g.sources))  # lowest cosine inside the group
    return EXIT_OK


def _update_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("add", help="add images to an existing index (no rebuild)",
                       description="Embed new images with the index's model and add them in place: the PCA and "
                                   "clusters are reused, ids are stable, sources already indexed are skipped.")
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="as for `imagefinder index`")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _download_options(p)
    _common(p)
    p.set_defaults(func=cmd_add)
    p = sub.add_parser("remove", help="remove images from an index by id")
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("ids", nargs="+", type=int, metavar="ID", help="ids as shown by `imagefinder search`")
    _common(p)
    p.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace) -> int:
    from .pipeline import add_to_index

    report = add_to_index(args.index, args.sources, progress=_progress(args), download=_download_config(args))
    return _print_report(report, args.json, verb="added")


def cmd_remove(args: argparse.Namespace) -> int:
    from .pipeline import remove_from_index

    removed = remove_from_index(args.index, args.ids)
    print(f"removed {removed} of {len(args.ids)} ids from {args.index}")
    return EXIT_OK if removed else EXIT_EMPTY


def _rebuild_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rebuild", help="retrain PCA / clusters from the stored features (no re-embedding)",
                       description="Retrain the index of DIR from its stored raw features as a new generation "
                                   "(ids stay; the index type is re-chosen for today's size unless --index is "
                                   "given). --check only reports the drift signals: IVF list imbalance, PCA "
                                   "residual and centroid distance of images added since training, growth.")
    p.add_argument("index", type=Path, metavar="DIR")
    p.add_argument("--check", action="store_true", help="report drift and whether a rebuild is recommended")
    p.add_argument("--index", dest="spec", metavar="SPEC", help="FAISS factory string to rebuild with")
    p.add_argument("--target-recall", type=float, metavar="R", help="tuning target (default: as built)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p)
    p.set_defaults(func=cmd_rebuild)


def cmd_rebuild(args: argparse.Namespace) -> int:
    from .index import read_manifest
    from .pipeline import rebuild_index

    config = None
    if not args.check and (args.spec or args.target_recall):
        config = IndexConfig.from_manifest(read_manifest(args.index))
        config.spec = args.spec or config.spec
        config.target_recall = args.target_recall or config.target_recall
    result = rebuild_index(args.index, config, check=args.check)
    if args.json:
        print(json.dumps(result))
    elif args.check:
        print(f"index      {args.index}  ({result['index_spec']}, trained {result['trained_at']})")
        _print_drift(result)
        if not result["rebuild_recommended"]:
            print("no rebuild needed")
    else:
        t = result["tuning"]
        tuned = f", {t['param']}={t['value']} recall@10={t['recall_at_10']:.3f}" if t else ""
        print(f"rebuilt {args.index}: {result['previous']['index_spec']} -> {result['index_spec']} over "
              f"{result['indexed']} images in {result['seconds']:.1f} s (generation {result['generation']}{tuned})")
    return EXIT_OK


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build the built-in sample index and run a search on it",
                       description="Writes a small sample collection (public-domain images and edited copies) "
                                   "to DIR/images, indexes it into DIR/index and searches with a held-out copy.")
    p.add_argument("--dir", type=Path, default=Path("sample"), help="where to put the sample (default ./sample)")
    p.add_argument("-k", type=int, default=5)
    _common(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .finder import ImageFinder
    from .pipeline import build_index
    from .sample import write_sample

    images, query = write_sample(args.dir / "images")
    report = build_index([str(images)], args.dir / "index", progress=_progress(args))
    print(f"indexed {report.indexed} sample images into {report.path}")
    print(f"query: {query}")
    for r in ImageFinder(report.path).search(query, k=args.k):
        print(f"{r.rank:>4}  {r.score:.4f}  {Path(r.source).name}")
    print(f"next: imagefinder search {report.path} YOUR_IMAGE.jpg")
    return EXIT_OK


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the REST API (:8000) and the web page (:5000) together",
                       add_help=False, description="See `imagefinder serve --help`.")
    p.add_argument("serve_args", nargs=argparse.REMAINDER)  # listed in --help; main() dispatches it


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


if __name__ == "__main__":
    sys.exit(main())
